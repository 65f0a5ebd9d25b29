"""gradwatch never opens a network connection, never unpickles (`plot` reads JSON only), and
`gradwatch run` executes only the script it was given, with its arguments unchanged.

Two independent guards: monkeypatched entry points that raise (pickle, torch.load, numpy.load,
socket), and a Python audit hook (PEP 578) that records the events behind them even when code
holds its own reference to the function (`pickle.find_class`, `socket.connect`, `subprocess.Popen`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import GradwatchError
from gradwatch.cli import main
from extras import needs_matplotlib
from models import SeqClassifier, lm_batch

NETWORK = ("socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
           "http.client.connect", "urllib.Request")
UNPICKLE = ("pickle.find_class",)
SPAWN = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty")

_recording: list[str] | None = None
"""Audit events seen while a test records (None: not recording). The hook stays for the process."""
_hook_installed = False


def _audit(event, args):
    if _recording is not None and event in NETWORK + UNPICKLE + SPAWN:
        _recording.append(event)


@pytest.fixture
def audit():
    global _recording, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)  # cannot be removed: it only records while `_recording` is a list
        _hook_installed = True
    _recording = []
    try:
        yield _recording
    finally:
        _recording = None


class Refused(AssertionError):
    pass


def _refuse(what):
    def refuse(*args, **kwargs):
        raise Refused(f"gradwatch called {what}")

    return refuse


@pytest.fixture
def no_unpickling(monkeypatch):
    for owner, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                        (np, "load")]:
        monkeypatch.setattr(owner, name, _refuse(f"{owner.__name__}.{name}"))


@pytest.fixture
def no_network(monkeypatch):
    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise Refused("gradwatch created a socket")

    monkeypatch.setattr(socket, "socket", NoSocket)
    for name in ("create_connection", "create_server", "socketpair", "getaddrinfo"):
        monkeypatch.setattr(socket, name, _refuse(f"socket.{name}"))


@pytest.fixture
def recorded_jsonl(tmp_path):
    path = tmp_path / "run.jsonl"
    model = SeqClassifier(nn.GRU, layers=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, opt, every=2, console=False, strict=True, jsonl=str(path)) as monitor:
        for _ in range(4):
            x, y = lm_batch()
            loss = nn.functional.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1))
            opt.zero_grad(); loss.backward(); opt.step(); monitor.step(loss)
    return path


def _payload(marker):
    """A protocol-0 pickle (plain ASCII) that creates `marker` when unpickled."""
    data = pickle.dumps(_Opens(str(marker)), protocol=0).decode("ascii")
    assert "open" in data
    return data


class _Opens:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


# ---------------------------------------------------------------------------------------------- plot
@needs_matplotlib
def test_plot_reads_json_only(recorded_jsonl, tmp_path, no_unpickling, no_network, audit, capsys):
    assert main(["plot", str(recorded_jsonl), "-o", str(tmp_path / "report.png")]) == 0
    assert (tmp_path / "report.png").stat().st_size > 0
    assert audit == []


@needs_matplotlib
@pytest.mark.parametrize("where", ["extra-field", "alert-text", "module-name"])
def test_plot_treats_a_pickled_payload_in_a_record_as_text(recorded_jsonl, tmp_path, where, no_unpickling, audit):
    marker = tmp_path / "unpickled"
    payload = _payload(marker)
    lines = [json.loads(line) for line in recorded_jsonl.read_text().splitlines()]
    step = lines[1]
    if where == "extra-field":
        step["payload"] = payload
        lines[0]["argv"] = [payload]
    elif where == "alert-text":
        step["alerts"] = [{"step": step["step"], "severity": "warning", "problem": "exploding",
                           "sign": payload, "message": payload, "module": payload, "layer": 0}]
    else:
        step["layers"] = {f"{payload}:0": dict(next(iter(step["layers"].values())), module=payload)}
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["plot", str(hostile), "-o", str(tmp_path / "report.png")]) == 0
    assert not marker.exists()
    assert audit == []


def _hostile_file(path, kind, marker):
    if kind == "pickle-protocol-0":
        path.write_text(_payload(marker) + "\n")
    elif kind == "pickle-protocol-5":
        path.write_bytes(pickle.dumps(_Opens(str(marker)), protocol=5))
    elif kind == "torch-save":
        torch.save({"x": torch.ones(2), "hook": _Opens(str(marker))}, path)
    elif kind == "deep-nesting":
        path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    elif kind == "mathtext-names":
        layer = {"module": "$\\frac{$", "layer": 0, "grad_norm": 1.0, "timestep_grad_norms": [1.0, 2.0]}
        path.write_text(json.dumps({"schema": 1, "type": "step", "step": 0, "grad_norm": 1.0, "loss": 1.0,
                                    "layers": {"$\\frac{$:0": layer}}) + "\n")


HOSTILE = ["pickle-protocol-0", "pickle-protocol-5", "torch-save", "deep-nesting", "mathtext-names"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_plot_never_loads_a_hostile_file(tmp_path, kind, no_unpickling, no_network, audit, capsys):
    marker = tmp_path / "unpickled"
    hostile = tmp_path / "run.jsonl"
    _hostile_file(hostile, kind, marker)
    # Whatever plot makes of the file (see the next test), it never hands it to an unpickler:
    # the guards raise `Refused`, an AssertionError, which is not suppressed here.
    with contextlib.suppress(GradwatchError, UnicodeDecodeError, RecursionError, ValueError):
        main(["plot", str(hostile), "-o", str(tmp_path / "report.png")])
    assert not marker.exists()
    assert audit == []


@pytest.mark.parametrize("kind,status", [
    ("pickle-protocol-0", 2),
    ("pickle-protocol-5", 2),
    ("torch-save", 2),
    ("deep-nesting", 2),
    pytest.param("mathtext-names", 0, marks=needs_matplotlib),
], ids=HOSTILE)
def test_plot_answers_a_hostile_file_with_one_clear_error(tmp_path, kind, status, capsys):
    hostile = tmp_path / "run.jsonl"
    _hostile_file(hostile, kind, tmp_path / "unpickled")
    assert main(["plot", str(hostile), "-o", str(tmp_path / "report.png")]) == status
    if status:
        assert f"{hostile}" in capsys.readouterr().err
        assert not (tmp_path / "report.png").exists()


# ---------------------------------------------------------------------------------------------- network
def test_demo_run_and_plot_open_no_socket(tmp_path, no_network, audit, capsys):
    jsonl = tmp_path / "demo.jsonl"
    assert main(["demo", "--scenario", "healthy", "--steps", "3", "--no-live", "--jsonl", str(jsonl)]) == 0
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        rnn = nn.LSTM(2, 3)
        opt = torch.optim.Adam(rnn.parameters())
        for _ in range(3):
            opt.zero_grad(); rnn(torch.randn(4, 1, 2))[0].sum().backward(); opt.step()
    """))
    assert main(["run", "--no-live", "--clip", "auto", "--jsonl", str(tmp_path / "run.jsonl"), str(script)]) == 0
    assert audit == []
    pytest.importorskip("matplotlib")
    assert main(["plot", str(jsonl), "-o", str(tmp_path / "demo.png")]) == 0
    assert audit == []


