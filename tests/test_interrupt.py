"""A run that stops midway (Ctrl-C, a crash) or whose disk fills up: the JSONL stream keeps every
finished step, the terminal is restored, training is never stopped by gradwatch."""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import pty
import signal
import subprocess
import sys
import textwrap
import threading
import weakref

import pytest
import torch
from rich.console import Console
from torch import nn

import gradwatch
from gradwatch.sinks.console import RichConsoleSink

HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
STEPS_BEFORE = 3
"""Optimizer steps that finish before the interrupt."""


def strict_lines(path):
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text.endswith("\n"), "last line is cut off"
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def _refresh_threads_left():
    """rich's refresh threads still running a moment after their Live stopped (stop() does not join)."""
    threads = [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]
    for t in threads:
        t.join(timeout=2)
    return [t for t in threads if t.is_alive()]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _arm(where, model):
    """Hooks that raise KeyboardInterrupt at step STEPS_BEFORE; returns the state whose "step" the loop sets."""
    state = {"step": 0}

    def hook(*args):
        if state["step"] == STEPS_BEFORE:
            raise KeyboardInterrupt

    if where == "in-forward":  # inside the watched module's call, right after gradwatch's adapter ran
        model.rnn.register_forward_hook(hook)
    elif where == "in-backward":  # inside autograd, with gradwatch's probes on the graph
        model.rnn.register_full_backward_hook(hook)
    return state


def _train_until_interrupted(model, opt, monitor, where):
    state = _arm(where, model)
    for step in range(STEPS_BEFORE + 5):
        state["step"] = step
        x, y = torch.randint(0, 20, (6, 2)), torch.randint(0, 20, (6, 2))
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if where == "before-optimizer-step" and step == STEPS_BEFORE:
            raise KeyboardInterrupt
        opt.step()
        if where == "before-monitor-step" and step == STEPS_BEFORE - 1:
            raise KeyboardInterrupt  # step() never gets this step's loss
        monitor.step(loss)
        if where == "between-steps" and step == STEPS_BEFORE - 1:
            raise KeyboardInterrupt


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 4)
        self.rnn = nn.LSTM(4, 5, num_layers=2)
        self.head = nn.Linear(5, 20)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0])


WHERE = ["between-steps", "before-monitor-step", "before-optimizer-step", "in-forward", "in-backward"]


@pytest.mark.parametrize("every", [1, 2], ids=["probe-every-step", "every-2"])
@pytest.mark.parametrize("where", WHERE)
def test_interrupted_with_block_keeps_every_finished_step_and_restores_the_terminal(tmp_path, where, every):
    path = tmp_path / "run.jsonl"
    out = io.StringIO()
    con = Console(file=out, width=120, force_terminal=True, color_system="standard")
    stdout, stderr, excepthook = sys.stdout, sys.stderr, sys.excepthook
    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyboardInterrupt):
        with gradwatch.watch(model, opt, every=every, jsonl=path, console=con) as monitor:
            sink = next(s for s in monitor._sinks if isinstance(s, RichConsoleSink))
            _train_until_interrupted(model, opt, monitor, where)
    lines = strict_lines(path)
    assert [r["type"] for r in lines] == ["run"] + ["step"] * STEPS_BEFORE + ["end"]
    steps = lines[1:-1]
    assert [r["step"] for r in steps] == list(range(STEPS_BEFORE))
    assert lines[-1]["steps"] == STEPS_BEFORE
    assert [r["grad_norm"] for r in steps] == [s.grad_norm for s in monitor.history]
    assert all(r["loss"] is not None for r in steps[:-1])  # the last one lacks it only when step() never ran
    assert monitor.steps == STEPS_BEFORE
    # the live display is gone: thread stopped, streams and cursor restored, hooks removed
    assert sink._live is None
    assert not _refresh_threads_left()
    assert sys.stdout is stdout and sys.stderr is stderr
    assert sys.excepthook is excepthook
    text = out.getvalue()
    assert HIDE_CURSOR in text and text.rfind(SHOW_CURSOR) > text.rfind(HIDE_CURSOR)
    assert "forward" not in model.rnn.__dict__
    assert con._live_stack == []
    # nothing process-wide (atexit, excepthook) still holds the closed sink
    ref = weakref.ref(sink)
    del sink, monitor
    gc.collect()
    assert ref() is None


