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
  steps without shrinking (warning), or ≥ `large_update_critical` on a step where it did not
  shrink (critical), or a step ≥ `large_update_ratio` is followed by a batch whose loss is
  ≥ `large_update_loss_factor` × the median before it (warning: the step did damage). A step
  whose ratio is below the previous one is not judged on its size: Adam's first steps on small
  weights are large by design (≈ lr·√n/‖θ‖) and shrink as the weights grow.
  Within the first `progress_window` steps the consecutive-steps rule also needs the loss to
  respond: the latest loss at or above the very first one (a fast start whose loss keeps
  falling below where it began is not yet damage). Inflating weights (the norm rose ×
  `weight_growth_factor` over `weight_growth_steps` rising steps) warn only while they run
  away: the step ‖Δθ‖ is not smaller than `weight_growth_steps` steps earlier (a warm-up
  that overshoots), or the loss is at ≥ `large_update_loss_factor` × the first loss. Adam
  too fast on small weights moves them by about the same ‖Δθ‖ each step, so they grow
  linearly and the ratio falls as 1/t: the run can still converge.
  The consecutive-steps and runaway rules judge only a step that moved the layer further than
  its first step did (‖Δθ‖ above the first one seen). An adaptive optimizer's first step is
  sign-like, the largest it takes: RMSprop moves every element by lr/√(1 − α) = 10·lr at step 0
  (its squared-gradient average starts at 0) and, without momentum, can never move one further,
  however large the gradient (Adam: lr per element at step 0). Later large ratios under that ceiling come from small weights
  or a brief gradient rise against its running average, not from a step size that grows; only a
  learning rate that grows (a warm-up) or a plain gradient that explodes takes a step past it.
  (Attached mid-run, the first step seen is an ordinary one, and the rules judge nearly every
  large step, as before.)

