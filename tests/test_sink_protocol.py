"""The `Sink` protocol (sinks/base.py): every built-in sink has its shape, and sinks get the summary, not the monitor."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.detectors import AlertSummary
from gradwatch.integrations.lightning import TrainerLoggerSink
from gradwatch.sinks.base import Sink
from gradwatch.sinks.console import RichConsoleSink
from gradwatch.sinks.jsonl import JsonlSink
from gradwatch.sinks.logging_sink import LoggingSink
from gradwatch.sinks.tensorboard import TensorBoardSink

BUILT_IN = [RichConsoleSink, LoggingSink, JsonlSink, TensorBoardSink, TrainerLoggerSink]


def _parameters(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()][1:]  # without self


@pytest.mark.parametrize("cls", BUILT_IN, ids=[c.__name__ for c in BUILT_IN])
def test_built_in_sinks_have_the_protocols_methods(cls):
    for method in ("on_step", "close"):
        assert _parameters(getattr(cls, method)) == _parameters(getattr(Sink, method)), (cls.__name__, method)


class Recorder:
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.closed_with: list[object] = []

    def on_step(self, stats, alerts) -> None:
        self.steps.append(stats.step)

    def close(self, summary) -> None:
        self.closed_with.append(summary)


def _run(steps: int, **options) -> tuple[gradwatch.Monitor, Recorder]:
    torch.manual_seed(0)
    model = nn.GRU(3, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = Recorder()
    monitor = gradwatch.watch(model, opt, console=False, sinks=[recorder], **options)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(5, 2, 3))[0].pow(2).mean()
        loss.backward()
        opt.step()
        monitor.step(loss)
    return monitor, recorder


def test_a_sink_gets_the_runs_alert_summary_on_close_once():
    monitor, recorder = _run(3)
    monitor.close()
    monitor.close()
    assert recorder.steps == [0, 1, 2]
    [summary] = recorder.closed_with
    assert isinstance(summary, AlertSummary) and summary.steps == 3
    assert summary == monitor.detectors.summary()


def test_a_failing_summary_is_reported_once_and_sinks_get_none(caplog):
    monitor, recorder = _run(1)

    def broken():
        raise RuntimeError("summary broke")

    monitor.detectors.summary = broken
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        monitor.close()
    assert recorder.closed_with == [None]
    assert any("detectors summary failed" in r.getMessage() for r in caplog.records)


def test_a_failing_summary_is_raised_under_strict():
    monitor, recorder = _run(1, strict=True)
    monitor.detectors.summary = lambda: 1 / 0
    with pytest.raises(ZeroDivisionError):
        monitor.close()
