"""Every torch private API gradwatch uses, in one place, each with a safe fallback.

    >>> in_checkpoint_recomputation()   # True inside torch.utils.checkpoint's non-reentrant replay
    >>> functorch_transform_active()    # True inside torch.func.grad / vmap / jacrev ...
    >>> foreach_norm(grads)             # torch._foreach_norm: one kernel per (device, dtype) group
    >>> rnn_kernel(lstm)                # torch._VF.lstm: the fused kernel nn.LSTM.forward calls

The probes answer False when the torch build lacks the internal they read: gradwatch then
measures as before rather than failing. The foreach ops fall back to one op per tensor (same
values, more kernels). tests/test_torch_compat.py pins each on the installed torch. This module
imports only torch, so capture/, stats/ and actions/ all import it without an upward edge.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["in_checkpoint_recomputation", "functorch_transform_active", "jit_tracing", "compiling",
           "stop_recomputation_error", "scriptable_forward", "ADAPTER_ATTRIBUTE",
           "foreach_norm", "foreach_mul_", "foreach_clamp_", "foreach_copy_", "foreach_sub_",
           "refresh_flat_weights", "flat_weights", "rnn_kernel",
           "SCALER_ATTRIBUTES", "scaler_stage", "REPLICATE_ATTRIBUTE", "replicate_for_data_parallel",
           "parameters_in_order", "total_norm"]

ADAPTER_ATTRIBUTE = "_gradwatch_adapter"
"""Attribute of a `scriptable_forward` function that holds its adapter."""


def in_checkpoint_recomputation() -> bool:
    """True while non-reentrant activation checkpointing re-runs a forward to rebuild saved tensors.

    That forward's graph is never back-propagated (the original forward's graph is): it must run
    the same operations as the original (same saved tensors) but record nothing. torch marks it only
    by the saved-tensors hook it installs (`torch.utils.checkpoint._recomputation_hook`).
    """
    try:
        hooks = torch._C._autograd._top_saved_tensors_default_hooks(True)
    except (AttributeError, RuntimeError, TypeError):
        return False
    if not hooks:
        return False
    return "_recomputation_hook" in getattr(hooks[0], "__qualname__", "")


def functorch_transform_active() -> bool:
    """True inside a torch.func transform, whose wrapped tensors gradwatch's hooks cannot read."""
    try:
        return bool(torch._C._are_functorch_transforms_active())
    except AttributeError:
        return False


def jit_tracing() -> bool:
    """True while `torch.jit.trace` records (gradwatch's Python-side measurement cannot be traced)."""
    is_tracing: Callable[[], object] | None = getattr(torch.jit, "is_tracing", None)
    return bool(is_tracing()) if is_tracing is not None else False


def compiling() -> bool:
    """True while torch.compile/dynamo traces the forward."""
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:
        return False


def stop_recomputation_error() -> type[BaseException] | None:
    """The exception non-reentrant checkpointing raises to end a recomputation early (must propagate)."""
    from torch.utils import checkpoint

    return getattr(checkpoint, "_StopRecomputationError", None)


def scriptable_forward(adapter: Callable[..., Any], class_forward: Callable[..., Any]) -> Callable[..., Any]:
    """A function `(self, input, hx=None) -> adapter(input, hx)` that torch.jit.script takes for `class_forward`.

    `torch.jit.script` compiles a module's `forward` from source: it reads the source through
    `__wrapped__` (set by `functools.update_wrapper`), resolves the names in that source with the
    function's `__globals__`, and finds `@overload`s by `__module__`/`__qualname__`. This function
    carries the class forward's globals and metadata, so the scripted module is the unwatched
    module's (and, running outside Python, unmeasured); called from Python it runs the adapter.
    """
    def forward(self: Any, input: Any, hx: Any = None) -> Any:
        return adapter(input, hx)

    trampoline = types.FunctionType(forward.__code__, class_forward.__globals__, class_forward.__name__,
                                    forward.__defaults__, forward.__closure__)
    functools.update_wrapper(trampoline, class_forward)
    setattr(trampoline, ADAPTER_ATTRIBUTE, adapter)
    return trampoline


# -- foreach ops: torch._foreach_* (one kernel per device/dtype group instead of one per tensor) --

def foreach_norm(tensors: Sequence[Tensor], *, dtype: torch.dtype | None = None) -> Sequence[Tensor]:
    """The L2 norm of each tensor (0-d tensors), computed in `dtype` when given (no copy made)."""
    if hasattr(torch, "_foreach_norm"):
        if dtype is None:
            return torch._foreach_norm(tensors, 2.0)  # type: ignore[arg-type]
        return torch._foreach_norm(tensors, 2.0, dtype=dtype)  # type: ignore[arg-type]
    return [torch.linalg.vector_norm(t, 2.0, dtype=dtype) for t in tensors]


