"""An identity autograd function that measures the gradient flowing through a tensor.

    >>> y = timestep_probe(x, time_dim=0, sink=lambda sq: norms.append(sq))
    >>> loss(y).backward()          # sink receives Σ_{batch,features} (∂L/∂x_t)² per t

The forward pass returns a view of its input, so values and everything downstream are
untouched; the backward pass passes the gradient on unchanged after reading it.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["timestep_probe", "timestep_sumsq", "observe_gradient"]

Sink = Callable[[torch.Tensor], None]


def timestep_sumsq(values: torch.Tensor, time_dim: int | None, batch_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Σ of squares per timestep over every other dimension, in float32.

    With `batch_sizes` (packed sequences), `values` is the packed data (N, F) and rows are
    grouped into timesteps by `batch_sizes`. With `time_dim=None` the whole tensor is one
    timestep and the result is a scalar (a cell's single call).
    """
    sq = values.detach().float().square()
    if time_dim is None and batch_sizes is None:
        return sq.sum()
    if batch_sizes is not None:
        rows = sq.sum(dim=tuple(range(1, sq.dim()))) if sq.dim() > 1 else sq
        # batch_sizes lives on the CPU; output_size spares CUDA a sync to size the result
        index = torch.repeat_interleave(torch.arange(batch_sizes.numel(), device=rows.device),
                                        batch_sizes.to(rows.device, non_blocking=True), output_size=rows.shape[0])
        return torch.zeros(batch_sizes.numel(), device=rows.device, dtype=rows.dtype).index_add_(0, index, rows)
    other = tuple(d for d in range(sq.dim()) if d != time_dim)
    return sq.sum(dim=other) if other else sq


class _Probe(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, anchor, time_dim, batch_sizes, sink):  # type: ignore[override]
        ctx.time_dim, ctx.batch_sizes, ctx.sink = time_dim, batch_sizes, sink
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        try:
            ctx.sink(timestep_sumsq(grad, ctx.time_dim, ctx.batch_sizes))
        except Exception:  # a measurement failure must never break the user's backward pass
            pass
        return (grad if ctx.needs_input_grad[0] else None), None, None, None, None


def timestep_probe(
    x: torch.Tensor,
    *,
    time_dim: int | None,
    sink: Sink,
    batch_sizes: torch.Tensor | None = None,
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return a view of `x` whose backward pass reports per-timestep squared gradient norms to `sink`.

    `anchor`, a leaf that requires grad, makes the probe fire even when `x` itself does not
    require grad (layer 0 fed with plain data); no gradient is ever written into it.
    """
    if anchor is None:
        anchor = x.new_zeros(())
    return _Probe.apply(x, anchor, time_dim, batch_sizes, sink)


def observe_gradient(
    x: torch.Tensor, *, time_dim: int | None, sink: Sink, batch_sizes: torch.Tensor | None = None
) -> None:
    """Report per-timestep squared norms of ∂L/∂x to `sink` from a tensor hook; `x` itself is untouched.

    For tensors handed back to the user (a module's output): a tensor hook leaves `x` the very
    tensor the module produced, so the user may modify it in place (`out += skip`,
    `out.masked_fill_(...)`), which a custom Function's view output forbids. A hook registered
    before such an in-place change receives the gradient with respect to `x` as it was produced
    (torch's documented rule), which is the gradient at the module's output.
    """
    def hook(grad: torch.Tensor) -> None:
        try:
            sink(timestep_sumsq(grad, time_dim, batch_sizes))
        except Exception:  # a measurement failure must never break the user's backward pass
            pass

    x.register_hook(hook)
