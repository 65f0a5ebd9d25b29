"""The gradients one optimizer step is about to apply, and the foreach kernels that act on them.

    >>> batch = GradBatch.of(optimizers)             # every parameter the optimizers update, with a .grad
    >>> norm = batch.total_norm()                    # torch.nn.utils.get_total_norm, as clip_grad_norm_ computes it
    >>> scale_(batch.grads, torch.clamp(1.0 / (norm + 1e-6), max=1.0))

Everything here stays on the device: no `.item()`, no branch on a tensor's value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ..stats.tensor_stats import stack_scalars
from ..torch_compat import foreach_mul_, foreach_norm, total_norm

__all__ = ["GradBatch", "optimizer_params", "by_device_dtype", "scale_", "clip_record"]


def optimizer_params(optimizers: Sequence[torch.optim.Optimizer]) -> list[Tensor]:
    """Every parameter of every param group of `optimizers`, once each, in optimizer order."""
    seen: set[int] = set()
    params: list[Tensor] = []
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params


def by_device_dtype(tensors: list[Tensor]) -> list[list[Tensor]]:
    """`tensors` split by (device, dtype) in order of first appearance, as torch's foreach utilities do
    (sparse tensors apart from dense ones)."""
    first = tensors[0]
    device, dtype, layout = first.device, first.dtype, first.layout
    if all(t.device == device and t.dtype == dtype and t.layout == layout for t in tensors):
        return [tensors]
    groups: dict[tuple[torch.device, torch.dtype, torch.layout], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype, t.layout), []).append(t)
    return list(groups.values())


def _dense(t: Tensor) -> Tensor:
    return t.coalesce().values() if t.is_sparse else t


def per_tensor_norms(tensors: list[Tensor], dtype: torch.dtype | None = None) -> list[Tensor]:
    """L2 norm of each tensor, one foreach kernel per (device, dtype) group, in grouped order."""
    norms: list[Tensor] = []
    for group in by_device_dtype([_dense(t) for t in tensors]):
        norms.extend(foreach_norm(group, dtype=dtype))
    return norms


def scale_(tensors: list[Tensor] | list[list[Tensor]], coefficient: Tensor) -> None:
    """Multiply every tensor in place by the 0-d `coefficient` (moved to each tensor's device and dtype).

    `tensors` may be a flat list or already split by `by_device_dtype` (a list of lists).
    """
    groups = tensors if tensors and isinstance(tensors[0], list) else by_device_dtype(tensors)  # type: ignore[arg-type]
    for group in groups:
        first = group[0]
        coef = coefficient if coefficient.device == first.device else coefficient.to(first.device)
        foreach_mul_(group, coef)


def clip_record(before: Tensor, after: Tensor, coefficient: Tensor, threshold: Tensor | float) -> Tensor:
    """The monitor's clip vector: [norm_before, norm_after, coefficient, threshold (NaN if none)], float32."""
    if not isinstance(threshold, Tensor):
        threshold = torch.full((), threshold, dtype=before.dtype, device=before.device)
    record = torch.stack([before, after, coefficient, threshold.to(before.dtype)])
    return record if record.dtype == torch.float32 else record.float()


LOOPS_PER_TENSOR = ("cpu",)
"""Devices on which torch's `get_total_norm` takes one op per tensor instead of a foreach kernel."""


@dataclass
class GradBatch:
    """The parameters that the optimizers update and that received a gradient this step."""

    params: list[Tensor]
    """Parameters with a `.grad`, deduplicated, in optimizer order (frozen or unused ones are left out)."""
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    """The optimizers about to step (policies that depend on the learning rate read their groups)."""

    @classmethod
    def of(cls, optimizers: Sequence[torch.optim.Optimizer], params: list[Tensor] | None = None) -> "GradBatch":
        """The batch for `optimizers`; `params` may pass a cached `optimizer_params(optimizers)`."""
        params = optimizer_params(optimizers) if params is None else params
        return cls([p for p in params if p.grad is not None], list(optimizers))

    @functools.cached_property
    def grads(self) -> list[Tensor]:
        return [p.grad for p in self.params]  # type: ignore[misc]

    @functools.cached_property
    def groups(self) -> list[list[Tensor]]:
        """`grads` split by (device, dtype), as the foreach kernels need them."""
        return by_device_dtype(self.grads)

    @functools.cached_property
    def norms(self) -> list[Tensor]:
        """Per-gradient L2 norms in `groups` order, in each gradient's dtype (clip_grad_norm_'s)."""
        if len(self.groups) == 1 and not self.grads[0].is_sparse:
            return list(foreach_norm(self.grads))
        return per_tensor_norms(self.grads)

    def total_norm(self) -> Tensor:
        """Total L2 norm over all gradients, bit-identical to `torch.nn.utils.clip_grad_norm_`'s.

        Torch's own `get_total_norm` (`torch_compat.total_norm`) computes it, except where the same
        bits come cheaper from `norms`: when they were already taken this step (the guard reads
        them: one pass over the gradients), on the CPU (torch's helper loops tensor by tensor
        there, 15-50 µs more per step than one foreach call for 8-100 tensors), and for sparse
        gradients (torch's helpers refuse them); and from `norms` too on a torch without it
        (before 2.6: torch's own steps, one foreach norm per (device, dtype) group, then the norm
        of the norms on the first gradient's device)."""
        if "norms" not in self.__dict__ and self.grads[0].device.type not in LOOPS_PER_TENSOR \
                and not any(g.is_sparse for g in self.grads):
            public = total_norm(self.grads)
            if public is not None:
                return public
        norm: Tensor = torch.linalg.vector_norm(stack_scalars(self.norms))  # on the first gradient's device
        return norm