def foreach_mul_(tensors: Sequence[Tensor], factor: Tensor | float) -> None:
    """Multiply every tensor in place by `factor` (a Python float, or a 0-d tensor on their device)."""
    if hasattr(torch, "_foreach_mul_"):
        torch._foreach_mul_(tensors, factor)  # type: ignore[call-overload]
        return
    for t in tensors:
        t.mul_(factor)


def foreach_clamp_(tensors: Sequence[Tensor], low: float, high: float) -> None:
    """Clamp every tensor in place to [low, high] (min first, then max, as clip_grad_value_)."""
    if hasattr(torch, "_foreach_clamp_min_") and hasattr(torch, "_foreach_clamp_max_"):
        torch._foreach_clamp_min_(tensors, low)  # type: ignore[call-overload]
        torch._foreach_clamp_max_(tensors, high)  # type: ignore[call-overload]
        return
    for t in tensors:
        t.clamp_(min=low).clamp_(max=high)


def foreach_copy_(targets: Sequence[Tensor], sources: Sequence[Tensor]) -> None:
    """Copy each source into its target in place."""
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(targets, sources)  # type: ignore[arg-type]
        return
    for t, s in zip(targets, sources):
        t.copy_(s)


def foreach_sub_(targets: Sequence[Tensor], others: Sequence[Tensor]) -> None:
    """Subtract each of `others` from its target in place."""
    if hasattr(torch, "_foreach_sub_"):
        torch._foreach_sub_(targets, others)  # type: ignore[call-overload]
        return
    for t, o in zip(targets, others):
        t.sub_(o)


# -- nn.RNNBase internals: the replay runs the module's own fused kernel one layer at a time --

def refresh_flat_weights(module: nn.RNNBase) -> None:
    """Re-read the module's parameters into its weight list, as `nn.RNNBase.forward` does first."""
    update = getattr(module, "_update_flat_weights", None)
    if update is not None:
        update()


def flat_weights(module: nn.RNNBase) -> list[Tensor]:
    """The module's weights in the kernel's order: per layer and direction w_ih, w_hh[, b_ih, b_hh][, w_hr]."""
    weights = getattr(module, "_flat_weights", None)
    if weights is None:
        weights = [w for layer in module.all_weights for w in layer]
    return list(weights)


def rnn_kernel(module: nn.RNNBase) -> Callable[..., Any]:
    """The `torch._VF` kernel `module.forward` calls: lstm, gru, rnn_tanh or rnn_relu."""
    from torch import _VF

    if isinstance(module, nn.LSTM):
        return _VF.lstm
    if isinstance(module, nn.GRU):
        return _VF.gru
    if getattr(module, "nonlinearity", "tanh") == "tanh":
        return _VF.rnn_tanh
    return _VF.rnn_relu


# -- torch.amp.GradScaler internals --

SCALER_ATTRIBUTES = ("unscale_", "is_enabled", "_per_optimizer_states")
"""What gradwatch uses on a GradScaler; an object lacking one is rejected by `watch(scaler=...)`."""


def scaler_stage(scaler: Any, optimizer: torch.optim.Optimizer) -> str:
    """The scaler's stage for `optimizer` this step: "READY", "UNSCALED" or "STEPPED"."""
    state = scaler._per_optimizer_states[id(optimizer)]
    return getattr(state.get("stage"), "name", "READY")


# -- nn.Module internals --

REPLICATE_ATTRIBUTE = "_replicate_for_data_parallel"
"""The method `nn.DataParallel` (via `torch.nn.parallel.replicate`) calls to copy each module."""


def replicate_for_data_parallel(module: nn.Module) -> nn.Module:
    """The replica the class's own `_replicate_for_data_parallel` makes (ignoring an instance override)."""
    return getattr(type(module), REPLICATE_ATTRIBUTE)(module)  # type: ignore[no-any-return]


def parameters_in_order(module: nn.Module) -> list[nn.Parameter]:
    """`list(module.parameters())`; for a module without submodules (a plain RNN/LSTM/GRU: a
    parametrisation adds one) read from its `_parameters` directly, without walking."""
    own = getattr(module, "_parameters", None)
    if own is not None and not getattr(module, "_modules", True):
        return [p for p in own.values() if p is not None]
    return list(module.parameters())


# -- torch.nn.utils.get_total_norm: public since torch 2.6 --

def total_norm(grads: Sequence[Tensor]) -> Tensor | None:
    """The total L2 norm of dense `grads` as `torch.nn.utils.clip_grad_norm_` computes it, by torch's own
    `get_total_norm`; None on a torch without it (the caller takes the same steps from per-tensor
    norms: `actions.batch.GradBatch.total_norm`)."""
    public = getattr(torch.nn.utils, "get_total_norm", None)
    if public is None:
        return None
    norm: Tensor = public(list(grads))
    return norm
