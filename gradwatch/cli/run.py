"""`gradwatch run SCRIPT [ARGS...]`: watch an unmodified training script.

    $ gradwatch run --jsonl run.jsonl train.py --epochs 3 --lr 20

The script runs as `python SCRIPT ARGS` would run it (same `sys.argv`, `__name__ ==
"__main__"`, its own output, its exit status). Meanwhile a `ScriptWatcher` finds what to
watch through temporary, process-wide hooks that are all removed when the script ends:

* models: the outermost module of a forward call that contains a recurrent module becomes a
  watched model, attached right before that forward runs (one `Monitor` per such model);
* optimizers: every `torch.optim.Optimizer` the script creates; those holding a watched model's
  parameters end its steps through the usual `step()` hooks;
* without an optimizer (parameters updated by hand, `p.data.add_(p.grad, alpha=-lr)`), the step
  boundary comes from the backward pass: gradients are read when `backward()` returns, and the
  step ends when the next training forward of the model begins (or when the script ends);
* the loss is the tensor `backward()` was called on (summed over the backward calls of a step; with one
  backward call, that very tensor, so that a criterion's output keeps its inferred chance level);
  inside `optimizer.step(closure)` (LBFGS) only the closure's first evaluation counts: the loss at
  the parameters the step started from, the one LBFGS returns.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import logging
import os
import runpy
import sys
import textwrap
import traceback
import weakref
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ..capture.modules import RECURRENT_KINDS, find_recurrent
from ..capture.optimizer_hooks import closure_of
from ..actions import Actions, build_actions
from ..actions.spelling import parse_clip
from ..capture.stack import installed_adapter
from ..detectors.remedies import spelled_for_cli
from ..errors import GradwatchError
from ..monitor import Monitor
from ..sinks.logging_sink import plain_width
from ..stream.step_boundaries import Mode
from .arguments import chance_loss, detector_setting, positive_int

__all__ = ["add_arguments", "main", "run_script", "ScriptWatcher"]

log = logging.getLogger("gradwatch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--every", type=positive_int, default=10, metavar="N",
                        help="measure per-timestep gradient norms every N steps (default: 10)")
    parser.add_argument("--clip", default=None, metavar="POLICY",
                        help="clip gradients before each update (before optimizer.step(), or right after "
                             "backward() for updates by hand): auto, norm:MAX_NORM (or a bare number), value:V, "
                             "zclip[:Z], autoclip[:PERCENTILE], agc[:FACTOR], or NAME:KEY=VALUE,... (default: off)")
    parser.add_argument("--jsonl", default=None, metavar="PATH", help="write one JSON record per step to PATH")
    parser.add_argument("--tensorboard", default=None, metavar="DIR", help="write TensorBoard events to DIR")
    parser.add_argument("--no-live", action="store_true",
                        help="no live console: report alerts as plain log lines on stderr")
    parser.add_argument("--chance-loss", type=chance_loss, default=None, metavar="LOSS",
                        help="the loss of a model that ignores its inputs (ln K for K balanced classes with "
                             "cross-entropy, the target's variance for MSE): a run stuck there is called stuck "
                             "promptly, also after its loss fell to it (watch(..., chance_loss=LOSS))")
    parser.add_argument("--detector", type=detector_setting, action="append", default=None, metavar="KEY=VALUE",
                        help="set a detector threshold, as watch(..., KEY=VALUE) would; repeatable, e.g. "
                             "--detector cooldown=50 --detector disable=oscillation "
                             "(the options: docs/detectors.md#thresholds)")
    parser.add_argument("script", nargs="?", default=None,
                        help="the training script, run as `python SCRIPT ARGS...` would run it")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script unchanged")


def detector_options(settings: list[tuple[str, Any]] | None, chance: float | None) -> dict[str, Any]:
    """watch()'s detector keywords from `--detector KEY=VALUE` (the last one of a key wins) and `--chance-loss`."""
    options = dict(settings or [])
    if chance is not None:
        if options.get("chance_loss", chance) != chance:
            raise GradwatchError(f"--chance-loss {chance:g} and --detector chance_loss={options['chance_loss']:g} "
                                 "disagree: give the chance loss once (--chance-loss LOSS).")
        options["chance_loss"] = chance
    return options


