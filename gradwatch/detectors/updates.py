"""`tiny_updates` and `large_updates`: how far each step moves a layer against its own size.

    >>> det = LargeUpdatesDetector(DetectorConfig())
    >>> det.update(stats)            # stats.layers[("rnn", 0)].update_ratio == 1.7
    [Alert(problem='exploding', sign='large_updates', severity='critical', ...)]

Both read `LayerStats.update_ratio` = ‖θ_after − θ_before‖ / ‖θ_before‖, the real change the
optimizer made (any optimizer, any schedule). The common rule of thumb puts healthy training
near 1e-3 per step.

* tiny_updates: the median ratio over `update_window` steps is below `tiny_update_ratio`.
  A run that converges has small gradients because it succeeded, so the sign depends on the
  loss: a loss that improves silences it, a stalled loss makes it a warning, and without
  loss history it is only info.
* large_updates: the ratio is ≥ `large_update_ratio` on `large_update_steps` consecutive
  steps (warning), or ≥ `large_update_critical` on any step (critical, also on step 0).

Frozen layers (no gradient) and steps without a finite ratio are left out. Each module
reports its most affected layer; the message names the others.
"""

from __future__ import annotations

import collections
import math

from ..records import Alert, LayerKey, StepStats
from . import remedies
from .base import LossProgress, fmt, make_alert, median, where
from .config import DetectorConfig

__all__ = ["TinyUpdatesDetector", "LargeUpdatesDetector"]


def _ratio(stats: StepStats, key: LayerKey) -> float | None:
    ls = stats.layers[key]
    if not ls.has_grad or not math.isfinite(ls.update_ratio):
        return None
    return ls.update_ratio


def _others(keys: list[LayerKey], worst: LayerKey) -> str:
    rest = [k[1] for k in keys if k != worst and k[0] == worst[0]]
    if not rest:
        return ""
    return f"; layer{'s' if len(rest) > 1 else ''} {', '.join(map(str, rest))} of '{worst[0]}' too"


class TinyUpdatesDetector:
    """Negligible steps (new weight ≈ old weight) while the loss is not improving."""

    signs = ("tiny_updates",)

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.progress = LossProgress.from_config(config)
        self.reset()

    def reset(self) -> None:
        self.progress.reset()
        self._ratios: dict[LayerKey, collections.deque[float]] = {}

    def update(self, stats: StepStats) -> list[Alert]:
        c = self.config
        self.progress.update(stats.loss)
        low: dict[LayerKey, float] = {}
        for key in stats.layers:
            r = _ratio(stats, key)
            if r is None:
                continue
            window = self._ratios.setdefault(key, collections.deque(maxlen=c.update_window))
            window.append(r)
            if len(window) == c.update_window:
                m = median(window)
                if m < c.tiny_update_ratio:
                    low[key] = m
        state = self.progress.state
        if not low or state == "improving":
            return []
        alerts = []
        for module in dict.fromkeys(k[0] for k in low):
            keys = [k for k in low if k[0] == module]
            worst = min(keys, key=lambda k: low[k])
            m, ls = low[worst], stats.layers[worst]
            pace = f"~{fmt(1 / m)} steps" if m > 0 else "forever"
            evidence = (
                f"median update ratio ‖Δθ‖/‖θ‖ of {where(*worst)} over the last {c.update_window} steps is {fmt(m)} "
                f"(threshold {fmt(c.tiny_update_ratio)}; healthy training is near 1e-3): the layer would need "
                f"{pace} to change by its own norm{_others(keys, worst)}. Its gradient norm is {fmt(ls.grad_norm)} "
                f"against a weight norm of {fmt(ls.weight_norm)}; {self.progress.describe()}"
            )
            if state == "unknown":
                evidence += " (no loss evidence yet: info until the loss is seen to stall)"
            alerts.append(
                make_alert(
                    "tiny_updates",
                    "warning" if state == "stalled" else "info",
                    stats.step,
                    evidence=evidence + ".",
                    remedy=remedies.tiny_updates(ls.kind) + ".",
                    value=m,
                    threshold=c.tiny_update_ratio,
                    module=worst[0],
                    layer=worst[1],
                )
            )
        return alerts


class LargeUpdatesDetector:
    """Steps that move a layer by a large share of its weight norm."""

    signs = ("large_updates",)

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._streak: dict[LayerKey, int] = {}
        self._trail: dict[LayerKey, collections.deque[float]] = {}

    def update(self, stats: StepStats) -> list[Alert]:
        c = self.config
        flagged: dict[LayerKey, float] = {}
        for key in stats.layers:
            r = _ratio(stats, key)
            trail = self._trail.setdefault(key, collections.deque(maxlen=4))
            if r is None:
                self._streak[key] = 0
                continue
            trail.append(r)
            self._streak[key] = self._streak.get(key, 0) + 1 if r >= c.large_update_ratio else 0
            if r >= c.large_update_critical or self._streak[key] >= c.large_update_steps:
                flagged[key] = r
        alerts = []
        for module in dict.fromkeys(k[0] for k in flagged):
            keys = [k for k in flagged if k[0] == module]
            worst = max(keys, key=lambda k: flagged[k])
            r = flagged[worst]
            critical = r >= c.large_update_critical
            rule = (
                f"critical at {fmt(c.large_update_critical)}: the step was larger than the weights"
                if critical
                else f"threshold {fmt(c.large_update_ratio)} on {c.large_update_steps} consecutive steps"
            )
            trail = " → ".join(fmt(v) for v in self._trail[worst])
            ls = stats.layers[worst]
            evidence = (
                f"step {stats.step} moved {where(*worst)} by {fmt(r)} of its weight norm (‖Δθ‖/‖θ‖, {rule}; "
                f"rule of thumb ~1e-3); recent ratios {trail}{_others(keys, worst)}. Gradient norm {fmt(ls.grad_norm)}, "
                f"weight norm {fmt(ls.weight_norm)}"
            )
            alerts.append(
                make_alert(
                    "large_updates",
                    "critical" if critical else "warning",
                    stats.step,
                    evidence=evidence + ".",
                    remedy=remedies.large_updates() + ".",
                    value=r,
                    threshold=c.large_update_critical if critical else c.large_update_ratio,
                    module=worst[0],
                    layer=worst[1],
                )
            )
        return alerts
