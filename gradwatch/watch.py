"""`gradwatch.watch`: the one-line entry point.

    >>> monitor = gradwatch.watch(model, optimizer)          # or: with gradwatch.watch(...) as monitor:
    >>> for x, y in data:
    ...     loss = loss_fn(model(x), y)
    ...     optimizer.zero_grad(); loss.backward(); optimizer.step()
    ...     monitor.step(loss)
    >>> monitor.close()
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .capture.modules import unwrap_model
from .detectors import build_detectors
from .errors import GradwatchError
from .monitor import Monitor, as_optimizer_list
from .sinks.logging_sink import LoggingSink

__all__ = ["watch"]

CONSOLE_CHOICES = ("auto", "rich", "logging", True, False, None)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GradwatchError(f"gradwatch.watch({name}=...) must be a positive integer, got {value!r}.")
    return value


def _console_sinks(console: Any) -> list[Any]:
    if console is False or console is None:
        return []
    if console in CONSOLE_CHOICES:
        return [LoggingSink()]
    raise GradwatchError(
        f"gradwatch.watch(console=...) got {console!r}; supported: 'auto' (rich in a terminal, logging "
        "elsewhere), 'rich', 'logging', False (silent), or a rich.console.Console."
    )


def _actions(clip: Any, skip_nonfinite: Any) -> Any:
    if not isinstance(skip_nonfinite, bool):
        raise GradwatchError(f"gradwatch.watch(skip_nonfinite=...) must be True or False, got {skip_nonfinite!r}.")
    if clip is None and not skip_nonfinite:
        return None
    raise GradwatchError("gradwatch.watch: clip= and skip_nonfinite= are not available in this build.")


def watch(
    model: nn.Module,
    optimizer: Any = None,
    *,
    every: int = 10,
    console: Any = "auto",
    clip: Any = None,
    skip_nonfinite: bool = False,
    history: int = 1000,
    strict: bool = False,
    **detector_options: Any,
) -> Monitor:
    """Attach gradwatch to every recurrent module of `model` and return the `Monitor`.

    Args:
        model: any nn.Module containing nn.RNN/LSTM/GRU or *Cell modules (DDP/DataParallel
            and torch.compile wrappers are unwrapped; names are relative to the inner module).
        optimizer: the optimizer (or list of optimizers) whose step() ends a training step;
            None for manual updates, then `monitor.step(loss)` ends the step.
        every: run the per-timestep probe every `every` steps (1 = every step).
        console: 'auto', 'rich', 'logging', False, or a rich Console.
        clip: gradient clipping policy (None = off).
        skip_nonfinite: skip steps whose gradients contain NaN/Inf.
        history: how many recent `StepStats` stay in `monitor.history`.
        strict: re-raise gradwatch's internal errors instead of disabling the failing part.
        **detector_options: detector thresholds.
    """
    inner = unwrap_model(model)
    optimizers = as_optimizer_list(optimizer)
    every = _positive_int("every", every)
    history = _positive_int("history", history)
    sinks = _console_sinks(console)
    actions = _actions(clip, skip_nonfinite)
    detectors = build_detectors(detector_options)
    return Monitor(inner, optimizers, every=every, history=history, strict=bool(strict),
                   detectors=detectors, sinks=sinks, actions=actions)