def test_interrupt_while_the_live_panel_is_drawn_still_restores_the_terminal(tmp_path, monkeypatch):
    """Ctrl-C arriving while close() stops the display (a second Ctrl-C): cursor and streams still come back."""
    out = io.StringIO()
    con = Console(file=out, width=120, force_terminal=True, color_system="standard")
    stdout, stderr = sys.stdout, sys.stderr
    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradwatch.watch(model, opt, every=1, jsonl=tmp_path / "run.jsonl", console=con)
    _train_until_interrupted(model, opt, monitor, "none")
    sink = next(s for s in monitor._sinks if isinstance(s, RichConsoleSink))
    monkeypatch.setattr(sink, "_render", _interrupt)  # the final refresh in Live.stop() is interrupted
    with pytest.raises(KeyboardInterrupt):
        monitor.close()
    text = out.getvalue()
    assert sys.stdout is stdout and sys.stderr is stderr
    assert text.rfind(SHOW_CURSOR) > text.rfind(HIDE_CURSOR)
    assert not _refresh_threads_left()
    assert [r["type"] for r in strict_lines(tmp_path / "run.jsonl")][-1] == "step"


SCRIPT = """
import os, signal, sys, torch
from torch import nn
torch.set_num_threads(1)
rnn = nn.GRU(2, 3, num_layers=2)
manual = sys.argv[2] == "manual"
opt = None if manual else torch.optim.SGD(rnn.parameters(), lr=0.1)
for step in range(100):
    loss = rnn(torch.randn(5, 1, 2))[0].pow(2).mean()
    if manual:
        rnn.zero_grad()
    else:
        opt.zero_grad()
    loss.backward()
    if step == {steps}:
        if sys.argv[1] == "sigint":
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C in the terminal does
        raise KeyboardInterrupt
    if manual:
        with torch.no_grad():
            for p in rnn.parameters():
                p.add_(p.grad, alpha=-0.1)
    else:
        opt.step()
print("not reached")
"""


def _interrupted_run_command(tmp_path, how, update):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT.format(steps=STEPS_BEFORE)))
    jsonl = tmp_path / "run.jsonl"
    return [sys.executable, "-m", "gradwatch", "run", "--every", "2", "--jsonl", str(jsonl), str(script), how, update], jsonl


ENV = dict(os.environ, OMP_NUM_THREADS="1", TERM="xterm", COLUMNS="120")


def _check_finished_steps(jsonl):
    lines = strict_lines(jsonl)
    assert [r["type"] for r in lines] == ["run"] + ["step"] * STEPS_BEFORE + ["end"]
    assert [r["step"] for r in lines[1:-1]] == list(range(STEPS_BEFORE))
    assert all(layer["update_norm"] > 0 for r in lines[1:-1] for layer in r["layers"].values())


def test_gradwatch_run_of_an_interrupted_script_with_manual_updates(tmp_path):
    """Interrupted after backward(), before the hand-written update: the unfinished step is left out."""
    command, jsonl = _interrupted_run_command(tmp_path, "raise", "manual")
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == -signal.SIGINT, proc.stderr  # ended by SIGINT, as `python train.py` would: shell loops stop
    assert "not reached" not in proc.stdout
    assert proc.stderr.rstrip().endswith("KeyboardInterrupt"), proc.stderr  # the traceback comes last
    assert "runpy" not in proc.stderr
    _check_finished_steps(jsonl)


def test_gradwatch_run_in_a_terminal_restores_it_after_ctrl_c(tmp_path):
    """With a real terminal (a pty) the live panel runs; after Ctrl-C the cursor is shown again
    and the traceback is printed after the panel is gone."""
    command, jsonl = _interrupted_run_command(tmp_path, "sigint", "optimizer")
    proc, text = _in_terminal(command)
    assert proc.returncode == -signal.SIGINT, text
    assert HIDE_CURSOR in text, "the live panel did not start"
    assert text.rfind(SHOW_CURSOR) > text.rfind(HIDE_CURSOR)
    assert text.rfind("gradwatch · step") < text.find("Traceback") < text.rfind("KeyboardInterrupt")
    assert text.rstrip().endswith("KeyboardInterrupt") and "runpy" not in text
    _check_finished_steps(jsonl)


