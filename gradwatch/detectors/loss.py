"""`slow_progress` and `oscillation`: what the loss fed to `monitor.step(loss)` says.

    >>> det = SlowProgressDetector(DetectorConfig())
    >>> alerts = [a for s in records for a in det.update(s)]     # flat loss + decaying gradient
    >>> alerts[0].sign
    'slow_progress'

* slow_progress (vanishing): the loss has stalled near its initial level (see
  `LossProgress`: after `progress_steps` steps, the median of the last `progress_window`
  losses is within `progress_min` of the median of the first ones) *and* the gradients show
  why: decay through time (latest probe ratio ≤ `temporal_decay_ratio`), dead or saturated units
  (share ≥ `dead_share` on the latest probe), or negligible updates (median update ratio <
  `tiny_update_ratio`). A stalled loss without such evidence is not a vanishing-gradient
  problem and raises nothing; a loss that fell (even to a tiny value) never does.
* oscillation (exploding): over the last `oscillation_window` finite losses, the 3-step
  running median of the loss moves up and down in alternation at least `oscillation_legs`
  times by a swing of at least max(`oscillation_swing` × the window's median loss,
  `oscillation_noise` × its median step-to-step change), and the window is not settling
  (the median of its second half is not 10 % below that of its first half). Mini-batch
  noise is independent from step to step, so the running median flattens it and the noise
  term keeps it below one swing; a learning rate that is too high makes the loss climb for
  several steps and fall back, again and again.

Without a loss (`monitor.step()` with no argument) both stay silent.
"""

from __future__ import annotations

import collections
import math
import statistics

from ..records import Alert, LayerKey, StepStats
from . import remedies
from .base import LossProgress, fmt, make_alert, median, where
from .config import DetectorConfig
from .temporal import analysable, temporal_profile

__all__ = ["SlowProgressDetector", "OscillationDetector", "zigzag_legs", "running_median"]

_SETTLING = 0.9
"""The second half of the window below this fraction of the first half means it is settling."""


class SlowProgressDetector:
    """A stalled loss together with gradient evidence of vanishing."""

    signs = ("slow_progress",)

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.progress = LossProgress(
            steps=config.progress_steps, window=config.progress_window, min_improvement=config.progress_min
        )
        self.reset()

    def reset(self) -> None:
        self.progress.reset()
        self._decay: dict[LayerKey, float] = {}
        self._inactive: dict[LayerKey, tuple[float, str]] = {}
        self._ratios: dict[LayerKey, collections.deque[float]] = {}
        self._kinds: dict[LayerKey, str] = {}

    def update(self, stats: StepStats) -> list[Alert]:
        self.progress.update(stats.loss)
        self._collect(stats)
        if self.progress.state != "stalled":
            return []
        found = self._evidence()
        if found is None:
            return []
        key, cause, text = found
        return [
            make_alert(
                "slow_progress",
                "warning",
                stats.step,
                evidence=f"the loss is not improving: {self.progress.describe()}; and the gradients explain it: {text}.",
                remedy=remedies.slow_progress(self._kinds.get(key, ""), cause) + ".",
                value=self.progress.improvement or 0.0,
                threshold=self.config.progress_min,
                module=key[0],
                layer=key[1],
            )
        ]

    def _collect(self, stats: StepStats) -> None:
        c = self.config
        for key, ls in stats.layers.items():
            self._kinds[key] = ls.kind
            if ls.has_grad and math.isfinite(ls.update_ratio):
                self._ratios.setdefault(key, collections.deque(maxlen=c.update_window)).append(ls.update_ratio)
        if not stats.probed:
            return
        self._decay.clear()
        self._inactive.clear()
        for key, ls in stats.layers.items():
            if analysable(ls):
                p = temporal_profile(ls.timestep_grad_norms, min_steps=c.temporal_min_steps)
                if p is not None:
                    self._decay[key] = p.ratio
            shares = [(ls.dead_fraction, "dead"), (ls.saturated_fraction, "saturated")]
            share, state = max(((s, n) for s, n in shares if s is not None), default=(None, ""))
            if share is not None:
                self._inactive[key] = (share, state)

    def _evidence(self) -> tuple[LayerKey, str, str] | None:
        """(layer, cause, words) of the strongest vanishing evidence, or None."""
        c = self.config
        decays = {k: r for k, r in self._decay.items() if r <= c.temporal_decay_ratio}
        if decays:
            key = min(decays, key=decays.__getitem__)
            share = "none" if decays[key] == 0 else fmt(decays[key])
            return key, "decay", (
                f"the gradient reaching the earliest quarter of the sequence in {where(*key)} is {share} of that "
                f"reaching the third quarter (temporal decay threshold {fmt(c.temporal_decay_ratio)})"
            )
        inactive = {k: v for k, v in self._inactive.items() if v[0] >= c.dead_share}
        if inactive:
            key = max(inactive, key=lambda k: inactive[k][0])
            share, state = inactive[key]
            return key, state, (
                f"{share * 100:.0f} % of the units of {where(*key)} are {state} (threshold {c.dead_share * 100:.0f} %)"
            )
        tiny = {
            k: median(v) for k, v in self._ratios.items() if len(v) == c.update_window and median(v) < c.tiny_update_ratio
        }
        if tiny:
            key = min(tiny, key=tiny.__getitem__)
            return key, "tiny_updates", (
                f"the median update ratio of {where(*key)} is {fmt(tiny[key])} (threshold {fmt(c.tiny_update_ratio)})"
            )
        return None


