"""`temporal_decay` and `temporal_growth`: how the gradient changes going back through time.

    >>> temporal_profile([1e-9, 1e-9, 1e-7, 1e-7, 1e-4, 1e-4, 1e-2, 1e-2], min_steps=8).ratio
    1e-05

On probe steps `LayerStats.timestep_grad_norms[t]` = ‖∂L/∂x_t‖ for the sequence x fed into
the layer. Pascanu, Mikolov & Bengio (2013) show that the part of it that travels back
through time scales like the product of recurrent Jacobians, so it shrinks (gain < 1) or
grows (gain > 1) geometrically with the distance.

Rule: compare the median over the earliest quarter of the sequence with the median over
the third quarter (`TemporalProfile.ratio`). The last quarter is left out: where the loss
is applied at every timestep (language models) the gradient there is still building up
from the few timesteps left to the end of the sequence, which would read as growth.

* temporal_decay: ratio ≤ `temporal_decay_ratio`. Info on its own (a task that needs only short
  memory decays strongly and trains fine); warning when the loss has stalled near its
  initial level, i.e. evidence that the missing long-range signal hurts.
* temporal_growth: ratio ≥ `temporal_growth_ratio` (warning) or ≥ `temporal_growth_critical`
  (critical), on any probe step including step 0, when the growth is consistent — the norm grows
  going back on ≥ `temporal_growth_consistency` of the adjacent timestep pairs of the first three
  quarters — and the gradient is not negligible (≥ `temporal_growth_min_grad` × the layer's weight
  norm). Packed batches of unsorted variable-length sequences make a saw-tooth profile (each
  sequence's gradient decays back from its own end; short sequences end early) that the quarter
  medians alone read as growth; the consistency test does not. A warning becomes `info` while the
  loss improves or has converged (`LossProgress` "improving", or a plateau below `plateau_level` ×
  its start): a task whose answer lies in its first inputs (a short first-token classifier) has its
  largest input gradients there while it learns (issue #13 corpus: 3 healthy runs, never the first
  warning of a diverged one). Critical growth stays critical.

Bidirectional layers are skipped (their input gradient mixes both time directions), as
are sequences shorter than `temporal_min_steps` and profiles with non-finite entries
(reported by `non_finite`). Each module reports its most affected layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..records import Alert, LayerKey, LayerStats, StepStats
from . import remedies
from .base import LossProgress, fmt, make_alert, median, shared_progress, where
from .config import DetectorConfig

__all__ = ["TemporalProfile", "temporal_profile", "LatestProfiles", "analysable", "TemporalDecayDetector", "TemporalGrowthDetector"]


@dataclass(frozen=True)
class TemporalProfile:
    """Summary of one layer's per-timestep input-gradient norms."""

    length: int
    """Number of timesteps T."""
    early: float
    """Median gradient norm over timesteps [0, T/4)."""
    late: float
    """Median over [T/2, 3T/4), or over the last quarter when that is all zero."""
    late_range: tuple[int, int]
    """Timesteps [start, stop) that `late` covers."""
    ratio: float
    """early / late: < 1 decays going back in time, > 1 grows."""
    span: int
    """Timesteps between the centres of the two ranges."""
    growing: float = 0.0
    """Share of adjacent timesteps (t−1, t) with t < 3T/4 where the norm is larger at t−1: how
    consistently it grows going back. Geometric growth (gain > 1) gives 1; the saw-tooth of a
    packed, variable-length batch (each sequence's gradient decays back from its own end, and a
    short sequence's end adds a fresh peak at an early timestep) stays far below 0.5."""

    @property
    def per_step(self) -> float:
        """Geometric gain per timestep going back: ratio ** (1 / span)."""
        return self.ratio ** (1 / self.span) if self.ratio > 0 else 0.0


def temporal_profile(norms: list[float] | None, *, min_steps: int) -> TemporalProfile | None:
    """The profile of `norms`, or None when it cannot be judged (short, non-finite, all zero)."""
    if not norms or len(norms) < max(min_steps, 4) or not all(math.isfinite(v) for v in norms):
        return None
    t, q = len(norms), len(norms) // 4
    early = median(norms[:q])
    lo, hi = 2 * q, 3 * q
    late = median(norms[lo:hi])
    if late <= 0:
        lo, hi = 3 * q, t
        late = median(norms[lo:hi])
    if not late > 0:
        return None
    span = max(1, round((lo + hi) / 2 - q / 2))
    pairs = [(norms[i - 1], norms[i]) for i in range(1, 3 * q)]
    growing = sum(a > b for a, b in pairs) / len(pairs) if pairs else 0.0
    return TemporalProfile(t, early, late, (lo, hi), early / late, span, growing)