UNCLOSED = """
import torch, gradwatch
from torch import nn
torch.set_num_threads(1)
rnn = nn.GRU(2, 3)
opt = torch.optim.SGD(rnn.parameters(), lr=0.1)
monitor = gradwatch.watch(rnn, opt, every=1, jsonl={jsonl!r})  # never closed
for step in range(100):
    loss = rnn(torch.randn(5, 1, 2))[0].pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step(); monitor.step(loss)
    if step == {last}:
        {end}
"""


@pytest.mark.parametrize("end", ["raise KeyboardInterrupt", "raise SystemExit(4)"], ids=["ctrl-c", "sys-exit"])
def test_a_monitor_never_closed_still_gives_the_terminal_back(tmp_path, end):
    """The documented `monitor = gradwatch.watch(...)` form without close(): an uncaught Ctrl-C prints
    its traceback below the panel, not into it, and the cursor is shown again."""
    script = tmp_path / "train.py"
    jsonl = tmp_path / "run.jsonl"
    script.write_text(textwrap.dedent(UNCLOSED.format(jsonl=str(jsonl), last=STEPS_BEFORE - 1, end=end)))
    proc, text = _in_terminal([sys.executable, str(script)])
    assert proc.returncode == (4 if "SystemExit" in end else -2), text
    assert HIDE_CURSOR in text and text.rfind(SHOW_CURSOR) > text.rfind(HIDE_CURSOR)
    if "KeyboardInterrupt" in end:
        assert text.rfind("gradwatch · step") < text.find("Traceback") < text.rfind("KeyboardInterrupt")
        assert text.count("Traceback") == 1
    lines = strict_lines(jsonl)  # every step is on disk; only the closing line is missing
    assert [r["type"] for r in lines] == ["run"] + ["step"] * STEPS_BEFORE


def _in_terminal(command):
    """Run `command` with a pseudo-terminal as stdin/stdout/stderr; returns (process, everything it printed)."""
    master, slave = pty.openpty()
    chunks = []
    reader = threading.Thread(target=_drain_pty, args=(master, chunks), daemon=True)
    reader.start()
    try:
        proc = subprocess.run(command, stdin=slave, stdout=slave, stderr=slave, env=ENV, timeout=120)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return proc, b"".join(chunks).decode("utf-8", "replace")


def _drain_pty(fd, chunks):
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO once every writer closed the terminal
            return
        if not data:
            return
        chunks.append(data)


# ---------------------------------------------------------------------------------------------- full disk
needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


@needs_dev_full
def test_a_full_disk_when_watching_starts_is_one_clear_error():
    with pytest.raises(gradwatch.GradwatchError, match="No space left on device"):
        gradwatch.watch(Model(), console=False, jsonl="/dev/full")


@needs_dev_full
def test_a_disk_that_fills_up_stops_only_the_jsonl_stream(tmp_path, caplog):
    from gradwatch.sinks.jsonl import JsonlSink

    path = tmp_path / "run.jsonl"
    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradwatch.watch(model, opt, every=1, console=False, jsonl=path)
    sink = next(s for s in monitor._sinks if isinstance(s, JsonlSink))
    state = _arm("none", model)
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        for step in range(6):
            state["step"] = step
            if step == STEPS_BEFORE:
                monitor.flush()  # every step so far is on disk
                sink._file.close()
                sink._file = full = open("/dev/full", "w", encoding="utf-8")  # from here on, writes fail
            x, y = torch.randint(0, 20, (6, 2)), torch.randint(0, 20, (6, 2))
            loss = nn.functional.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1))
            opt.zero_grad(); loss.backward(); opt.step(); monitor.step(loss)
        monitor.close()
    assert monitor.steps == 6 and len(monitor.history) == 6  # training and the other parts went on
    assert full.closed  # closed at the failure, not left to fail again when collected
    warnings = [r.getMessage() for r in caplog.records if "No space left" in r.getMessage()]
    assert len(warnings) == 1 and "JsonlSink" in warnings[0]
    assert [r["type"] for r in strict_lines(path)] == ["run"] + ["step"] * STEPS_BEFORE
