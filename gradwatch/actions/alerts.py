"""An alert for runs that clip (almost) every step: the threshold or the learning rate is probably wrong.

    >>> alert = constant_clipping(list(monitor.history))          # pure function over records
    >>> detector = ConstantClipping(window=100); detector.update(stats)   # debounced, for the detector suite

Clipping is meant to catch the rare step that would wreck training. When most steps are
clipped, the optimizer effectively runs normalised gradient descent with step lr × threshold:
the threshold sits below the model's ordinary gradient scale, or the learning rate is so high
that the gradients stay large. Either way, a human should look.
"""

from __future__ import annotations

import collections
import statistics
from typing import Sequence

from ..records import Alert, StepStats

__all__ = ["constant_clipping", "ConstantClipping", "CLIPPED_BELOW"]

CLIPPED_BELOW = 0.999
"""A step counts as clipped when its clip coefficient is below this (1 − 1e-3: ignores the 1e-6 of the ε term)."""


def constant_clipping(
    history: Sequence[StepStats],
    *,
    window: int = 100,
    info_share: float = 0.5,
    warning_share: float = 0.9,
    hard: float = 0.5,
) -> Alert | None:
    """An `Alert` when at least `info_share` of the last `window` clipped-policy steps were clipped.

    Only steps with a clip record count (skipped steps and steps before clipping was on do not);
    nothing is said before `window` such steps exist. Severity 'warning' when at least
    `warning_share` of the steps were clipped and hard (median coefficient ≤ `hard`: the norm at
    least halved), else 'info': frequent gentle clipping only trims the step a little.
    """
    events = [s for s in history if s.clip is not None][-window:]
    if len(events) < window:
        return None
    clipped = [s for s in events if s.clip is not None and s.clip.coefficient < CLIPPED_BELOW]
    share = len(clipped) / len(events)
    if share < info_share:
        return None
    last = events[-1]
    assert last.clip is not None
    coef = statistics.median(s.clip.coefficient for s in clipped if s.clip is not None)
    severe = share >= warning_share and coef <= hard
    before = statistics.median(s.clip.norm_before for s in events if s.clip is not None)
    thresholds = [s.clip.threshold for s in clipped if s.clip is not None and s.clip.threshold is not None]
    at = f", typical threshold {statistics.median(thresholds):.3g}" if thresholds else ""
    if last.clip.policy == "auto":
        remedy = ("'auto' clips this often when updates would be too large for the weights: the learning rate "
                  "is probably too high; lower it (or warm it up) until clipping becomes rare.")
    else:
        from ..detectors.remedies import auto_clip_option  # here: gradwatch.detectors imports this module

        remedy = ("the threshold is probably below this model's normal gradient scale (raise it towards the "
                  f"median norm, or use {auto_clip_option()}), or the learning rate is too high.")
    return Alert(
        problem="exploding",
        sign="constant_clipping",
        severity="warning" if severe else "info",
        step=last.step,
        module=None,
        layer=None,
        timestep=None,
        value=share,
        threshold=warning_share if severe else info_share,
        message=(f"'{last.clip.policy}' clipping cut the gradients in {len(clipped)} of the last {len(events)} "
                 f"steps (median coefficient {coef:.3g}, median norm before clipping {before:.3g}{at}): "
                 f"clipping this often turns training into normalised gradient descent; {remedy}"),
    )


class ConstantClipping:
    """Debounced `constant_clipping`: alerts once, again only after `window` more steps or on escalation."""

    signs: tuple[str, ...] = ("constant_clipping",)

    def __init__(self, *, window: int = 100, info_share: float = 0.5, warning_share: float = 0.9,
                 hard: float = 0.5) -> None:
        self.window, self.info_share, self.warning_share, self.hard = window, info_share, warning_share, hard
        self.reset()

    def reset(self) -> None:
        self._recent: collections.deque[StepStats] = collections.deque(maxlen=self.window)
        self._last_step: int | None = None
        self._last_severity: str | None = None

    def update(self, stats: StepStats) -> list[Alert]:
        if stats.clip is None:
            return []
        self._recent.append(stats)
        alert = constant_clipping(self._recent, window=self.window, info_share=self.info_share,
                                  warning_share=self.warning_share, hard=self.hard)
        if alert is None:
            return []
        escalated = self._last_severity == "info" and alert.severity == "warning"
        if self._last_step is not None and stats.step - self._last_step < self.window and not escalated:
            return []
        self._last_step, self._last_severity = stats.step, alert.severity
        return [alert]
