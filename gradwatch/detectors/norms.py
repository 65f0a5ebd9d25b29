"""`norm_spike`: the gradient norm jumps far above its recent history, or grows steadily.

    >>> det = NormSpikeDetector(DetectorConfig())
    >>> [a.severity for s in records for a in det.update(s)]
    ['warning']

Three rules on the total gradient norm g (`StepStats.grad_norm`, as `clip_grad_norm_`
computes it), judged on every step:

* spike: after `spike_min_history` steps, g ≥ `spike_factor` × the median and ≥
  `spike_over_max` × the maximum of the last `spike_window` norms; during the first steps
  (from `spike_early_history` steps of history on, so there is no blind warm-up), g ≥
  `spike_early_factor` × the largest norm seen so far. A spike is judged by what it does,
  on the next step: it is a warning (critical when g ≥ `spike_critical_factor` × the median)
  when it persists — the next norm is still ≥ 1/`spike_persist_factor` of the spike, or the
  next batch's loss is above every loss of the window before the spike (the step damaged the
  model) — and `info` when it is isolated (one hard sample: the next norm and loss are back
  to usual) or when an adaptive optimiser kept the step its usual size. A non-finite next
  step confirms it. An early spike whose own batch loss is ≥ `spike_loss_factor` × every loss
  before it is a warning at once: that batch was far worse than any before, not one sample;
  with such a loss jump a spike is judged from the second step on, and a norm ≥
  `spike_loss_grad_factor` × the largest so far is enough.
* steady growth (after `spike_min_history` steps): g rose on each of the last
  `norm_growth_steps` steps, to ≥ `norm_growth_factor` × its value before the rise and ≥
  `spike_factor` × the baseline median (warning).
* absolute scale, no history needed, so it also fires on step 0: a recurrent layer's
  gradient norm is ≥ `abs_grad_ratio` × its weight norm (warning; critical at 100× that).

Steps without gradients (norm 0) and non-finite norms (reported by `non_finite`) stay out
of the history and break a growth run. The message names the watched layer whose own norm
jumped most, or says that the jump comes from elsewhere in the model.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from ..records import Alert, LayerKey, LayerStats, StepStats
from . import remedies
from .base import MedianWindow, fmt, make_alert, median, where
from .config import DetectorConfig

__all__ = ["NormSpikeDetector"]


def _usable(x: float) -> bool:
    return math.isfinite(x) and x > 0


@dataclass(frozen=True)
class _Pending:
    """A spike seen at `step`, judged on the next step."""

    step: int
    severity: str
    norm: float
    ratio: float
    base: float
    evidence: str
    key: "LayerKey | None"
    loss_top: float | None
    """Largest finite loss of the window before the spike (None without losses)."""


class NormSpikeDetector:
    """Sudden jumps, steady growth and absolute excess of the gradient norm."""

    signs: tuple[str, ...] = ("norm_spike",)

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        c = self.config
        self._history = MedianWindow(c.spike_window)
        self._seen = 0
        self._top = 0.0
        """Largest finite norm seen so far (the early rule's reference)."""
        self._run: collections.deque[float] = collections.deque(maxlen=c.norm_growth_steps + 1)
        self._layers: dict[LayerKey, collections.deque[float]] = {}
        """Recent gradient norms of each layer (their median is needed only when the total norm jumps)."""
        self._calm: float | None = None
        """Median norm of the first full window: the run's typical size before any jump."""
        self._clipping: str | None = None
        """The clipping policy of the latest step (its remedy must not tell a clipped run to clip)."""
        self._steps: collections.deque[float] = collections.deque(maxlen=self.config.spike_window)
        """Largest layer update ratio of recent steps: did a gradient spike become a large step?"""
        self._losses: collections.deque[float] = collections.deque(maxlen=self.config.spike_window)
        self._pending: _Pending | None = None

    def update(self, stats: StepStats) -> list[Alert]:
        self._clipping = stats.clip.policy if stats.clip is not None else None
        alerts = self._absolute(stats)
        judged = self._judge_pending(stats)
        if judged is not None:
            alerts.append(judged)
        g = stats.grad_norm
        if not _usable(g):
            self._run.clear()
            return alerts
        self._run.append(g)
        c = self.config
        if self._seen >= c.spike_early_history or (self._seen and self._loss_jumped(stats)):
            relative = self._spike(stats)
            if relative is None and self._pending is None and self._seen >= c.spike_min_history:
                relative = self._growth(stats)  # a jump waiting for its verdict is not also reported as growth
            if relative is not None:
                alerts.append(relative)
        self._remember(stats)
        return alerts

    def _remember(self, stats: StepStats) -> None:
        g = stats.grad_norm
        self._seen += 1
        self._top = max(self._top, g)
        self._history.append(g)
        if self._calm is None and self._history.full():
            self._calm = self._history.median()
        layers = self._layers
        for key, ls in stats.layers.items():
            if ls.has_grad and _usable(ls.grad_norm):
                past = layers.get(key)
                if past is None:
                    past = layers[key] = collections.deque(maxlen=self.config.spike_window)
                past.append(ls.grad_norm)
        step = _largest_update(stats)
        if step is not None:
            self._steps.append(step)
        if stats.loss is not None and math.isfinite(stats.loss):
            self._losses.append(stats.loss)

    # ------------------------------------------------------------------ rules
    def _absolute(self, stats: StepStats) -> list[Alert]:
        c = self.config
        found: tuple[LayerKey, float, LayerStats] | None = None  # the first layer with the largest ratio over the threshold
        for key, ls in stats.layers.items():
            if ls.has_grad and math.isfinite(ls.grad_norm) and _usable(ls.weight_norm):
                r = ls.grad_norm / ls.weight_norm
                if r >= c.abs_grad_ratio and (found is None or r > found[1]):
                    found = (key, r, ls)
        if found is None:
            return []
        key, ratio, ls = found
        note = " (an absolute scale: no history needed)" if not self._seen else ""
        return [
            make_alert(
                "norm_spike",
                "critical" if ratio >= 100 * c.abs_grad_ratio else "warning",
                stats.step,
                evidence=(
                    f"gradient norm of {where(*key)} is {fmt(ls.grad_norm)} against a weight norm of "
                    f"{fmt(ls.weight_norm)}: {fmt(ratio)}× the weights (threshold {fmt(c.abs_grad_ratio)}×) at step "
                    f"{stats.step}{note}."
                ),
                remedy=remedies.norm_absolute(ls.kind, first=not self._seen) + ".",
                value=ratio,
                threshold=c.abs_grad_ratio,
                module=key[0],
                layer=key[1],
            )
        ]

    def _spike(self, stats: StepStats) -> Alert | None:
        """An `info` alert when the jump was absorbed; otherwise None, the jump waiting for its next step."""
        c = self.config
        base, top = self._history.median(), self._history.largest()  # the history holds finite norms only
        ratio = stats.grad_norm / base
        if self._seen < c.spike_min_history:
            # the lower threshold needs `spike_early_history` losses to compare with: after one or two, a loss near
            # zero (a regression whose outputs start near their targets) swings by several times from batch to batch
            jumped = self._seen >= c.spike_early_history and self._loss_jumped(stats)
            least = c.spike_loss_grad_factor if jumped else c.spike_early_factor
            if stats.grad_norm < least * self._top:
                return None
            which = f", {fmt(c.spike_early_factor)}× without a loss jump" if jumped else ""
            rule = (f"{fmt(stats.grad_norm / self._top)}× the largest of the first {self._seen} steps "
                    f"(early threshold {fmt(least)}×{which}; no warm-up needed)")
        else:
            if not (ratio >= c.spike_factor and stats.grad_norm >= c.spike_over_max * top):
                return None
            rule = (f"{fmt(ratio)}× its median {fmt(base)} and {fmt(stats.grad_norm / top)}× its maximum over the "
                    f"last {len(self._history)} steps (thresholds {fmt(c.spike_factor)}× and {fmt(c.spike_over_max)}×)")
        key, detail = self._located(stats)
        severity = "critical" if ratio >= c.spike_critical_factor else "warning"
        evidence = f"total gradient norm {fmt(stats.grad_norm)} at step {stats.step} is {rule}{detail}"
        if self._seen < c.spike_min_history and self._loss_jumped(stats):
            # early, and the batch behind the jump was itself far worse than any before: no need to wait for
            # the next step to tell it from one hard sample
            top_loss = max(self._losses)
            return self._alert(stats.step, severity, ratio, base, (
                f"{evidence}; and this batch's loss, {fmt(stats.loss)}, is {fmt((stats.loss or 0.0) / top_loss)}× the "
                f"largest of the {len(self._losses)} steps before (threshold {fmt(c.spike_loss_factor)}×): the model, "
                "not one sample, is off."), key)
        step, usual = _largest_update(stats), (median(self._steps) if self._steps else None)
        if severity == "warning" and step is not None and usual and step < c.spike_step_factor * usual:
            # An adaptive optimiser (Adam) absorbs the jump: the step stayed its usual size.
            evidence += (f"; the update itself stayed small ({fmt(step)} of the weights, {fmt(step / usual)}× its "
                         f"recent median; info below {fmt(c.spike_step_factor)}×)")
            return self._alert(stats.step, "info", ratio, base, evidence + ".", key)
        self._pending = _Pending(stats.step, severity, stats.grad_norm, ratio, base, evidence, key,
                                 max(self._losses) if self._losses else None)
        return None

    def _loss_jumped(self, stats: StepStats) -> bool:
        """This batch's loss is ≥ `spike_loss_factor` × every finite loss seen before it (the window's)."""
        loss = stats.loss
        if loss is None or not math.isfinite(loss) or not self._losses:
            return False
        top = max(self._losses)
        return top > 0 and loss >= self.config.spike_loss_factor * top

    def _judge_pending(self, stats: StepStats) -> Alert | None:
        """Did last step's spike persist (warning/critical) or was it one hard batch (info)?"""
        p, self._pending = self._pending, None
        if p is None:
            return None
        c = self.config
        g, loss = stats.grad_norm, stats.loss
        if not math.isfinite(g) or (loss is not None and not math.isfinite(loss)):
            why = f"and step {stats.step} is non-finite"
        elif g >= p.norm / c.spike_persist_factor:
            why = (f"and it persists: at step {stats.step} the norm is still {fmt(g)}, {fmt(g / p.base)}× the median "
                   f"(at least 1/{fmt(c.spike_persist_factor)} of the spike)")
        elif loss is not None and p.loss_top is not None and loss > p.loss_top:
            why = (f"and the step damaged the model: the loss of the next batch, {fmt(loss)}, is above every loss of the "
                   f"{len(self._losses)} steps before the spike (largest {fmt(p.loss_top)})")
        else:
            return self._alert(stats.step, "info", p.ratio, p.base, (
                f"{p.evidence}; isolated: at step {stats.step} the norm is back to {fmt(g)} "
                f"({fmt(g / p.base)}× the median) and the loss did not rise, so this was one hard batch, not an "
                f"explosion (info; a warning when the jump persists or the loss rises)."), p.key)
        return self._alert(stats.step, p.severity, p.ratio, p.base, f"{p.evidence}; {why}.", p.key)

    def _alert(self, step: int, severity: str, ratio: float, base: float, evidence: str,
               key: LayerKey | None) -> Alert:
        return make_alert(
            "norm_spike",
            severity,  # type: ignore[arg-type]
            step,
            evidence=evidence,
            remedy=remedies.norm_spike(min(base, self._calm or base), self._clipping) + ".",
            value=ratio,
            threshold=self.config.spike_factor,
            module=key[0] if key else None,
            layer=key[1] if key else None,
        )

    def _growth(self, stats: StepStats) -> Alert | None:
        c = self.config
        run = self._run
        if len(run) < c.norm_growth_steps + 1 or not run[-1] > run[-2]:
            return None  # (the usual step: the last norm did not rise)
        values = list(run)
        if not all(b > a for a, b in zip(values, values[1:])):
            return None
        base = self._history.median()
        factor = values[-1] / values[0]
        if not (factor >= c.norm_growth_factor and values[-1] >= c.spike_factor * base):
            return None
        key, detail = self._located(stats)
        trail = " → ".join(fmt(v) for v in values)
        return make_alert(
            "norm_spike",
            "warning",
            stats.step,
            evidence=(
                f"total gradient norm rose on each of the last {c.norm_growth_steps} steps, {trail}: "
                f"{fmt(factor)}× over the rise and {fmt(values[-1] / base)}× the median {fmt(base)} of the last "
                f"{len(self._history)} steps (thresholds {fmt(c.norm_growth_factor)}× and {fmt(c.spike_factor)}×){detail}."
            ),
            remedy=remedies.norm_growth() + ".",
            value=factor,
            threshold=c.norm_growth_factor,
            module=key[0] if key else None,
            layer=key[1] if key else None,
        )

    def _located(self, stats: StepStats) -> tuple[LayerKey | None, str]:
        """The watched layer whose norm rose most against its own recent median."""
        jumps = {}
        for key, ls in stats.layers.items():
            past = self._layers.get(key)
            if past and _usable(ls.grad_norm) and median(past) > 0:
                jumps[key] = ls.grad_norm / median(past)
        if not jumps or max(jumps.values()) < 2:
            return None, (
                "; no watched recurrent layer jumped against its own recent median, so the jump comes from other "
                "parameters (an output layer, an embedding)"
            )
        key = max(jumps, key=jumps.__getitem__)
        return key, (
            f"; largest jump in {where(*key)}: {fmt(stats.layers[key].grad_norm)}, {fmt(jumps[key])}× its own recent median"
        )


def _largest_update(stats: StepStats) -> float | None:
    """Largest finite update ratio over the step's layers, or None when none was measured."""
    ratios = [ls.update_ratio for ls in stats.layers.values() if ls.has_grad and _usable(ls.update_ratio)]
    return max(ratios) if ratios else None