def _latest(norms: list[float], test) -> int | None:  # type: ignore[no-untyped-def]
    for t in range(len(norms) - 1, -1, -1):
        if test(norms[t]):
            return t
    return None


def analysable(ls: LayerStats) -> bool:
    return ls.timestep_grad_norms is not None and len(ls.directions) < 2


def _is_relu(ls: LayerStats) -> bool:
    return ls.kind == "RNN" and ls.dead_fraction is not None and ls.saturated_fraction is None


def _material(ls: LayerStats, floor: float) -> bool:
    """The layer's gradient is not numerically negligible (≥ `floor` × its weight norm)."""
    return ls.grad_norm >= floor * ls.weight_norm


def _describe(key: LayerKey, p: TemporalProfile, going: str) -> str:
    q = p.length // 4
    late = f"{fmt(p.late)} over timesteps {p.late_range[0]}–{p.late_range[1] - 1}"
    head = f"per-timestep input gradient ‖∂L/∂x_t‖ of {where(*key)} {going} going back in time: "
    if p.early == 0:
        return head + f"exactly 0 (underflow) over timesteps 0–{q - 1} against {late}"
    return head + f"median {fmt(p.early)} over timesteps 0–{q - 1} against {late}, ratio {fmt(p.ratio)} (≈ ×{fmt(p.per_step)} per timestep back)"


def _profiles(stats: StepStats, min_steps: int) -> dict[LayerKey, TemporalProfile]:
    out = {}
    for key, ls in stats.layers.items():
        if analysable(ls):
            p = temporal_profile(ls.timestep_grad_norms, min_steps=min_steps)
            if p is not None:
                out[key] = p
    return out


class LatestProfiles:
    """The temporal profiles of the latest record's layers, computed once however many detectors ask.

        >>> profiles = LatestProfiles()
        >>> profiles.of(stats, min_steps=8)       # {(module, layer): TemporalProfile} of analysable layers

    A pure function of the record's per-timestep norms: the answer for the record seen last is kept
    (by identity) until another record comes. `default_detectors` shares one among the detectors
    that read the profiles (decay, growth, slow progress) on probe steps.
    """

    def __init__(self) -> None:
        self._record: StepStats | None = None
        self._min_steps = 0
        self._profiles: dict[LayerKey, TemporalProfile] = {}

    def of(self, stats: StepStats, *, min_steps: int) -> dict[LayerKey, TemporalProfile]:
        """Profiles of `stats`' analysable layers (in layer order), leaving out those that cannot be judged.
        The dict is shared: read it, do not change it."""
        if stats is not self._record or min_steps != self._min_steps:
            self._profiles = _profiles(stats, min_steps)
            self._record, self._min_steps = stats, min_steps
        return self._profiles


class TemporalDecayDetector:
    """Geometric decay of the gradient going back through time; a warning only when it hurts."""

    signs: tuple[str, ...] = ("temporal_decay",)

    def __init__(self, config: DetectorConfig, progress: LossProgress | None = None,
                 profiles: LatestProfiles | None = None) -> None:
        self.config = config
        self.progress, self._feeds = shared_progress(config, progress)
        self.profiles = profiles or LatestProfiles()

    def reset(self) -> None:
        if self._feeds:
            self.progress.reset()

    def update(self, stats: StepStats) -> list[Alert]:
        c = self.config
        if self._feeds:
            self.progress.update(stats.loss, stats.chance_loss)
        if not stats.probed:
            return []
        decays = {k: p for k, p in self.profiles.of(stats, min_steps=c.temporal_min_steps).items() if p.ratio <= c.temporal_decay_ratio}
        state = self.progress.state
        alerts = []
        for module in dict.fromkeys(k[0] for k in decays):
            worst = min((k for k in decays if k[0] == module), key=lambda k: decays[k].ratio)
            p, ls = decays[worst], stats.layers[worst]
            norms = ls.timestep_grad_norms or []
            t_cut = _latest(norms, lambda v: v <= c.temporal_decay_ratio * p.late)
            evidence = _describe(worst, p, "decays") + f" (threshold {fmt(c.temporal_decay_ratio)})"
            if t_cut is not None:
                evidence += (
                    f"; from timestep {t_cut} back it is below {fmt(c.temporal_decay_ratio)} of the recent level, so the layer "
                    f"learns from about the last {p.length - 1 - t_cut} of {p.length} timesteps only"
                )
            if state == "stalled":
                evidence += f"; and it hurts: {self.progress.describe()}"
            elif state == "plateau":
                evidence += f"; {self.progress.describe()}, so the missing long-range signal may be what holds it back"
                if self.progress.chance is None:  # a plateau at chance looks like convergence: only the chance level tells
                    evidence += f" ({remedies.chance_loss_hint()})"
            elif state == "worse":
                evidence += f"; {self.progress.describe()} (it got worse and stays there; slow_progress says whether it is stuck)"
            elif state == "improving":
                evidence += f"; the loss is improving ({self.progress.describe()}), so the task may need only short memory"
            else:
                evidence += "; not yet known whether it hurts (the loss has not been seen to stall)"
                if self.progress.chance is None:  # said once (cooldown): the first decay alert comes before any plateau
                    evidence += f"; {remedies.chance_loss_hint()}"
            alerts.append(
                make_alert(
                    "temporal_decay",
                    "warning" if state == "stalled" else "info",
                    stats.step,
                    evidence=evidence + ".",
                    remedy=remedies.temporal_decay(ls.kind) + ".",
                    value=p.ratio,
                    threshold=c.temporal_decay_ratio,
                    module=worst[0],
                    layer=worst[1],
                    timestep=t_cut,
                )
            )
        return alerts