# ---------------------------------------------------------------------------------------------- run
WEIRD_DIR = "a b;touch PWNED_DIR&&$(touch PWNED_SUB)`touch PWNED_TICK`|'\"*?"
WEIRD_ARGS = ["$(touch PWNED_ARG)", "; touch PWNED_SEMI", "*", "~", "", "two words", "--every", "0", "--jsonl",
              "/nonexistent/x.jsonl", "-c", "import os", "--", "héllo\tworld\n", "'\""]
"""Shell syntax, globs, gradwatch's own options and `--`: all must reach the script unchanged."""

ECHO = """
import json, sys, torch
from torch import nn
rnn = nn.GRU(2, 3)
opt = torch.optim.SGD(rnn.parameters(), lr=0.1)
opt.zero_grad(); rnn(torch.randn(4, 1, 2))[0].sum().backward(); opt.step()
with open({out!r}, "w") as f:
    json.dump({{"argv": sys.argv, "file": __file__, "name": __name__}}, f)
"""


def _weird_script(tmp_path):
    folder = tmp_path / WEIRD_DIR
    folder.mkdir()
    out = tmp_path / "seen.json"
    script = folder / "train; touch PWNED_NAME.py"
    script.write_text(ECHO.format(out=str(out)))
    # decoys next to the script: none of them may run
    for decoy in ("__main__.py", "evil.py", "sitecustomize.py", "usercustomize.py", "train.py"):
        (folder / decoy).write_text(f"open({str(tmp_path / ('RAN_' + decoy))!r}, 'w').close()\n")
    return script, out


def _nothing_else_ran(tmp_path):
    leftovers = sorted(p.name for p in tmp_path.rglob("*") if p.name.startswith(("PWNED", "RAN_")))
    assert leftovers == []


def test_run_executes_only_the_given_script_with_verbatim_arguments(tmp_path, monkeypatch, audit, capsys):
    script, out = _weird_script(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--no-live", str(script), *WEIRD_ARGS]) == 0
    seen = json.loads(out.read_text())
    assert seen == {"argv": [str(script), *WEIRD_ARGS], "file": str(script), "name": "__main__"}
    _nothing_else_ran(tmp_path)
    assert [e for e in audit if e in SPAWN] == []  # no shell, no child process


def test_python_dash_m_gradwatch_run_with_shell_syntax_in_the_path(tmp_path):
    script, out = _weird_script(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "gradwatch", "run", "--no-live", str(script), *WEIRD_ARGS],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(out.read_text())
    assert seen["argv"] == [str(script), *WEIRD_ARGS] and seen["file"] == str(script)
    _nothing_else_ran(tmp_path)


@pytest.mark.parametrize("target", ["folder", "missing", "shell-command"])
def test_run_refuses_what_is_not_a_script_file(tmp_path, target, monkeypatch, audit, capsys):
    """A folder would run its __main__.py and a command line would need a shell: both are refused."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "__main__.py").write_text(f"open({str(tmp_path / 'RAN_main')!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    arg = {"folder": str(folder), "missing": str(tmp_path / "nope.py"),
           "shell-command": f"touch {tmp_path / 'PWNED_CMD'}"}[target]
    assert main(["run", arg]) == 2
    expected = {"folder": "is a folder, not a Python script", "missing": "no such script",
                "shell-command": "not a command line"}[target]
    assert expected in capsys.readouterr().err
    _nothing_else_ran(tmp_path)
    assert [e for e in audit if e in SPAWN] == []