def running_median(values: list[float], width: int = 3) -> list[float]:
    """Median of each run of `width` (odd) consecutive values: one-step spikes disappear."""
    return [sorted(values[i : i + width])[width // 2] for i in range(len(values) - width + 1)]


def zigzag_legs(values: list[float], swing: float) -> int:
    """How many alternating moves of at least `swing` the series makes (up–down–up… counts 3).

    A move ends when the series has come back by `swing` from its extreme, as in a zigzag
    chart; moves smaller than `swing` are ignored.
    """
    if not values:
        return 0
    legs, trend, low, high = 0, 0, values[0], values[0]
    for v in values[1:]:
        if trend == 0:
            low, high = min(low, v), max(high, v)
            if high - low >= swing:
                legs, trend = 1, (1 if v == high else -1)
                low = high = v
        elif trend == 1:
            if v >= high:
                high = v
            elif high - v >= swing:
                legs, trend, low = legs + 1, -1, v
        else:
            if v <= low:
                low = v
            elif v - low >= swing:
                legs, trend, high = legs + 1, 1, v
    return legs


class OscillationDetector:
    """The loss swings up and down instead of settling."""

    signs = ("oscillation",)

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._losses: collections.deque[float] = collections.deque(maxlen=self.config.oscillation_window)

    def update(self, stats: StepStats) -> list[Alert]:
        c = self.config
        if stats.loss is None or not math.isfinite(stats.loss):
            return []
        self._losses.append(stats.loss)
        if len(self._losses) < c.oscillation_window:
            return []
        losses = list(self._losses)
        level = statistics.median(losses)
        noise = statistics.median(abs(b - a) for a, b in zip(losses, losses[1:]))
        swing = max(c.oscillation_swing * abs(level), c.oscillation_noise * noise)
        half = len(losses) // 2
        first, second = statistics.median(losses[:half]), statistics.median(losses[half:])
        if second < _SETTLING * first or not swing > 0:
            return []
        smooth = running_median(losses)
        legs = zigzag_legs(smooth, swing)
        if legs < c.oscillation_legs:
            return []
        evidence = (
            f"over the last {len(losses)} steps the loss (3-step running median) went up and down {legs} times by at "
            f"least {fmt(swing)} (the larger of {c.oscillation_swing * 100:.0f} % of its median {fmt(level)} and "
            f"{fmt(c.oscillation_noise)}× its median step-to-step change {fmt(noise)}; threshold {c.oscillation_legs} "
            f"moves), between {fmt(min(smooth))} and {fmt(max(smooth))}, without settling (median {fmt(first)} in the "
            f"first half, {fmt(second)} in the second)"
        )
        return [
            make_alert(
                "oscillation",
                "warning",
                stats.step,
                evidence=evidence + ".",
                remedy=remedies.oscillation() + ".",
                value=float(legs),
                threshold=float(c.oscillation_legs),
            )
        ]
