"""The non-finite guard behind `watch(..., skip_nonfinite=True)`: skip a step whose gradients hold NaN/Inf.

    >>> monitor = gradwatch.watch(model, opt, skip_nonfinite=True)
    >>> # a step with a NaN gradient: optimizer.step() changes nothing, monitor.history[-1].skipped is True

How a step is skipped: just before `optimizer.step()` runs, every parameter the optimizers
update gets `p.grad = None`. Every `torch.optim` optimizer leaves a parameter without a
gradient completely alone: no update, no momentum or moment update, no step count, no lazily
created state. So the parameters and the optimizer state stay bit-identical, and the next batch
trains as if the poisoned one had never been drawn. (LR schedulers are separate objects and
still advance.) Closure-based optimizers (`torch.optim.LBFGS`) recompute the gradients inside
`step()`, after this guard ran, so `watch` rejects them together with `skip_nonfinite=True`.

Cost: the decision must reach the host, because only the host can decide not to touch the
gradients: one host-device synchronisation per step (one small all-reduce too under
torch.distributed). Clipping alone never synchronises; this guard does.

Distributed: when `torch.distributed` is initialised with more than one process, the flag is
all-reduced with MAX, so every rank skips the same steps (otherwise replicas would diverge).
Every rank must therefore run the guard on every step, as DDP already requires for backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stats.tensor_stats import stack_scalars
from .batch import GradBatch, per_tensor_norms

__all__ = ["NonFiniteGuard", "grads_nonfinite"]


def grads_nonfinite(batch: GradBatch) -> Tensor:
    """A 0-d float32 device tensor: 1.0 if any gradient in `batch` holds a NaN or ±Inf, else 0.0.

    Built from per-gradient L2 norms computed in float32 (a NaN or Inf anywhere makes its norm
    non-finite). A finite gradient whose float32 norm overflows (an element above ~1e19) counts
    as non-finite too: such a step is as unusable as one with an Inf.
    """
    grads = batch.grads
    if any(g.dtype == torch.float16 for g in grads):
        norms = per_tensor_norms(grads, dtype=torch.float32)  # half-precision norms overflow at 65504
    else:
        norms = batch.norms  # shared with the clipping policy: one pass over the gradients
    total = stack_scalars(norms, dtype=torch.float32).sum()  # on the first gradient's device
    return (~torch.isfinite(total)).float()


def _all_ranks_max(flag: Tensor) -> Tensor:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


class NonFiniteGuard:
    """Decides, once per step, whether the step must be skipped, and skips it."""

    name = "skip_nonfinite"

    def should_skip(self, batch: GradBatch) -> bool:
        """True when any rank's gradients hold NaN/Inf. One host-device sync (and one all-reduce)."""
        if not batch.params:
            return False
        flag = _all_ranks_max(grads_nonfinite(batch))
        return bool(flag.item())  # the one deliberate sync: only the host can withhold the update

    @staticmethod
    def skip_(batch: GradBatch) -> None:
        """Drop every gradient the optimizers would apply, so that `optimizer.step()` changes nothing."""
        for p in batch.params:
            p.grad = None
