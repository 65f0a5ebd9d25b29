"""Actions: what gradwatch does to a step before `optimizer.step()` applies it (clipping, the non-finite guard).

    >>> gradwatch.watch(model, opt, clip="auto", skip_nonfinite=True)
    >>> gradwatch.watch(model, opt, clip=gradwatch.actions.ZClip(z_threshold=3.0), scaler=scaler)

The monitor calls `actions.before_read(optimizers)` at the start of the optimizer's pre-step
hook (mixed precision: unscale), measures the gradients, then calls
`actions.before_step(optimizers)`, which runs the guard, then the clipping policy, and returns
an `ActionRecord` (the clip vector [norm_before, norm_after, coefficient, threshold or NaN] as a
device tensor, the policy's name, whether the step was skipped) for the step's record. The
contract is the `StepActions` Protocol (`actions.base`); `Actions` is its implementation.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, cast

import torch

from ..errors import GradwatchError
from .amp import check_scaler, unscale_all_
from .base import NO_ACTION, ActionRecord, StepActions
from .auto import Auto
from .batch import GradBatch, optimizer_params
from .clipping import AGC, AutoClip, Clipper, ClipPolicy, Norm, Value, ZClip
from .guard import NonFiniteGuard
from .loss_feedback import feed_loss
from .propagation import Profiles, feed_propagation, takes_profiles

__all__ = [
    "Actions",
    "ActionRecord",
    "StepActions",
    "build_actions",
    "as_policy",
    "Norm",
    "Value",
    "AutoClip",
    "ZClip",
    "AGC",
    "Auto",
    "ClipPolicy",
    "NonFiniteGuard",
]

_SUPPORTED = (
    "None (no clipping), a positive number (largest total L2 norm, exactly torch.nn.utils.clip_grad_norm_), "
    "'auto' (adaptive, no tuning), or a policy from gradwatch.actions: Norm(max_norm), Value(clip_value), "
    "AutoClip(percentile), ZClip(alpha, z_threshold), AGC(clip_factor), Auto()"
)

_CLOSURE_OPTIMIZERS = (torch.optim.LBFGS,)
"""Optimizers that recompute the gradients inside step(): a pre-step hook cannot act on those."""


def as_policy(clip: Any) -> ClipPolicy | None:
    """Turn `watch(clip=...)` into a policy object, or raise a GradwatchError saying what is supported."""
    if clip is None:
        return None
    if isinstance(clip, str):
        if clip.strip().lower() == "auto":
            return Auto()
        raise GradwatchError(f"gradwatch.watch(clip=...) got the string {clip!r}; supported: {_SUPPORTED}.")
    if isinstance(clip, bool):
        raise GradwatchError(f"gradwatch.watch(clip=...) got {clip!r}; supported: {_SUPPORTED}.")
    if isinstance(clip, (int, float)):
        if not (clip > 0) or math.isinf(clip):
            raise GradwatchError(f"gradwatch.watch(clip=...) got {clip!r}: a number must be positive and finite. "
                                 f"Supported: {_SUPPORTED}.")
        return Norm(float(clip))
    if callable(getattr(clip, "make", None)) and isinstance(getattr(clip, "name", None), str):
        return cast(ClipPolicy, clip)  # a user's policy: has the Protocol's make() and name
    raise GradwatchError(f"gradwatch.watch(clip=...) got {type(clip).__name__} {clip!r}; supported: {_SUPPORTED}.")


class Actions:
    """Per-monitor runtime: the optional guard, the optional clipper, the optional GradScaler."""

    def __init__(self, clipper: Clipper | None, guard: NonFiniteGuard | None, scaler: Any = None) -> None:
        self.clipper = clipper
        self.guard = guard
        self.scaler = scaler
        self._params: list[torch.Tensor] = []
        self._params_key: tuple[tuple[int, int], ...] = ()

    def _optimizer_params(self, optimizers: Sequence[torch.optim.Optimizer]) -> list[torch.Tensor]:
        # Re-walk the param groups only when they changed (add_param_group, a new optimizer).
        key = tuple((id(g["params"]), len(g["params"])) for opt in optimizers for g in opt.param_groups)
        if key != self._params_key:
            self._params, self._params_key = optimizer_params(optimizers), key
        return self._params

    def before_read(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Called before the monitor measures the gradients: unscale them if a GradScaler is in use."""
        if self.scaler is not None:
            unscale_all_(self.scaler, optimizers)

    @property
    def wants_profiles(self) -> bool:
        """True when the clipper uses the per-timestep gradient profiles ("auto")."""
        return self.clipper is not None and takes_profiles(self.clipper)

    def observe_recurrent(self, modules: Sequence[type[torch.nn.Module]], weights: Sequence[torch.Tensor] = ()) -> None:
        """The classes of the recurrent modules the monitor watches, for a clipper that uses them
        ("auto": a looser update bound when all are gated), and their hidden-to-hidden weights
        ("auto": the alignment feedback measures on them)."""
        observe = getattr(self.clipper, "observe_recurrent", None)
        if observe is not None:
            observe(modules, weights) if weights else observe(modules)

    def observe_loss(self, loss: float | None, clip_coefficient: float | None) -> None:
        """One step's loss and clip coefficient as read back on the host (the monitor's step record),
        for a clipper that uses them ("auto": the loss feedback on its update bound); best effort."""
        if self.clipper is not None:
            feed_loss(self.clipper, loss, clip_coefficient)

    def before_step(self, optimizers: Sequence[torch.optim.Optimizer], profiles: Profiles = ()) -> ActionRecord:
        """Guard, then clip, the gradients `optimizers` are about to apply; return the step's record.
        `profiles`: see `base.StepActions.before_step` (auto's propagation factor)."""
        batch = GradBatch.of(optimizers, self._optimizer_params(optimizers))
        if not batch.params:
            return NO_ACTION
        if self.guard is not None and self.guard.should_skip(batch):
            self.guard.skip_(batch)
            return ActionRecord(skipped=True)
        if self.clipper is None:
            return NO_ACTION
        with torch.no_grad():
            feed_propagation(self.clipper, profiles)
            record = self.clipper.clip_(batch)
        return ActionRecord(clip=record, policy=self.clipper.name)

    def clip_by_hand(self, params: Sequence[torch.Tensor]) -> ActionRecord:
        """Clip the gradients of `params` that a script is about to apply by hand (no optimizer:
        `p.data.add_(p.grad, alpha=-lr)`), as `before_step` clips an optimizer's. Call it right
        after backward. The non-finite guard does not apply (it skips by dropping `p.grad`, which
        a hand-written update would trip on), and no optimizer means no learning rate: "auto"
        keeps its spike bound only."""
        if self.clipper is None:
            return NO_ACTION
        batch = GradBatch([p for p in params if p.grad is not None])
        if not batch.params:
            return NO_ACTION
        with torch.no_grad():
            record = self.clipper.clip_(batch)
        return ActionRecord(clip=record, policy=self.clipper.name)


