"""`gradwatch.watch`: the one-line entry point.

    >>> monitor = gradwatch.watch(model, optimizer)          # or: with gradwatch.watch(...) as monitor:
    >>> for x, y in data:
    ...     loss = loss_fn(model(x), y)
    ...     optimizer.zero_grad(); loss.backward(); optimizer.step()
    ...     monitor.step(loss)
    >>> monitor.close()
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import torch
from rich.console import Console
from torch import nn

from . import distributed
from .actions import Actions, build_actions
from .capture.modules import unwrap_model
from .detectors import build_detectors
from .errors import GradwatchError
from .monitor import Monitor, as_optimizer_list
from .sinks.base import Sink
from .sinks.console import RichConsoleSink
from .sinks.logging_sink import LoggingSink

__all__ = ["watch"]

CONSOLE_CHOICES = ("auto", "rich", "logging", True, False, None)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GradwatchError(f"gradwatch.watch({name}=...) must be a positive integer, got {value!r}.")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise GradwatchError(f"gradwatch.watch({name}=...) must be True or False, got {value!r}.")
    return value


def _console_sinks(console: Any) -> list[Sink]:
    if console is False or console is None:
        return []
    if isinstance(console, Console):
        return [RichConsoleSink(console)]
    if console == "rich" or (console in ("auto", True) and _stdout_is_tty()):
        return [RichConsoleSink()]
    if console in CONSOLE_CHOICES:
        return [LoggingSink()]
    raise GradwatchError(
        f"gradwatch.watch(console=...) got {console!r}; supported: 'auto' (rich in a terminal, logging "
        "elsewhere), 'rich', 'logging', False (silent), or a rich.console.Console."
    )


def _stdout_is_tty() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def _actions(clip: Any, skip_nonfinite: Any, scaler: Any, optimizers: list[torch.optim.Optimizer]) -> Actions | None:
    # Validates clip (None, a positive number, "auto", a policy object) and skip_nonfinite/scaler.
    return build_actions(clip, skip_nonfinite, scaler, optimizers=optimizers)


def _export_sinks(jsonl: Any, tensorboard: Any, every: int) -> list[Sink]:
    out: list[Sink] = []
    if jsonl is not None:
        from .sinks.jsonl import JsonlSink

        out.append(JsonlSink(jsonl, meta={"every": every}))
    if tensorboard is not None:
        from .sinks.tensorboard import TensorBoardSink

        out.append(TensorBoardSink(tensorboard))
    return out


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
    scaler: Any = None,
    jsonl: Any = None,
    tensorboard: Any = None,
    sinks: Sequence[Sink] = (),
    external_steps: bool = False,
    infer_chance: bool = True,
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
        clip: gradient clipping, applied just before optimizer.step(): None (off), a positive number
            (max total L2 norm, exactly `clip_grad_norm_`), "auto" (no tuning, see
            `gradwatch.actions.auto`), or a policy from `gradwatch.actions` (Norm, Value, AutoClip,
            ZClip, AGC, Auto).
        skip_nonfinite: skip (leave parameters and optimizer state untouched) every step whose
            gradients contain NaN/Inf; costs one host-device sync per step (`gradwatch.actions.guard`).
        history: how many recent `StepStats` stay in `monitor.history`.
        strict: re-raise gradwatch's internal errors instead of disabling the failing part.
        scaler: the `torch.amp.GradScaler` of a mixed-precision loop, so that gradients are measured
            and clipped unscaled (order of calls: `gradwatch.actions.amp`).
        jsonl: path of a JSON Lines file receiving one record per step (see `sinks.jsonl`).
        tensorboard: a TensorBoard log directory, or a `SummaryWriter` (needs `tensorboard`).
        sinks: extra sinks (`gradwatch.sinks.base.Sink`): objects with `on_step(stats, alerts)` and
            `close(summary)`.
        external_steps: for drivers such as the Lightning callback: the caller ends each step with
            `monitor.before_update()` (after backward, before the update) and `monitor.end_step(loss)`;
            the optimizers' step hooks then end nothing (fixed for the monitor's life; see
            `gradwatch.stream.step_boundaries`).
        infer_chance: infer the chance-level loss from the targets of `F.cross_entropy`, `F.nll_loss`,
            `F.mse_loss` and `F.binary_cross_entropy_with_logits` calls (and the `nn` losses that call them) while the monitor is attached, for
            steps whose fed loss is such a call's output (`StepStats.chance_loss`; see
            `gradwatch.capture.criteria`); a `chance_loss=` given always wins. False: no wrapping.
        **detector_options: detector thresholds.
    """
    inner = unwrap_model(model)
    optimizers = as_optimizer_list(optimizer)
    every = _positive_int("every", every)
    history = _positive_int("history", history)
    all_sinks = _console_sinks(console)
    actions = _actions(clip, skip_nonfinite, scaler, optimizers)
    detectors = build_detectors(detector_options)
    if distributed.is_main_process():
        all_sinks += _export_sinks(jsonl, tensorboard, every)
    else:
        all_sinks = []  # one copy of the output: rank 0 prints and writes files
    all_sinks += list(sinks)
    reducer = distributed.reducer_for_current_group()
    return Monitor(inner, optimizers, every=every, history=history, strict=bool(strict),
                   detectors=detectors, sinks=all_sinks, actions=actions, reducer=reducer,
                   external_steps=_flag("external_steps", external_steps),
                   infer_chance=_flag("infer_chance", infer_chance))
