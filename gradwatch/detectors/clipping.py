"""`constant_clipping`: a run that clips (almost) every step has its threshold or learning rate wrong.

    >>> alert = constant_clipping(list(monitor.history))                  # pure function over records
    >>> detector = ConstantClippingDetector(DetectorConfig(constant_clip_window=50))
    >>> detector.update(stats)                                            # debounced, in the detector suite

Clipping is meant to catch the rare step that would wreck training. When most steps are
clipped, the optimizer effectively runs normalised gradient descent with step lr × threshold:
the threshold sits below the model's ordinary gradient scale, or the learning rate is so high
that the gradients stay large. Either way, a human should look. Silent when clipping is off
(no record carries a `ClipEvent`).
"""

from __future__ import annotations

import collections
import statistics
from typing import Sequence

from ..records import Alert, StepStats
from .base import make_alert
from .config import DetectorConfig
from .remedies import auto_clip_option

__all__ = ["constant_clipping", "ConstantClippingDetector", "CLIPPED_BELOW"]

CLIPPED_BELOW = 0.999
"""A step counts as clipped when its clip coefficient is below this (1 − 1e-3: ignores the 1e-6 of the ε term)."""

def constant_clipping(
    history: Sequence[StepStats],
    *,
    window: int = DetectorConfig.constant_clip_window,
    info_share: float = DetectorConfig.constant_clip_share,
    warning_share: float = DetectorConfig.constant_clip_warning_share,
    hard: float = DetectorConfig.constant_clip_hard,
) -> Alert | None:
    """An `Alert` when at least `info_share` of the last `window` clipped-policy steps were clipped.

    Only steps with a clip record count (skipped steps and steps before clipping was on do not);
    nothing is said before `window` such steps exist. Severity 'warning' when at least
    `warning_share` of the steps were clipped and hard (median coefficient ≤ `hard`: the norm at
    least halved), else 'info': frequent gentle clipping only trims the step a little.
    """
    steps = [s for s in history if s.clip is not None][-window:]
    if len(steps) < window:
        return None
    events = [s.clip for s in steps if s.clip is not None]
    clipped = [e for e in events if e.coefficient < CLIPPED_BELOW]
    share = len(clipped) / len(events)
    if share < info_share:
        return None
    policy = events[-1].policy
    coef = statistics.median(e.coefficient for e in clipped)
    severe = share >= warning_share and coef <= hard
    before = statistics.median(e.norm_before for e in events)
    thresholds = [e.threshold for e in clipped if e.threshold is not None]
    at = f", typical threshold {statistics.median(thresholds):.3g}" if thresholds else ""
    if policy == "auto":
        remedy = ("'auto' clips this often when updates would be too large for the weights: the learning rate "
                  "is probably too high; lower it (or warm it up) until clipping becomes rare.")
    else:
        remedy = ("the threshold is probably below this model's normal gradient scale (raise it towards the "
                  f"median norm, or use {auto_clip_option()}), or the learning rate is too high.")
    return make_alert(
        "constant_clipping", "warning" if severe else "info", steps[-1].step,
        evidence=(f"'{policy}' clipping cut the gradients in {len(clipped)} of the last {len(events)} steps "
                  f"(median coefficient {coef:.3g}, median norm before clipping {before:.3g}{at}): "
                  f"clipping this often turns training into normalised gradient descent."),
        remedy=remedy, value=share, threshold=warning_share if severe else info_share,
    )


class ConstantClippingDetector:
    """Debounced `constant_clipping`: alerts once, again only after `constant_clip_cooldown`
    more steps, or at once on escalation (info → warning)."""

    signs: tuple[str, ...] = ("constant_clipping",)

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self.reset()

    def reset(self) -> None:
        self._recent: collections.deque[StepStats] = collections.deque(maxlen=self.config.constant_clip_window)
        self._last: Alert | None = None
        """The latest alert reported (its step and severity debounce the next)."""

    def update(self, stats: StepStats) -> list[Alert]:
        if stats.clip is None:
            return []
        c = self.config
        self._recent.append(stats)
        alert = constant_clipping(self._recent, window=c.constant_clip_window, info_share=c.constant_clip_share,
                                  warning_share=c.constant_clip_warning_share, hard=c.constant_clip_hard)
        if alert is None:
            return []
        last = self._last
        if last is not None and stats.step - last.step < c.constant_clip_cooldown and alert.level <= last.level:
            return []
        self._last = alert
        return [alert]
