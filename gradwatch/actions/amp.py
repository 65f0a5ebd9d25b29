"""Mixed precision: measure and clip the true (unscaled) gradients when a `torch.amp.GradScaler` is used.

    >>> scaler = torch.amp.GradScaler("cuda")
    >>> monitor = gradwatch.watch(model, opt, clip="auto", scaler=scaler)
    >>> for x, y in data:
    ...     with torch.autocast("cuda", dtype=torch.float16):
    ...         loss = loss_fn(model(x), y)
    ...     opt.zero_grad()
    ...     scaler.scale(loss).backward()
    ...     scaler.step(opt)      # unscales, then opt.step() → gradwatch measures, guards, clips, then the update
    ...     scaler.update()
    ...     monitor.step(loss)

Order of calls inside `scaler.step(opt)`: the scaler unscales `opt`'s gradients (unless you
already called `scaler.unscale_(opt)`), checks them for Inf/NaN and, only if they are finite,
calls `opt.step()`. gradwatch's hook runs at the start of `opt.step()`: it first makes sure
that every watched optimizer's gradients are unscaled (a second optimizer that `scaler.step`
has not reached yet is unscaled here with `scaler.unscale_`, which the scaler records, so it
does not unscale it twice), then measures, then applies the guard and the clipping.
Steps in which the scaler found Inf/NaN never reach `opt.step()`, so gradwatch does not see
them: the scaler already skipped them.

When `scaler=` matters: with one ordinary optimizer, `scaler.step` has already unscaled its
gradients when the hook runs. With several optimizers, the ones `scaler.step` has not reached
yet are still scaled (norms × the loss scale, ~65536); fused optimizers (`Adam(fused=True)`)
receive scaled gradients and unscale them inside their kernel. Passing the scaler makes both
cases right; it is harmless otherwise.

bfloat16 autocast needs no scaler: gradients are float32 and nothing has to be done.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import GradwatchError
from ..torch_compat import SCALER_ATTRIBUTES, scaler_stage

__all__ = ["check_scaler", "unscale_all_"]


def check_scaler(scaler: Any) -> Any:
    """Validate `watch(scaler=...)`: None or a `torch.amp.GradScaler` (or a compatible object)."""
    if scaler is None:
        return None
    if not all(hasattr(scaler, name) for name in SCALER_ATTRIBUTES):
        raise GradwatchError(
            f"gradwatch.watch(scaler=...) expects a torch.amp.GradScaler, got {type(scaler).__name__}. "
            "Pass the scaler whose scale()/step()/update() your training loop calls, or None without one."
        )
    return scaler


def unscale_all_(scaler: Any, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Unscale (in place) the gradients of every optimizer the scaler has not unscaled yet this step.

    Uses only `scaler.unscale_`, so the scaler's own bookkeeping (Inf checks, "already unscaled")
    stays right. Optimizers that unscale inside a fused step (`_step_supports_amp_scaling`, e.g.
    `Adam(fused=True)`) receive `grad_scale` from `scaler.step`; once the gradients are unscaled
    here that attribute is cleared so that the fused kernel does not divide a second time.
    """
    if scaler is None or not scaler.is_enabled():
        return
    for opt in optimizers:
        if scaler_stage(scaler, opt) == "READY":
            scaler.unscale_(opt)
            if getattr(opt, "grad_scale", None) is not None:
                opt.grad_scale = None  # type: ignore[attr-defined]
