"""The watched optimizers' step hooks, reporting each update once, and optimizer replacement.

    >>> hooks = OptimizerHooks(before=on_update_start, after=on_update_end)
    >>> hooks.add(optimizer)          # returns the optimizers it replaced (same parameters)
    >>> optimizer.step()              # before(optimizer, args, kwargs), update, after(optimizer): once
    >>> hooks.close()                 # removes every hook

One update, one call. torch wraps the `step` of every optimizer class that has been
instantiated, so a subclass whose `step()` calls `super().step()` runs the step hooks twice
once the parent class has been instantiated anywhere in the process. Only the outermost
`step()` call reaches `before`/`after`; nested ones are recognised by the torch step wrapper
still running further up the call stack.

Replacement: an optimizer added while another watched optimizer holds some of the same
parameters replaces that one (re-created to switch Adam -> SGD, or to include unfrozen
parameters): the old one is never stepped again, and waiting for it would end no more steps.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch

__all__ = ["OptimizerHooks", "closure_of", "shares_parameters"]

Before = Callable[[torch.optim.Optimizer, Any, Any], Any]
"""Called as torch calls a step pre-hook, `(optimizer, args, kwargs)`, and may return new `(args, kwargs)`."""
After = Callable[[torch.optim.Optimizer], None]


def closure_of(args: Any, kwargs: Any) -> Any:
    """The closure given to `optimizer.step(closure)`, or None (`args[0]` is the optimizer)."""
    return args[1] if len(args) > 1 else (kwargs or {}).get("closure")


def shares_parameters(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> bool:
    """Whether optimizers `a` and `b` hold a parameter in common."""
    ids = {id(p) for group in a.param_groups for p in group["params"]}
    return any(id(p) in ids for group in b.param_groups for p in group["params"])


def _step_wrappers_running(optimizer: torch.optim.Optimizer) -> int:
    """How many torch step wrappers are on the call stack (the hooks run inside one).

    All of torch's step wrappers share one code object (`Optimizer.profile_hook_step`'s
    inner function), so a subclass's wrapper and its parent's count alike. Walks the stack:
    called only when a step may be nested, never on an ordinary step.
    """
    wrapper = getattr(getattr(type(optimizer), "step", None), "__code__", None)
    if wrapper is None:
        return 0
    count, frame = 0, sys._getframe(1)
    while frame is not None:
        if frame.f_code is wrapper:
            count += 1
        frame = frame.f_back  # type: ignore[assignment]
    return count


class OptimizerHooks:
    """Pre/post step hooks on a set of optimizers; `before` and `after` see outermost calls only."""

    def __init__(self, *, before: Before, after: After) -> None:
        self._before, self._after = before, after
        self.optimizers: list[torch.optim.Optimizer] = []
        self._handles: dict[int, list[Any]] = {}
        self._depth = 0
        """step() calls entered and not yet left: above 1 inside a nested super().step()."""

    def add(self, optimizer: torch.optim.Optimizer, *, replace: bool = True) -> list[torch.optim.Optimizer]:
        """Hook `optimizer`; returns the watched optimizers it replaces (removed: they share parameters).

        `replace=False` keeps them all (optimizers passed together to `watch()`)."""
        if any(o is optimizer for o in self.optimizers):
            return []
        replaced = [o for o in self.optimizers if shares_parameters(o, optimizer)] if replace else []
        for old in replaced:
            self.remove(old)
        self.optimizers.append(optimizer)
        self._handles[id(optimizer)] = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]
        return replaced

    def remove(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop watching `optimizer` (no-op when it is not watched)."""
        for handle in self._handles.pop(id(optimizer), []):
            handle.remove()
        self.optimizers = [o for o in self.optimizers if o is not optimizer]

    def close(self) -> None:
        """Remove every hook."""
        for optimizer in list(self.optimizers):
            self.remove(optimizer)

    def _pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        if self._depth > 0 and _step_wrappers_running(optimizer) < 2:
            self._depth = 0  # a previous step() raised before its post-hooks: that count is stale
        self._depth += 1
        if self._depth == 1:
            return self._before(optimizer, args, kwargs)  # None, or new (args, kwargs) for step()
        return None

    def _post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._after(optimizer)
