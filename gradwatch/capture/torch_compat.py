"""The torch internals the forward adapters depend on, in one place, each with a safe fallback.

    >>> in_checkpoint_recomputation()   # True inside torch.utils.checkpoint's non-reentrant replay
    >>> functorch_transform_active()    # True inside torch.func.grad / vmap / jacrev ...
    >>> jit_tracing()                   # True while torch.jit.trace records a graph

Each answers False when the torch build lacks the internal it reads: gradwatch then measures
as before rather than failing (tests/test_torch_compat.py pins each on the installed torch).
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable

import torch

__all__ = ["in_checkpoint_recomputation", "functorch_transform_active", "jit_tracing", "compiling",
           "scriptable_forward", "ADAPTER_ATTRIBUTE"]

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
    try:
        return bool(torch.jit.is_tracing())
    except AttributeError:
        return False


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
