"""An identity autograd function that measures the gradient flowing through a tensor.

    >>> y = timestep_probe(x, time_dim=0, sink=lambda norms, squared, grad: seen.append(norms))
    >>> loss(y).backward()          # sink receives ‖∂L/∂x_t‖ per t (over batch and features)

The forward pass returns a view of its input, so values and everything downstream are
untouched; the backward pass passes the gradient on unchanged after reading it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..stats.timestep import exact_timestep_norms, timestep_norms, timestep_sumsq

__all__ = ["timestep_probe", "timestep_sumsq", "timestep_norms", "exact_timestep_norms", "observe_gradient"]

Sink = Callable[[torch.Tensor, bool, torch.Tensor], None]
"""Receives `timestep_norms(grad, ...)`'s (values, squared) and the gradient they measure."""
GradientSink = Callable[[torch.Tensor], None]
"""Receives the gradient itself (`observe_gradient`: the accumulator measures it, now or at the step's end)."""


class _Probe(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, anchor: torch.Tensor, time_dim: int | None,
                batch_sizes: torch.Tensor | None, sink: Sink, on_error: Callable[[Exception], None] | None) -> torch.Tensor:
        ctx.time_dim, ctx.batch_sizes, ctx.sink, ctx.on_error = time_dim, batch_sizes, sink, on_error
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None, None]:
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
    viewed: torch.Tensor = _Probe.apply(x, anchor, time_dim, batch_sizes, sink, on_error)  # type: ignore[no-untyped-call]
    return viewed


def observe_gradient(
    x: torch.Tensor,
    *,
    sink: GradientSink,
    on_error: Callable[[Exception], None] | None = None,
) -> None:
    """Hand ∂L/∂x to `sink` from a tensor hook; `x` itself is untouched.

    For tensors handed back to the user (a module's output): a tensor hook leaves `x` the very
    tensor the module produced, so the user may modify it in place (`out += skip`,
    `out.masked_fill_(...)`), which a custom Function's view output forbids. A hook registered
    before such an in-place change receives the gradient with respect to `x` as it was produced
    (torch's documented rule), which is the gradient at the module's output. Failures go to
    `on_error` as in `timestep_probe`.
    """
    def hook(grad: torch.Tensor) -> None:
        try:
            sink(grad)
        except Exception as exc:  # a measurement failure must never break the user's backward pass...
            if on_error is not None:
                on_error(exc)  # ...unless on_error re-raises it (strict=True)

    x.register_hook(hook)  # type: ignore[no-untyped-call]
