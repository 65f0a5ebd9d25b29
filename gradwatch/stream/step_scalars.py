"""The step-scope channels the monitor measures at a step's end, as (slot, values) for `pack`.

    >>> scalars = step_scalars(read, weight_sumsq, update_sumsq, clip_figures)
    >>> flat, segments = accumulator.pack(scalars)
"""

from __future__ import annotations

from typing import Any

import torch

from .accumulator import Scalars
from .schema import CHANCE, CLIP, GRAD_SQ, OUTSIDE_WEIGHT_SQ, TOTAL_SQ, UPDATE_SQ, WEIGHT_SQ, StepLayout

__all__ = ["step_scalars"]

_SLOTS = StepLayout([])
"""Step channels come first in every layout, with the same slots (see `schema.StepLayout`)."""
_WEIGHT, _UPDATE, _GRAD = _SLOTS.slot(WEIGHT_SQ), _SLOTS.slot(UPDATE_SQ), _SLOTS.slot(GRAD_SQ)
_TOTAL, _OUTSIDE, _CLIP = _SLOTS.slot(TOTAL_SQ), _SLOTS.slot(OUTSIDE_WEIGHT_SQ), _SLOTS.slot(CLIP)
_CHANCE = _SLOTS.slot(CHANCE)


def step_scalars(read: Any, weight: Scalars, update: Scalars,
                 clip: torch.Tensor | None, chance: torch.Tensor | None = None) -> list[tuple[int, Scalars]]:
    """(slot, values) of the step channels measured this step, in packing order.

    `read`: the gradient read before the update (`capture.params.BeforeUpdate`); `weight`,
    `update`: per-group Σθ² before the update and Σ(Δθ)²; `clip`: the clip figures, or None; `chance`:
    the chance level inferred from the criterion's targets (`capture.criteria`), or None."""
    scalars: list[tuple[int, Scalars]] = [(_WEIGHT, weight), (_UPDATE, update)]
    if read.grad_sumsq is not None:
        scalars.append((_GRAD, read.grad_sumsq))
    if read.total is not None:
        scalars.append((_TOTAL, read.total))
    if read.outside_weight_sumsq is not None:
        scalars.append((_OUTSIDE, read.outside_weight_sumsq))
    if clip is not None:
        scalars.append((_CLIP, clip))
    if chance is not None:
        scalars.append((_CHANCE, chance.reshape(1)))
    return scalars
