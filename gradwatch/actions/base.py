"""`StepActions`: what the monitor calls around each update, and `ActionRecord`, what it gets back.

    >>> actions = build_actions("auto", skip_nonfinite=True)          # an `Actions`, one implementation
    >>> actions.before_read(optimizers)                                # GradScaler: unscale first
    >>> record = actions.before_step(optimizers, profiles)             # guard, then clip
    >>> record.clip, record.policy, record.skipped
    (tensor([3.1, 1.0, 0.32, 1.0]), 'auto', False)

The monitor hands the actions the optimizers about to step, never itself; the record goes into
the step's `StepStats.clip` and `skipped` fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import Tensor

__all__ = ["ActionRecord", "NO_ACTION", "StepActions"]


@dataclass(frozen=True)
class ActionRecord:
    """What the clip/skip actions did to one step's gradients (device tensors, nothing read back)."""

    clip: Tensor | None = None
    """The clipping policy's vector [norm_before, norm_after, coefficient, threshold (NaN if none)],
    float32, on the gradients' device (`actions.batch.clip_record`); None when nothing was clipped."""
    policy: str | None = None
    """Name of the clipping policy that produced `clip` ('norm', 'auto', ...), or None."""
    skipped: bool = False
    """True when the non-finite guard dropped the gradients: the optimizer step changes nothing."""


NO_ACTION = ActionRecord()
"""The record of a step the actions left alone."""


class StepActions(Protocol):
    """Acts on the gradients between backward and the optimizers' update (`gradwatch.actions.Actions`).

    A method that raises is reported once and the actions are switched off; training goes on
    (`strict=True` re-raises instead)."""

    def before_read(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Before the monitor measures the gradients (mixed precision: unscale them)."""
        ...

    @property
    def wants_profiles(self) -> bool:
        """True when `before_step` uses the per-timestep gradient profiles (clip="auto"): the monitor
        then measures them on probe steps and passes them."""
        ...

    def observe_loss(self, loss: float | None, clip_coefficient: float | None) -> None:
        """Once a step's record is complete (read back on the host): its loss (None: none fed) and
        its clip coefficient (None: not clipped by a policy), for a clipper that learns from them."""
        ...

    def before_step(self, optimizers: Sequence[torch.optim.Optimizer],
                    profiles: Sequence[tuple[Tensor, Tensor]] = ()) -> ActionRecord:
        """After the measurement, right before the update: guard, clip, and say what was done.

        `profiles`: on probe steps, per watched module, the norms per timestep of the gradient into
        its output and out through its input (`StepAccumulator.gradient_profiles`); else empty."""
        ...
