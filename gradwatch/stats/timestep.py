"""Per-timestep norms of a sequence tensor (pure tensor functions, no state, no host sync).

    >>> norms, squared = timestep_norms(output, time_dim=0)   # ‖output[t]‖ per t, one reduction
    >>> timestep_sumsq(packed.data, None, packed.batch_sizes)  # Σ of squares per timestep, float64
"""

from __future__ import annotations

import torch

from .tensor_stats import norm_over, sumsq_over

__all__ = ["timestep_norms", "exact_timestep_norms", "timestep_sumsq"]


def timestep_norms(values: torch.Tensor, time_dim: int | None, batch_sizes: torch.Tensor | None = None,
                   *, exact: bool = False) -> tuple[torch.Tensor, bool]:
    """L2 norm per timestep over every other dimension, in one reduction: (norms, False); for
    packed sequences, squared norms in float64 from `timestep_sumsq`: (sumsq, True).

    `time_dim=None`: the whole tensor is one timestep (a 0-d result: a cell's call). On the CPU the
    norms are float32 for float32 data and may overflow to Inf beyond ~1.8e19 (`norm_over`): the
    accumulator measures such a piece again with `exact=True` (float64) when it packs the step.
    """
    x = values.detach()
    if batch_sizes is not None:
        return timestep_sumsq(x, None, batch_sizes), True
    if time_dim is None:
        return norm_over(x, None, exact=exact), False
    other = tuple(d for d in range(x.dim()) if d != time_dim)
    if not other:
        return (x.double() if exact else x).abs(), False
    return norm_over(x, other, exact=exact), False


def exact_timestep_norms(values: torch.Tensor, time_dim: int | None) -> torch.Tensor:
    """`timestep_norms` in float64 (the accumulator's re-measure of a non-finite piece)."""
    return timestep_norms(values, time_dim, exact=True)[0]


def timestep_sumsq(values: torch.Tensor, time_dim: int | None, batch_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Σ of squares per timestep over every other dimension, in float64.

    With `batch_sizes` (packed sequences), `values` is the packed data (N, F) and rows are
    grouped into timesteps by `batch_sizes`. With `time_dim=None` the whole tensor is one
    timestep and the result is a scalar (a cell's single call). Scale-safe (`sumsq_over`):
    finite values never sum to Inf.
    """
    x = values.detach()
    if time_dim is None and batch_sizes is None:
        return sumsq_over(x, None)
    if batch_sizes is not None:
        rows = sumsq_over(x, tuple(range(1, x.dim()))) if x.dim() > 1 else x.double().square()
        # batch_sizes lives on the CPU; output_size spares CUDA a sync to size the result
        index = torch.repeat_interleave(torch.arange(batch_sizes.numel(), device=rows.device),
                                        batch_sizes.to(rows.device, non_blocking=True), output_size=rows.shape[0])
        return torch.zeros(batch_sizes.numel(), device=rows.device, dtype=rows.dtype).index_add_(0, index, rows)
    other = tuple(d for d in range(x.dim()) if d != time_dim)
    return sumsq_over(x, other) if other else x.double().square()