def build_actions(
    clip: Any,
    skip_nonfinite: Any,
    scaler: Any = None,
    *,
    optimizers: Sequence[torch.optim.Optimizer] | None = None,
) -> Actions | None:
    """The `Actions` for `watch(clip=..., skip_nonfinite=..., scaler=...)`, or None when nothing is asked.

    `optimizers`, when given, is checked: clipping and the guard act in the optimizer's pre-step
    hook, so they need an optimizer, and not one that recomputes gradients inside step().
    """
    if not isinstance(skip_nonfinite, bool):
        raise GradwatchError(f"gradwatch.watch(skip_nonfinite=...) must be True or False, got {skip_nonfinite!r}.")
    policy = as_policy(clip)
    scaler = check_scaler(scaler)
    if policy is None and not skip_nonfinite and scaler is None:
        return None
    if optimizers is not None and (policy is not None or skip_nonfinite):
        what = "clip=" if policy is not None else "skip_nonfinite=True"
        if not optimizers:
            raise GradwatchError(
                f"gradwatch.watch({what}) acts just before optimizer.step(), so it needs the optimizer: "
                "pass it as gradwatch.watch(model, optimizer, ...), or clip yourself before a manual update."
            )
        for opt in optimizers:
            if isinstance(opt, _CLOSURE_OPTIMIZERS):
                raise GradwatchError(
                    f"gradwatch.watch({what}) cannot act on {type(opt).__name__}: it recomputes the gradients "
                    "inside step(closure), after gradwatch's pre-step hook. Clip inside your closure instead "
                    "(torch.nn.utils.clip_grad_norm_ after backward), or use a first-order optimizer."
                )
    clipper = policy.make() if policy is not None else None
    guard = NonFiniteGuard() if skip_nonfinite else None
    return Actions(clipper, guard, scaler)
