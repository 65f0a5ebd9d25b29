"""`dead_neurons`: units that are inactive for learning, dead (ReLU at 0) or saturated (tanh at ±1).

    >>> det = DeadNeuronsDetector(DetectorConfig())
    >>> det.update(probe_step_0); det.update(probe_step_10)   # dead_fraction 0.8 on both
    [Alert(problem='vanishing', sign='dead_neurons', severity='warning', ...)]

Rule, on probe steps: `LayerStats.dead_fraction` (share of units with |h| < 1e-6 for every
sample and timestep of the batch) or `saturated_fraction` (share with |h| ≥ 0.99 in ≥ 90 %
of positions; tanh only) is ≥ `dead_share` on `dead_probes` consecutive probe steps
(warning), critical when ≥ `dead_critical_share`. A dead ReLU passes no gradient and a
saturated tanh passes at most tanh'(h) = 1 − h² ≤ 0.02 of it, so both starve the layers
and timesteps behind them. A warning is `info` while the loss is learning (`LossProgress`
"improving" and below the very first loss by `progress_min`; or, before `progress_steps`,
falling steadily — slope t ≤ −`progress_trend` — below a first window that did not jump above
the very first loss): ReLU RNNs that converge anyway can have half their units dead, and units that
do not stop the loss falling are not (yet) the problem; once the loss stalls or plateaus the
next probe step reports it as a warning (an escalation).
"""

from __future__ import annotations

from ..records import Alert, LayerKey, LayerStats, StepStats
from . import remedies
from .base import LossProgress, make_alert, shared_progress, where
from .config import DetectorConfig

__all__ = ["DeadNeuronsDetector"]

_STATES = {
    "dead": "dead (|h| < 1e-6 for every sample and timestep)",
    "saturated": "saturated (|h| ≥ 0.99 in at least 90 % of positions)",
}


def _fractions(ls: LayerStats) -> dict[str, float]:
    out = {}
    if ls.dead_fraction is not None:
        out["dead"] = ls.dead_fraction
    if ls.saturated_fraction is not None:
        out["saturated"] = ls.saturated_fraction
    return out


class DeadNeuronsDetector:
    """A large share of a layer's units dead or saturated on consecutive probe steps."""

    signs: tuple[str, ...] = ("dead_neurons",)

    def __init__(self, config: DetectorConfig, progress: LossProgress | None = None) -> None:
        self.config = config
        self.progress, self._feeds = shared_progress(config, progress)
        self.reset()

    def reset(self) -> None:
        if self._feeds:
            self.progress.reset()
        self._streak: dict[tuple[LayerKey, str], int] = {}

    def update(self, stats: StepStats) -> list[Alert]:
        c = self.config
        if self._feeds:
            self.progress.update(stats.loss, stats.chance_loss)
        if not stats.probed:
            return []
        alerts = []
        for key, ls in stats.layers.items():
            hits = []
            for state, share in _fractions(ls).items():
                streak = self._streak.get((key, state), 0) + 1 if share >= c.dead_share else 0
                self._streak[(key, state)] = streak
                if streak >= c.dead_probes:
                    hits.append((share, state, streak))
            if not hits:
                continue
            share, state, streak = max(hits)
            critical = share >= c.dead_critical_share
            improving = not critical and self._learning()
            evidence = (
                f"{share * 100:.0f} % of the units of {where(*key)} are {_STATES[state]} on {streak} consecutive probe "
                f"steps (threshold {c.dead_share * 100:.0f} %"
                + (f", critical from {c.dead_critical_share * 100:.0f} %" if critical else "")
                + "); they pass no gradient back to earlier timesteps and layers"
            )
            if improving:
                evidence += (f"; but the loss is improving ({self.progress.describe()}), so they do not stop it learning "
                             "(info; a warning when the loss stops improving)")
            alerts.append(
                make_alert(
                    "dead_neurons",
                    "critical" if critical else "info" if improving else "warning",
                    stats.step,
                    evidence=evidence + ".",
                    remedy=(remedies.dead_units() if state == "dead" else remedies.saturated_units()) + ".",
                    value=share,
                    threshold=c.dead_critical_share if critical else c.dead_share,
                    module=key[0],
                    layer=key[1],
                )
            )
        return alerts

    def _learning(self) -> bool:
        """The loss is improving and is below the very first loss by `progress_min`: not merely coming back down
        after an early jump (a first window inflated by an explosion makes a return to the start look like learning)."""
        p = self.progress
        if p.recent is None or not p.first:
            return False
        if p.state == "improving":
            return p.recent <= (1 - self.config.progress_min) * p.first[0]
        # before `progress_steps` a slow fall is not yet "improving": a steady one (slope t ≤ −`progress_trend`) below a
        # first window that did not jump above the very first loss is learning too (fresh3 H102, a packed ReLU RNN 8 %
        # below its start at step 20, half its units dead, converging); after an early jump it is the return, not learning
        initial = p.initial
        return (p.count < self.config.progress_steps and initial is not None and p.recent < initial <= p.first[0]
                and p.slope_t() <= -self.config.progress_trend)
