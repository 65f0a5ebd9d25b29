"""`non_finite`: NaN or Inf in the loss, the activations, the gradients or the weights.

    >>> NonFiniteDetector().update(stats)      # stats.nonfinite = NonFinite("forward", "rnn", 1, 13)
    [Alert(problem='exploding', sign='non_finite', severity='critical', step=37, module='rnn', layer=0, timestep=13, ...)]

Rule: every step whose record carries `StepStats.nonfinite` raises a critical alert at that
very step (value: the loss when only the loss is non-finite, else the total gradient norm;
threshold: inf), naming where it first appeared (forward activations, backward gradients only,
the loss, or the weights), the module, the layer and the first timestep. No threshold: one
non-finite value poisons every later update. The record is checked on every step, not
only on probe steps (the stream locates forward NaNs from the module input and output, and
backward ones from the module output gradient, on every step).
"""

from __future__ import annotations

import math

from ..records import Alert, StepStats
from . import remedies
from .base import fmt, make_alert, where as where_words

__all__ = ["NonFiniteDetector"]

_WHERE = {
    "input": "already in the input sequence",
    "forward": "in the forward activations",
    "backward": "only in the backward gradients (the forward pass and the loss were finite)",
    "loss": "in the loss only (activations and gradients of the watched modules were finite)",
    "weights": "in the weights themselves, before this step's update",
}


class NonFiniteDetector:
    """Critical alert at the step where a NaN/Inf appears, with its location."""

    signs: tuple[str, ...] = ("non_finite",)

    def reset(self) -> None:
        pass

    def update(self, stats: StepStats) -> list[Alert]:
        nf = stats.nonfinite
        if nf is None:
            return []
        place = where_words(nf.module, nf.layer)
        if nf.timestep is not None:
            when = ("first at timestep " if nf.where != "backward" else "entering backpropagation at timestep ")
            place += f", {when}{nf.timestep}"
        evidence = f"NaN/Inf {_WHERE[nf.where]} at step {stats.step}: {place}"
        if stats.loss is not None:
            evidence += f"; loss = {fmt(stats.loss)}"
        if math.isfinite(stats.grad_norm):
            evidence += f"; total gradient norm = {fmt(stats.grad_norm)}"
        else:
            evidence += "; the total gradient norm is non-finite"
        return [
            make_alert(
                "non_finite",
                "critical",
                stats.step,
                evidence=evidence + ".",
                remedy=remedies.non_finite(nf.where, nf.module, nf.layer, nf.timestep) + ".",
                value=stats.loss if (nf.where == "loss" and stats.loss is not None) else stats.grad_norm,
                threshold=math.inf,
                module=nf.module,
                layer=nf.layer,
                timestep=nf.timestep,
            )
        ]