def clip_value(text: str | None) -> Any:
    """The policy for `--clip TEXT` (`gradwatch.actions.spelling`): `1.0` or `norm:1.0`, `auto`, `zclip:3`, …"""
    return None if text is None else parse_clip(text)


def plain_output(no_live: bool) -> bool:
    """Whether alerts and the verdict go out as plain lines (`--no-live`, or stdout is no terminal:
    CI logs, `| tee`, `| cat`), as `console="auto"` decides from stdout too."""
    return no_live or not sys.stdout.isatty()


@contextlib.contextmanager
def plain_log_lines() -> Iterator[None]:
    """Meanwhile, print the `gradwatch` logger's records (INFO and up) on stderr as bare lines, once.

    Without it, logging's last-resort handler would show WARNING and up only: the info alerts
    and the closing verdict would be lost."""
    logger = logging.getLogger("gradwatch")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not twice when the script configures the root logger
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def main(args: argparse.Namespace) -> int:
    if args.script is None:
        raise GradwatchError("no training script given: gradwatch run [OPTIONS] SCRIPT [ARGS...], "
                             "e.g. gradwatch run train.py --lr 0.1")
    plain = plain_output(args.no_live)
    options = {
        "every": args.every,
        "clip": clip_value(args.clip),
        "console": "logging" if plain else "auto",
        "jsonl": args.jsonl,
        "tensorboard": args.tensorboard,
        **detector_options(args.detector, args.chance_loss),
    }
    with plain_log_lines() if plain else contextlib.nullcontext():
        return run_script(args.script, args.args, **options)


# ---------------------------------------------------------------------------------------------- watcher
@dataclass
class _Model:
    """One watched model and where its current step stands."""

    module: nn.Module
    monitor: Monitor
    forwarded: bool = False
    """A training (grad-enabled) forward ran since the step began."""
    backward_done: bool = False
    """A backward pass covering this model returned since the step began."""
    loss: Any = None
    closure_loss_taken: bool = False
    """The first closure evaluation of the `optimizer.step(closure)` running now gave the step's loss."""
    steps_seen: int = 0
    clip_by_hand: Actions | None = None
    """--clip for a model updated by hand (no optimizer): applied right after each backward()."""


def _contains_recurrent(module: nn.Module) -> bool:
    return any(isinstance(m, tuple(RECURRENT_KINDS)) for m in module.modules())


def _numbered(path: str | None, index: int, name: str, *, directory: bool) -> str | None:
    """The output path of the `index`-th watched model (0 keeps the path given)."""
    if path is None or index == 0:
        return path
    if directory:
        return os.path.join(path, name)
    stem, ext = os.path.splitext(path)
    return f"{stem}.{name}{ext or '.jsonl'}"


