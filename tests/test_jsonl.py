"""The JSONL stream: one strict-JSON record per step, versioned, flushed, alerts included."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import Alert, GradwatchError
from gradwatch.sinks.jsonl import SCHEMA_VERSION, JsonlSink, step_record
from models import SeqClassifier, lm_batch


def strict_lines(path):
    """Parse every line, refusing the non-standard NaN/Infinity tokens."""

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    with open(path) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def train_lm(monitor_options, steps=4):
    model = SeqClassifier(nn.LSTM, layers=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradwatch.watch(model, opt, console=False, strict=True, **monitor_options)
    for _ in range(steps):
        x, y = lm_batch()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step()
        monitor.step(loss)
    return monitor


def test_one_record_per_step_equal_to_the_monitor_history(tmp_path):
    path = tmp_path / "run.jsonl"
    monitor = train_lm({"jsonl": str(path), "every": 2}, steps=5)
    monitor.close()
    lines = strict_lines(path)
    assert [r["type"] for r in lines] == ["run"] + ["step"] * 5 + ["end"]
    assert all(r["schema"] == SCHEMA_VERSION for r in lines)
    assert lines[0]["every"] == 2 and lines[0]["gradwatch"] == gradwatch.__version__
    assert lines[-1] == {"schema": SCHEMA_VERSION, "type": "end", "steps": 5, "alerts": len(monitor.alerts)}
    for record, stats in zip(lines[1:-1], monitor.history):
        expected = json.loads(json.dumps(stats.to_dict()))  # what the record must hold, field by field
        got = {k: v for k, v in record.items() if k not in ("schema", "type", "alerts")}
        assert got == expected
        assert record["alerts"] == [a.to_dict() for a in monitor.alerts if a.step == stats.step]


def test_each_step_is_on_disk_before_the_monitor_closes(tmp_path):
    path = tmp_path / "run.jsonl"
    monitor = train_lm({"jsonl": str(path)}, steps=3)
    monitor.flush()
    assert [r["type"] for r in strict_lines(path)] == ["run", "step", "step", "step"]
    monitor.close()


def test_a_crashed_run_keeps_every_step_it_measured(tmp_path):
    path = tmp_path / "crash.jsonl"
    script = textwrap.dedent(f"""
        import os, torch, gradwatch
        from torch import nn
        rnn = nn.GRU(2, 3)
        opt = torch.optim.SGD(rnn.parameters(), lr=0.1)
        monitor = gradwatch.watch(rnn, opt, console=False, jsonl={str(path)!r})
        for _ in range(4):
            loss = rnn(torch.randn(5, 1, 2))[0].sum()
            opt.zero_grad(); loss.backward(); opt.step(); monitor.step(loss)
        monitor.flush()
        os._exit(3)  # no close(), no interpreter shutdown: as in a hard crash
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    lines = strict_lines(path)
    assert [r["type"] for r in lines] == ["run"] + ["step"] * 4


def _stats(grad_norm, update_ratio, loss):
    from gradwatch import LayerStats, StepStats

    layer = LayerStats("rnn", 0, "LSTM", grad_norm, 1.0, 0.1, update_ratio, timestep_grad_norms=[1.0, math.nan])
    return StepStats(step=7, loss=loss, grad_norm=grad_norm, layers={("rnn", 0): layer}, probed=True)


@pytest.mark.parametrize(
    "value,written", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")], ids=["nan", "inf", "-inf"]
)
def test_non_finite_numbers_become_strings_that_float_reads_back(tmp_path, value, written):
    path = tmp_path / "nf.jsonl"
    sink = JsonlSink(path)
    sink.on_step(_stats(value, value, value), [])
    sink.close(None)
    record = strict_lines(path)[1]
    assert record["grad_norm"] == record["loss"] == record["layers"]["rnn:0"]["update_ratio"] == written
    assert record["layers"]["rnn:0"]["timestep_grad_norms"] == [1.0, "nan"]
    assert repr(float(written)) == repr(value)


def test_alerts_are_written_with_the_step_that_raised_them(tmp_path):
    path = tmp_path / "alerts.jsonl"
    alert = Alert("exploding", "norm_spike", "critical", 7, "rnn", 0, None, 120.0, 10.0, "clip the gradient norm")
    sink = JsonlSink(path)
    sink.on_step(_stats(1.0, 0.1, 0.5), [alert])
    sink.close(None)
    record = strict_lines(path)[1]
    assert record["alerts"] == [alert.to_dict()]
    assert record == step_record(_stats(1.0, 0.1, 0.5), [alert])
    assert strict_lines(path)[-1]["alerts"] == 1


def test_unwritable_path_is_an_actionable_error(tmp_path):
    with pytest.raises(GradwatchError, match="existing, writable directory"):
        JsonlSink(tmp_path / "no" / "such" / "dir" / "run.jsonl")


def test_the_inferred_chance_level_is_written_and_read_back(tmp_path):
    # issue #13: `StepStats.chance_loss`, inferred from the cross-entropy targets, is one more field of each step
    path = tmp_path / "run.jsonl"
    monitor = train_lm({"jsonl": str(path)}, steps=30)
    monitor.close()
    steps = [r for r in strict_lines(path) if r["type"] == "step"]
    assert [r["chance_loss"] for r in steps] == [s.chance_loss for s in monitor.history]
    assert steps[-1]["chance_loss"] is not None and 2.0 < steps[-1]["chance_loss"] < math.log(20) + 0.1