Frozen layers (no gradient) and steps without a finite ratio are left out. Each module
reports its most affected layer; the message names the others.
"""

from __future__ import annotations

import collections
import math

from ..records import Alert, LayerKey, LayerStats, StepStats
from . import remedies
from .base import LossProgress, fmt, make_alert, median, shared_progress, where
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

    signs: tuple[str, ...] = ("tiny_updates",)

    def __init__(self, config: DetectorConfig, progress: LossProgress | None = None) -> None:
        self.config = config
        self.progress, self._feeds = shared_progress(config, progress)
        self.reset()

    def reset(self) -> None:
        if self._feeds:
            self.progress.reset()
        self._ratios: dict[LayerKey, collections.deque[float]] = {}

    def update(self, stats: StepStats) -> list[Alert]:
        c = self.config
        if self._feeds:
            self.progress.update(stats.loss, stats.chance_loss)
        ratios = self._ratios
        for key, ls in stats.layers.items():
            if ls.has_grad and math.isfinite(ls.update_ratio):
                window = ratios.get(key)
                if window is None:
                    window = ratios[key] = collections.deque(maxlen=c.update_window)
                window.append(ls.update_ratio)
        state = self.progress.state  # the loss-aware detectors share it: asked for once per step
        if state in ("improving", "plateau"):
            return []  # whatever the windows say
        low: dict[LayerKey, float] = {}
        for key in stats.layers:
            window = ratios.get(key)
            if window is not None and len(window) == c.update_window and _ratio(stats, key) is not None:
                m = median(window)
                if m < c.tiny_update_ratio:
                    low[key] = m
        if not low:
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
    """Steps that move a layer by a large share of its weight norm, and keep doing so or do damage."""

    signs: tuple[str, ...] = ("large_updates",)

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._streak: dict[LayerKey, int] = {}
        self._trail: dict[LayerKey, collections.deque[float]] = {}
        self._losses: collections.deque[float] = collections.deque(maxlen=self.config.update_window)
        self._weights: dict[LayerKey, collections.deque[float]] = {}
        """Weight norm of each layer over the last `weight_growth_steps` + 1 steps."""
        self._moves: dict[LayerKey, collections.deque[float]] = {}
        """‖Δθ‖ of each layer over the last `weight_growth_steps` + 1 steps (the inflating window)."""
        self._first_move: dict[LayerKey, float] = {}
        """‖Δθ‖ of each layer's first step with a finite ratio: for an adaptive optimizer, its largest possible step."""
        self._first_loss: float | None = None
        """The first finite loss: where the run started."""
        self._seen = 0
        """Records seen (the consecutive-steps rule asks for a loss response within the first `progress_window`)."""

    def update(self, stats: StepStats) -> list[Alert]:
        c = self.config
        loss = stats.loss if stats.loss is not None and math.isfinite(stats.loss) else None
        if self._first_loss is None:
            self._first_loss = loss
        self._seen += 1
        early = self._seen <= c.progress_window
        flagged: dict[LayerKey, tuple[float, str]] = {}
        trails = self._trail
        for key in stats.layers:
            r = _ratio(stats, key)
            trail = trails.get(key)
            if trail is None:
                trail = trails[key] = collections.deque(maxlen=4)
            inflating = self._inflating(key, stats.layers[key])  # every step: its window is consecutive steps
            inflating = inflating and self._running_away(key, loss)
            if r is None:
                self._streak[key] = 0
                continue
            prev = trail[-1] if trail else None
            trail.append(r)
            further = self._further_than_first(key, stats.layers[key].update_norm)
            # Adam moves every weight by about lr at first, so on small weights its first steps are large
            # by design and shrink step after step as the weights grow: only a large step that is not
            # falling is a sign of a step size that is too large.
            rising = prev is not None and r >= prev
            if r < c.large_update_ratio or (prev is not None and prev >= c.large_update_ratio and not rising):
                self._streak[key] = 0
            else:
                self._streak[key] = self._streak.get(key, 0) + 1
            if r >= c.large_update_critical and rising:
                flagged[key] = (r, "critical")
            elif self._streak[key] >= c.large_update_steps and (not early or self._loss_responds(loss)) and further:
                flagged[key] = (r, "streak")
            elif further and self._growing(trail):
                flagged[key] = (r, "growing")
            elif prev is not None and prev >= c.large_update_ratio and self._damaged(loss):
                flagged[key] = (prev, "damage")
            elif inflating:
                flagged[key] = (r, "inflating")
        alerts = [self._alert(stats, [k for k in flagged if k[0] == m], flagged, loss)
                  for m in dict.fromkeys(k[0] for k in flagged)]
        if loss is not None:
            self._losses.append(loss)
        return alerts

    def _further_than_first(self, key: LayerKey, move: float) -> bool:
        """This step's ‖Δθ‖ is larger than the layer's first one (non-finite: yes). RMSprop's first step moves every
        element by 10·lr, the most it ever can; its large ratios below that ceiling are small weights or a gradient
        briefly above its running average (fresh7 M008: RMSprop 30× too fast, ratios 4.9, 0.43, 0.51, 0.52 with
        ‖Δθ‖ 52 → 23-34, and M089: ratio 0.032 → 0.13 in 3 steps at ‖Δθ‖ ≤ 0.62× the first; both converged)."""
        first = self._first_move.setdefault(key, move)
        return not (math.isfinite(move) and math.isfinite(first)) or move > first

    def _growing(self, trail: collections.deque[float]) -> bool:
        """The ratio grew by `large_update_growth` or more on each of the last 3 steps, to ≥ `large_update_growth_ratio`."""
        c = self.config
        values = list(trail)
        if len(values) < 4 or values[-1] < c.large_update_growth_ratio:
            return False
        return all(b >= c.large_update_growth * a for a, b in zip(values, values[1:]))

    def _inflating(self, key: LayerKey, ls: LayerStats) -> bool:
        """The layer's weight norm rose on each of the last `weight_growth_steps` steps, by `weight_growth_factor`× in all."""
        c = self.config
        norms = self._weights.get(key)
        if norms is None:
            norms = self._weights[key] = collections.deque(maxlen=c.weight_growth_steps + 1)
            self._moves[key] = collections.deque(maxlen=c.weight_growth_steps + 1)
        norms.append(ls.weight_norm)
        self._moves[key].append(ls.update_norm)
        if len(norms) <= c.weight_growth_steps:
            return False
        values = list(norms)
        if not all(math.isfinite(v) and v > 0 for v in values):
            return False
        rising = all(b > a for a, b in zip(values, values[1:]))
        return rising and values[-1] >= c.weight_growth_factor * values[0]

    def _running_away(self, key: LayerKey, loss: float | None) -> bool:
        """Inflating weights still running away: this step's ‖Δθ‖ is at least that of `weight_growth_steps` steps earlier
        (the steps grow, as in a warm-up that overshoots), or the loss is at ≥ `large_update_loss_factor` × the first loss.
        Adam too fast on small weights takes steps of about the same size, so the weights grow linearly and the ratio
        falls as 1/t (corpus held-out 150: weights ×48 in 5 steps, ‖Δθ‖ 10.5 → 5.4, then it converged)."""
        moves = list(self._moves[key])
        if all(math.isfinite(m) for m in moves) and moves[-1] >= moves[0]:
            return True
        first = self._first_loss
        return loss is not None and first is not None and loss >= self.config.large_update_loss_factor * first

    def _loss_responds(self, loss: float | None) -> bool:
        """The latest loss is at or above the first one (or no loss is known): the large steps are not (or no longer)
        making it fall below where it started."""
        return loss is None or self._first_loss is None or loss >= self._first_loss

    def _damaged(self, loss: float | None) -> bool:
        """This batch's loss (after last step's update) is `large_update_loss_factor` × the median before it."""
        if loss is None or not self._losses:
            return False
        return loss >= self.config.large_update_loss_factor * median(self._losses)

    def _alert(self, stats: StepStats, keys: list[LayerKey], flagged: dict[LayerKey, tuple[float, str]],
               loss: float | None) -> Alert:
        c = self.config
        worst = max(keys, key=lambda k: flagged[k][0])
        r, why = flagged[worst]
        critical = why == "critical"
        if critical:
            rule = f"critical at {fmt(c.large_update_critical)}: the step was larger than the weights"
        elif why == "growing":
            rule = (f"it grew ≥ {fmt(c.large_update_growth)}× on each of the last 3 steps to ≥ "
                    f"{fmt(c.large_update_growth_ratio)}: the step size is running away")
        elif why == "streak":
            rule = f"threshold {fmt(c.large_update_ratio)} on {c.large_update_steps} consecutive, non-shrinking steps"
        elif why == "inflating":
            w = list(self._weights[worst])
            rule = (f"and the weights are inflating: the weight norm rose on each of the last {c.weight_growth_steps} steps, "
                    f"{fmt(w[0])} → {fmt(w[-1])}, {fmt(w[-1] / w[0])}× (threshold {fmt(c.weight_growth_factor)}×); a "
                    "learning rate far too high makes the weights grow until the activations overflow, even while the loss "
                    "stays flat")
        else:
            rule = (f"threshold {fmt(c.large_update_ratio)}, and it did damage: the loss of the next batch, {fmt(loss)}, is "
                    f"{fmt((loss or 0) / median(self._losses))}× the median before it (threshold "
                    f"{fmt(c.large_update_loss_factor)}×)")
        trail = " → ".join(fmt(v) for v in self._trail[worst])
        ls = stats.layers[worst]
        evidence = (
            f"step {stats.step if why != 'damage' else stats.step - 1} moved {where(*worst)} by {fmt(r)} of its weight "
            f"norm (‖Δθ‖/‖θ‖, {rule}; rule of thumb ~1e-3); recent ratios {trail}{_others(keys, worst)}. Gradient norm "
            f"{fmt(ls.grad_norm)}, weight norm {fmt(ls.weight_norm)}"
        )
        return make_alert(
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