class ScriptWatcher:
    """Finds the models and optimizers a script creates and watches them; `install()`, then `finish()`.

        >>> watcher = ScriptWatcher({"every": 10, "console": "logging"})
        >>> watcher.install()
        >>> ...  # run the training code
        >>> watcher.finish()    # ends the last step, closes every monitor, removes every hook
    """

    def __init__(self, options: dict[str, Any], *, announce: Any = None) -> None:
        self.options = dict(options)
        self.models: list[_Model] = []
        self._by_module: dict[int, _Model] = {}
        self._declined: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
        self._optimizers: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()
        self._depth = 0
        self._closure_steps = 0
        """`optimizer.step(closure)` calls running now (LBFGS: the closure's backward calls)."""
        self._handles: list[Any] = []
        self._restore: list[tuple[Any, str, Any]] = []
        self._failed = False
        self.watched_by_script = False
        """The script called gradwatch.watch on a model itself (then left alone)."""
        self._announce = announce if announce is not None else _print_wrapped

    # ------------------------------------------------------------------ install / remove
    def install(self) -> None:
        self._handles.append(nn.modules.module.register_module_forward_pre_hook(self._forward_pre))
        self._handles.append(nn.modules.module.register_module_forward_hook(self._forward_post, always_call=True))
        self._handles.append(register_optimizer_step_pre_hook(self._optimizer_pre))
        self._handles.append(register_optimizer_step_post_hook(self._optimizer_post))
        self._patch(torch.optim.Optimizer, "__init__", self._wrap_optimizer_init)
        self._patch(torch.autograd, "backward", self._wrap_backward)

    def _patch(self, owner: Any, name: str, wrap: Any) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        self._restore.append((owner, name, original))
        setattr(owner, name, wrap(original))

    def uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()

    def finish(self, *, complete: bool = True) -> None:
        """End the step in progress of manually updated models, close every monitor, remove hooks.

        When the script was interrupted or crashed (`complete=False`), that step is ended only if
        its update was applied: a step stopped between backward() and the update is left out.
        """
        try:
            for m in self.models:
                if m.backward_done and m.monitor.step_mode is Mode.MANUAL and (complete or m.monitor.weights_changed_since_step()):
                    self._guard(self._end_manual_step, m)
        finally:
            self.uninstall()
            for m in self.models:
                m.monitor.close()
            if complete and not self.models and not self.watched_by_script and not self._failed:
                self._announce("gradwatch: nothing to watch: no training forward pass went through a module "
                               "containing nn.RNN, nn.LSTM, nn.GRU or their *Cell variants.")

    # ------------------------------------------------------------------ fault isolation
    def _guard(self, fn: Any, *args: Any) -> None:
        """The script must never fail because of gradwatch: report once, then keep quiet."""
        if self._failed:
            return
        try:
            fn(*args)
        except Exception as exc:
            if self.options.get("strict"):
                raise
            self._failed = True
            log.warning("gradwatch run: watching failed (%s: %s); the script continues unwatched.",
                        type(exc).__name__, exc)

    # ------------------------------------------------------------------ models
    def _forward_pre(self, module: nn.Module, args: Any) -> None:
        outermost = self._depth == 0
        self._depth += 1
        if outermost:
            self._guard(self._outer_forward, module)

    def _forward_post(self, module: nn.Module, args: Any, output: Any) -> None:
        self._depth = max(0, self._depth - 1)

    def _outer_forward(self, module: nn.Module) -> None:
        entry = self._by_module.get(id(module))
        if entry is None or entry.module is not module:
            if module in self._declined:
                return
            if not _contains_recurrent(module):
                self._declined.add(module)  # once: nothing to watch in it
                return
            if not (torch.is_grad_enabled() and (module.training or self._has_optimizer(module))):
                return  # evaluation (a model loaded back to test it, say): attach at a training forward only
            entry = self._attach(module)
            if entry is None:
                self._declined.add(module)
                return
        if not torch.is_grad_enabled():
            return
        if entry.backward_done and entry.monitor.step_mode is Mode.MANUAL:
            self._end_manual_step(entry)
        entry.forwarded = True

    def _has_optimizer(self, module: nn.Module) -> bool:
        return any(_holds_parameters_of(o, module) for o in list(self._optimizers))

    def _attach(self, module: nn.Module) -> _Model | None:
        if not _contains_recurrent(module):
            return None
        found = find_recurrent(module)
        watched = {id(w.module) for m in self.models for w in m.monitor.watched}
        if any(id(w.module) in watched for w in found):
            return None  # a part of, or a wrapper around, a model already watched
        if any(installed_adapter(w.module) is not None for w in found):
            self.watched_by_script = True
            return None  # the script watches this model itself with gradwatch.watch
        from ..watch import watch

        index, name = len(self.models), type(module).__name__
        options = dict(self.options)
        options["jsonl"] = _numbered(options.get("jsonl"), index, name, directory=False)
        options["tensorboard"] = _numbered(options.get("tensorboard"), index, name, directory=True)
        if index > 0 and options.get("console") in ("auto", "rich"):
            options["console"] = "logging"  # one live display at a time
        optimizers = [o for o in list(self._optimizers) if _holds_parameters_of(o, module)]
        by_hand = None
        if not optimizers and (options.get("clip") is not None or options.get("skip_nonfinite")):
            # No optimizer.step() to act before: clip right after each backward(), before the hand update.
            by_hand = build_actions(options["clip"], False) if options.get("clip") is not None else None
            options["clip"], options["skip_nonfinite"] = None, False
        monitor = watch(module, optimizers or None, **options)
        entry = _Model(module, monitor, clip_by_hand=by_hand)
        self.models.append(entry)
        self._by_module[id(module)] = entry
        layers = ", ".join(f"{w.name or name} ({type(w.module).__name__}, {w.num_layers} layer"
                           f"{'s' if w.num_layers > 1 else ''})" for w in monitor.watched)
        boundary = "optimizer.step()" if optimizers else "the next training forward after backward()"
        clipping = "; --clip acts after each backward(), before the update by hand" if by_hand is not None else ""
        self._announce(f"gradwatch: watching {name}: {layers}; a step ends at {boundary}{clipping}")
        return entry

    # ------------------------------------------------------------------ optimizers
    def _wrap_optimizer_init(self, original: Any) -> Any:
        watcher = self

        @functools.wraps(original)
        def __init__(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            original(opt, *args, **kwargs)
            watcher._guard(watcher._on_optimizer, opt)

        return __init__

    def _on_optimizer(self, opt: torch.optim.Optimizer) -> None:
        self._optimizers.add(opt)
        for m in self.models:
            if _holds_parameters_of(opt, m.module):
                m.monitor.add_optimizer(opt)

    def _optimizer_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if closure_of(args, kwargs) is not None:
            if self._closure_steps == 0:
                for m in self.models:
                    m.closure_loss_taken = False
            self._closure_steps += 1

    def _optimizer_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if closure_of(args, kwargs) is not None:
            self._closure_steps = max(0, self._closure_steps - 1)
        self._guard(self._after_optimizer_step, opt)

    def _after_optimizer_step(self, opt: torch.optim.Optimizer) -> None:
        for m in self.models:
            if m.monitor.steps > m.steps_seen:  # this step() ended the model's step
                m.steps_seen = m.monitor.steps
                m.monitor.step(m.loss)  # with or without a loss: the step's record is complete
                m.loss, m.forwarded, m.backward_done = None, False, False

    # ------------------------------------------------------------------ backward
    def _wrap_backward(self, original: Any) -> Any:
        watcher = self

        @functools.wraps(original)
        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(tensors, *args, **kwargs)
            watcher._guard(watcher._after_backward, tensors)
            return result

        return backward

    def _after_backward(self, tensors: Any) -> None:
        loss = tensors
        if isinstance(loss, (list, tuple)) and len(loss) == 1:
            loss = loss[0]
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
            loss = None
        for m in self.models:
            if not m.forwarded:
                continue
            m.backward_done = True
            # the step's only backward keeps its own tensor: the monitor recognises a criterion's output by
            # identity (its inferred chance level, `capture.criteria`); a sum over backward calls is a new tensor
            if loss is not None and self._closure_steps:
                if not m.closure_loss_taken:  # LBFGS evaluates the closure again and again
                    m.loss, m.closure_loss_taken = loss, True
            elif loss is not None:
                m.loss = loss if m.loss is None else m.loss.detach().reshape(()).float() + loss.detach().reshape(()).float()
            if m.monitor.step_mode is Mode.MANUAL:  # no optimizer: this run ends the steps
                m.monitor.before_update()  # measures the gradients as backward left them, then:
                if m.clip_by_hand is not None:
                    m.monitor.record_action(m.clip_by_hand.clip_by_hand(list(m.module.parameters())))

    def _end_manual_step(self, m: _Model) -> None:
        m.monitor.end_step(m.loss)
        m.steps_seen = m.monitor.steps
        m.loss, m.forwarded, m.backward_done = None, False, False


def _print_wrapped(text: str) -> None:
    """One message of gradwatch's own on stderr, wrapped at the terminal width like the alerts."""
    print(textwrap.fill(text, width=plain_width(), subsequent_indent="    ", break_on_hyphens=False), file=sys.stderr)


def _holds_parameters_of(opt: torch.optim.Optimizer, module: nn.Module) -> bool:
    ids = {id(p) for p in module.parameters()}
    return any(id(p) in ids for group in opt.param_groups for p in group["params"])


# ---------------------------------------------------------------------------------------------- running
def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _script_path(script: str) -> str:
    """The script's absolute path; a folder, a missing file or a command line is refused."""
    path = os.path.abspath(script)
    if os.path.isdir(path):
        raise GradwatchError(f"{script!r} is a folder, not a Python script: pass the training script's file, "
                             "e.g. gradwatch run path/to/train.py.")
    if not os.path.isfile(path):
        hint = " (gradwatch run takes a Python file, not a command line)" if " " in script.strip() else ""
        raise GradwatchError(f"no such script {script!r}{hint}; looked for {path}.")
    return path


def _print_script_traceback(exc: BaseException, path: str) -> None:
    """Print the traceback as Python would, without gradwatch's own frames on top.

    A script that does not compile has no frame of its own: Python then prints only the
    error with its file, line and caret, and so does this."""
    if isinstance(exc, SyntaxError):
        print("".join(traceback.format_exception_only(type(exc), exc)), end="", file=sys.stderr)
        return
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb if tb is not None else exc.__traceback__)