class TemporalGrowthDetector:
    """Geometric growth of the gradient going back through time (recurrent gain above one)."""

    signs: tuple[str, ...] = ("temporal_growth",)

    def __init__(self, config: DetectorConfig, progress: LossProgress | None = None,
                 profiles: LatestProfiles | None = None) -> None:
        self.config = config
        self.progress, self._feeds = shared_progress(config, progress)
        self.profiles = profiles or LatestProfiles()

    def reset(self) -> None:
        if self._feeds:
            self.progress.reset()

    def update(self, stats: StepStats) -> list[Alert]:
        c = self.config
        if self._feeds:
            self.progress.update(stats.loss, stats.chance_loss)
        if not stats.probed:
            return []
        grows = {
            k: p for k, p in self.profiles.of(stats, min_steps=c.temporal_min_steps).items()
            if p.ratio >= c.temporal_growth_ratio and p.growing >= c.temporal_growth_consistency
            and _material(stats.layers[k], c.temporal_growth_min_grad)
        }
        alerts = []
        for module in dict.fromkeys(k[0] for k in grows):
            worst = max((k for k in grows if k[0] == module), key=lambda k: grows[k].ratio)
            p, ls = grows[worst], stats.layers[worst]
            norms = ls.timestep_grad_norms or []
            t_cut = _latest(norms, lambda v: v >= c.temporal_growth_ratio * p.late)
            evidence = _describe(worst, p, "grows") + (
                f" (threshold {fmt(c.temporal_growth_ratio)}); it grows from one timestep to the one before on "
                f"{p.growing * 100:.0f} % of the first three quarters (threshold {c.temporal_growth_consistency * 100:.0f} %)"
            )
            if t_cut is not None:
                evidence += f"; from timestep {t_cut} back it is over {fmt(c.temporal_growth_ratio)}× the recent level"
            critical = p.ratio >= c.temporal_growth_critical
            gain = self.progress.improvement
            converged = self.progress.state == "plateau" and gain is not None and gain >= 1 - c.plateau_level
            improving = not critical and (self.progress.state == "improving" or converged)
            if improving:
                # a task whose answer lies in the first inputs (the first token of a short sequence) has its largest
                # input gradients there while it learns: growth that does not stop the loss falling is not an explosion
                evidence += (f"; but the loss {'has converged' if converged else 'is improving'} "
                             f"({self.progress.describe()}): the task may rely on its earliest inputs rather than the "
                             "gradient exploding (info; a warning when the loss is not improving)")
            alerts.append(
                make_alert(
                    "temporal_growth",
                    "critical" if critical else "info" if improving else "warning",
                    stats.step,
                    evidence=evidence + ".",
                    remedy=remedies.temporal_growth(ls.kind, _is_relu(ls)) + ".",
                    value=p.ratio,
                    threshold=c.temporal_growth_critical if critical else c.temporal_growth_ratio,
                    module=worst[0],
                    layer=worst[1],
                    timestep=t_cut,
                )
            )
        return alerts
