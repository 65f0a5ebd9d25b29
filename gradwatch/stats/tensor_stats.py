"""Pure tensor functions behind the stream's statistics; no hooks, no state, no host sync.

    >>> group_norms([g1, g2, g3], index=torch.tensor([0, 0, 1]), groups=2)   # per-layer L2 norms
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..torch_compat import foreach_norm

__all__ = ["group_sumsq", "host_all_finite", "host_group_sumsq", "host_total", "norm_over", "host_overflowed", "stored_values", "sumsq_over", "tensor_sumsqs", "stack_scalars", "unit_activity", "DEAD_EPS", "SATURATION_LEVEL", "SATURATION_SHARE"]

DEAD_EPS = 1e-6
"""A unit is dead when |h| stays below this for every sample and timestep."""
SATURATION_LEVEL = 0.99
"""|h| at or above this counts as pinned at the end of tanh's range."""
SATURATION_SHARE = 0.9
"""A unit is saturated when pinned in at least this share of (sample, timestep) positions."""


def stack_scalars(
    scalars: Sequence[torch.Tensor], *, dtype: torch.dtype | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """0-d tensors (per-tensor norms, say) as one vector on `device` (the first one's if None), in
    `dtype` (None: the type `torch.stack` promotes them to). When they already share the device,
    as usual, that is one stack and at most one cast, not one conversion per tensor."""
    device = scalars[0].device if device is None else device
    if all(x.device == device for x in scalars):
        stacked = torch.stack(list(scalars))
        # dtype by keyword: with the positional Tensor.to(dtype), tests/test_long_run.py saw ~60-byte
        # objects from this line pile up (about one every two steps); the keyword form leaves none.
        return stacked if dtype is None else stacked.to(dtype=dtype)
    return torch.stack([x.to(device=device, dtype=dtype) for x in scalars])


def stored_values(t: torch.Tensor) -> torch.Tensor:
    """The entries of `t` whose squares sum to ‖t‖²: `t` itself when dense; a sparse COO tensor's
    values once coalesced (an uncoalesced one repeats indices whose values add up: Embedding(sparse=True)
    gradients); a compressed sparse tensor's values. Coalescing waits for the device on CUDA (one sync
    per sparse tensor, as SparseAdam's own coalesce)."""
    if t.layout == torch.strided:
        return t
    if t.layout == torch.sparse_coo:
        return t.coalesce().values()
    return t.values()


def sumsq_over(x: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """Σ x² over `dims` (all when None) as float64, scale-safe: finite values never sum to Inf.

    In float32, the sum of squares overflows once the norm passes ~1.8e19 (a loss scaled by 1e30
    with every gradient finite). On CUDA the reduction accumulates in float64. On the CPU, where a
    float64 reduction is many times slower, it runs in float32 and only a result that came out
    non-finite is recomputed in float64 (`_host_overflowed`). Other devices: float32 (no float64).
    """
    if x.device.type == "cuda":
        return _norm(x, dims, torch.float64).square()
    low = x.dtype in (torch.float16, torch.bfloat16)
    norm = _norm(x, dims, torch.float32 if low else None).double()
    if x.device.type == "cpu" and _host_overflowed(norm):
        norm = _norm(x, dims, torch.float64)
    return norm.square()


def norm_over(x: torch.Tensor, dims: tuple[int, ...] | None, *, exact: bool = False) -> torch.Tensor:
    """L2 norm of `x` over `dims` (all when None) in one reduction, the cheap half of `sumsq_over`.

    On CUDA it accumulates in float64 (never overflows). Elsewhere it stays in the tensor's type
    (float32 at least), which overflows to Inf once the norm passes ~1.8e19: the caller looks at
    the result later, off the hot path, and measures again with `exact=True` (float64) when it
    came out non-finite (`stream.accumulator.Piece.source`). With `exact=True`: float64 everywhere.
    """
    if exact or x.device.type == "cuda":
        return _norm(x, dims, torch.float64)
    return _norm(x, dims, torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None)


def host_overflowed(values: torch.Tensor) -> bool:
    """Whether a CPU tensor of norms (or squared norms) holds a non-finite value: see `_host_overflowed`."""
    return _host_overflowed(values)


def _norm(x: torch.Tensor, dims: tuple[int, ...] | None, dtype: torch.dtype | None) -> torch.Tensor:
    """L2 norm over `dims`; the last (contiguous) dimension first when it is one of several that do
    not form the contiguous tail, which spares a strided reduction (batch-first (B, T, F) over B and
    F: ~2x faster on the CPU). A contiguous tail (time-first (T, B, F) over B and F) is one reduction
    already: a single kernel, ~2.5x faster than the two-stage one on the CPU."""
    last = x.dim() - 1
    if dims is not None and len(dims) > 1 and last in dims and not _contiguous_tail(x, dims):
        inner = torch.linalg.vector_norm(x, 2, dim=-1, dtype=dtype)
        outer: torch.Tensor = torch.linalg.vector_norm(inner, 2, dim=tuple(d for d in dims if d != last))
        return outer
    norm: torch.Tensor = torch.linalg.vector_norm(x, 2, dim=dims, dtype=dtype)
    return norm


def _contiguous_tail(x: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """Whether `dims` are the last len(dims) dimensions of a contiguous `x`."""
    return x.is_contiguous() and tuple(dims) == tuple(range(x.dim() - len(dims), x.dim()))


def tensor_sumsqs(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Σ x² of each tensor as one float64 vector, scale-safe as `sumsq_over` (one foreach kernel)."""
    if tensors[0].device.type == "cuda":
        # the foreach kernel casts each element to float64 before squaring: no copy, no overflow
        return stack_scalars(foreach_norm(tensors, dtype=torch.float64)).square()
    norms = stack_scalars(foreach_norm(tensors), dtype=torch.float64)
    if tensors[0].device.type == "cpu" and _host_overflowed(norms):
        norms = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64).to(norms.device) for t in tensors])
    return norms.square()


def host_all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of the CPU tensor `x` is proven finite by one sum (a sum with a NaN/Inf
    among its terms is not finite). False means "not proven": a NaN/Inf, or finite values whose sum
    overflowed; the caller then measures in full. One pass over `x`, no temporary the size of `x`,
    no graph (`x` is detached). The CPU has no device to wait for, so reading the sum costs no
    synchronisation (tests/test_hot_path.py allows this function's conversion)."""
    return math.isfinite(x.detach().sum().item())


def _host_overflowed(values: torch.Tensor) -> bool:
    """Whether a CPU tensor holds a non-finite value. The CPU has no device to wait for, so this
    branch costs no synchronisation (tests/test_hot_path.py allows this function's conversion)."""
    # finite float64 norms never sum to Inf: one number to look at (a single norm is that number)
    total = values if values.numel() == 1 else values.sum()
    return not math.isfinite(total.item())


def group_sumsq(tensors: list[torch.Tensor], index: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-group Σ of squares of `tensors`, where `index[i]` is the group of `tensors[i]`.

    One foreach norm kernel over all tensors, then one scatter: cost stays flat as the number
    of parameters grows. Returns a float64 vector of length `groups` on the tensors' device.
    Scale-safe (`tensor_sumsqs`): a finite float32 gradient is never reported as Inf, however large.
    Sparse tensors count their stored values (`stored_values`).
    """
    if not tensors:
        return torch.zeros(groups, device=index.device, dtype=torch.float64)
    sumsqs = tensor_sumsqs([stored_values(t) for t in tensors])
    zeros = torch.zeros(groups, device=sumsqs.device, dtype=torch.float64)
    return zeros.index_add_(0, index.to(sumsqs.device), sumsqs)


def unit_activity(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-unit (last dimension) max |h|, count of saturated positions, and position count.

    These add up across several forward calls; `dead`/`saturated` fractions follow from them.
    """
    a = h.detach().abs().float().reshape(-1, h.shape[-1])
    positions = torch.full((), a.shape[0], dtype=torch.float32, device=a.device)
    return a.amax(dim=0), (a >= SATURATION_LEVEL).float().sum(dim=0), positions


def host_group_sumsq(tensors: list[torch.Tensor], slots: Sequence[int], groups: int) -> list[float]:
    """`group_sumsq` for CPU tensors, as Python floats, with the same bits: one foreach norm kernel
    and one read of the norms, then the squares and per-group sums in Python (in tensor order, as
    `index_add_` adds them). On the CPU there is no device to wait for: reading the norms costs no
    sync, and it spares the half-dozen tensor operations of the scatter (~10 µs each right after
    backward). tests/test_hot_path.py allows this function's conversion."""
    sums = [0.0] * groups
    if not tensors:
        return sums
    values = [stored_values(t) for t in tensors]
    norms: list[float] = []
    for measured in foreach_norm(values):  # one item() each: cheaper than stacking them first
        norms.append(float(measured.item()))
    if not math.isfinite(sum(norms)):  # a float32 overflow (or a real NaN/Inf): float64, as tensor_sumsqs
        norms = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in values]).tolist()
    for norm, slot in zip(norms, slots):
        sums[slot] += norm * norm
    return sums


def host_total(values: list[float]) -> float:
    """`torch.tensor(values, dtype=float64).sum()` as a float, with its bits: torch adds up to four
    values in order (as Python does) and more with vectorised partial sums (CPU only; no sync)."""
    if len(values) <= 4:
        total = 0.0
        for v in values:
            total += v
        return total
    return float(torch.tensor(values, dtype=torch.float64).sum().item())