def _check_options(options: dict[str, Any]) -> None:
    """Reject bad options before the script starts, not at its first forward."""
    from ..watch import watch

    probe = dict(options, jsonl=None, tensorboard=None, console=False)
    cell = nn.RNNCell(1, 1)
    # clip= needs an optimizer to act on; building one costs seconds of imports, so only then.
    needs_optimizer = probe.get("clip") is not None or probe.get("skip_nonfinite")
    watch(cell, torch.optim.SGD(cell.parameters(), lr=0.0) if needs_optimizer else None, **probe).close()
    target = options.get("jsonl")
    if target is not None and not os.path.isdir(os.path.dirname(os.path.abspath(target))):
        raise GradwatchError(f"--jsonl {target}: its folder does not exist; create it first.")
    if options.get("tensorboard") is not None:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError as exc:
            raise GradwatchError("--tensorboard needs the tensorboard package: "
                                 "pip install 'gradwatch[tensorboard]'.") from exc


class ScriptInterrupted(KeyboardInterrupt):
    """The script ended by Ctrl-C (an uncaught KeyboardInterrupt), after gradwatch finished its
    output and printed the script's traceback. The `gradwatch` command then ends by SIGINT, as
    `python script.py` does, so that a shell loop around it stops too."""


def run_script(script: str, args: list[str], **watch_options: Any) -> int:
    """Run `script` with `args` as `python script args` would, watching it; returns its exit status.

    A script ended by Ctrl-C raises `ScriptInterrupted` (a KeyboardInterrupt) once gradwatch's
    output is complete and the script's traceback printed.
    """
    path = _script_path(script)
    _check_options(watch_options)
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [script, *args]
    if sys.path:
        sys.path[0] = os.path.dirname(path)
    else:
        sys.path.insert(0, os.path.dirname(path))
    watcher = ScriptWatcher(watch_options)
    watcher.install()
    failure: BaseException | None
    status, failure = 0, None
    try:
        with spelled_for_cli():  # remedies name --clip, not watch(clip=...)
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        status = _exit_status(exc)
    except KeyboardInterrupt as exc:
        status, failure = 130, exc  # the shell's status for a command ended by Ctrl-C
    except BaseException as exc:  # noqa: BLE001 - reported like Python does, as the script's failure
        status, failure = 1, exc
    finally:
        try:
            with spelled_for_cli():
                watcher.finish(complete=failure is None)  # also stops the live display and flushes the JSONL file
        finally:
            sys.argv = saved_argv
            if saved_path0 is not None:
                sys.path[0] = saved_path0
    if failure is not None:
        _print_script_traceback(failure, path)  # last, as Python prints it, on the restored terminal
    if isinstance(failure, KeyboardInterrupt):
        raise ScriptInterrupted(f"{script} was interrupted") from None
    return status
