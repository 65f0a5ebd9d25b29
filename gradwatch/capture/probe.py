"""An identity autograd function that measures the gradient flowing through a tensor.

    >>> y = timestep_probe(x, time_dim=0, sink=lambda norms, squared, grad: seen.append(norms))
    >>> loss(y).backward()          # sink receives ‖∂L/∂x_t‖ per t (over batch and features)

The forward pass returns a view of its input, so values and everything downstream are
untouched; the backward pass passes the gradient on unchanged after reading it.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..stats.tensor_stats import norm_over, sumsq_over

__all__ = ["timestep_probe", "timestep_sumsq", "timestep_norms", "observe_gradient"]

Sink = Callable[[torch.Tensor, bool, torch.Tensor], None]
"""Receives `timestep_norms(grad, ...)`'s (values, squared) and the gradient they measure."""


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


class _Probe(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, anchor, time_dim, batch_sizes, sink, on_error):  # type: ignore[override]
        ctx.time_dim, ctx.batch_sizes, ctx.sink, ctx.on_error = time_dim, batch_sizes, sink, on_error
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        try:
            ctx.sink(*timestep_norms(grad, ctx.time_dim, ctx.batch_sizes), grad)
        except Exception as exc:  # a measurement failure must never break the user's backward pass...
            if ctx.on_error is not None:
                ctx.on_error(exc)  # ...unless on_error re-raises it (strict=True)
        return (grad if ctx.needs_input_grad[0] else None), None, None, None, None, None


def timestep_probe(
    x: torch.Tensor,
    *,
    time_dim: int | None,
    sink: Sink,
    batch_sizes: torch.Tensor | None = None,
    anchor: torch.Tensor | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> torch.Tensor:
    """Return a view of `x` whose backward pass reports per-timestep gradient norms to `sink`.

    `anchor`, a leaf that requires grad, makes the probe fire even when `x` itself does not
    require grad (layer 0 fed with plain data); no gradient is ever written into it.
    A failing measurement never fails the backward pass: it goes to `on_error` (if given), which
    reports it, or raises it under `strict=True`.
    """
    if anchor is None:
        anchor = x.new_zeros(())
    return _Probe.apply(x, anchor, time_dim, batch_sizes, sink, on_error)


def observe_gradient(
    x: torch.Tensor,
    *,
    time_dim: int | None,
    sink: Sink,
    batch_sizes: torch.Tensor | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> None:
    """Report per-timestep norms of ∂L/∂x to `sink` from a tensor hook; `x` itself is untouched.

    For tensors handed back to the user (a module's output): a tensor hook leaves `x` the very
    tensor the module produced, so the user may modify it in place (`out += skip`,
    `out.masked_fill_(...)`), which a custom Function's view output forbids. A hook registered
    before such an in-place change receives the gradient with respect to `x` as it was produced
    (torch's documented rule), which is the gradient at the module's output. Failures go to
    `on_error` as in `timestep_probe`.
    """
    def hook(grad: torch.Tensor) -> None:
        try:
            sink(*timestep_norms(grad, time_dim, batch_sizes), grad)
        except Exception as exc:  # a measurement failure must never break the user's backward pass...
            if on_error is not None:
                on_error(exc)  # ...unless on_error re-raises it (strict=True)

    x.register_hook(hook)
