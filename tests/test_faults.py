"""An internal failure in gradwatch never stops training; hostile values are reported, not fatal."""

from __future__ import annotations

import logging
import math
import socket

import pytest
import torch
from torch import nn

import gradwatch
from models import SeqClassifier, lm_batch


class BrokenSink:
    def __init__(self):
        self.calls = 0

    def on_step(self, stats, alerts):
        self.calls += 1
        raise OSError("No space left on device")

    def close(self, summary):
        raise RuntimeError("close failed too")


class CountingSink:
    def __init__(self):
        self.steps = []

    def on_step(self, stats, alerts):
        self.steps.append(stats.step)

    def close(self, summary):
        pass


class BrokenDetectors:
    def update(self, stats):
        raise ZeroDivisionError("detector bug")


def _train(m, opt, mon, steps=4):
    losses = []
    for _ in range(steps):
        x, y = lm_batch()
        out = m(x)
        loss = nn.functional.cross_entropy(out.reshape(-1, 20), y.reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step(); mon.step(loss)
        losses.append(loss.item())
    return losses


def test_failing_sink_and_detector_are_reported_once_and_disabled(caplog):
    torch.manual_seed(0)
    m = SeqClassifier(nn.LSTM)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    broken, counting = BrokenSink(), CountingSink()
    mon = gradwatch.watch(m, opt, console=False, sinks=[broken, counting])
    mon._detectors = BrokenDetectors()
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        losses = _train(m, opt, mon, steps=5)
        mon.close()
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert broken.calls == 1  # disabled after its first failure
    assert counting.steps == [0, 1, 2, 3, 4]  # the rest keeps working
    assert len(mon.history) == 5
    messages = [r.getMessage() for r in caplog.records]
    assert sum("No space left" in msg for msg in messages) == 1
    assert sum("detector bug" in msg for msg in messages) == 1


def test_strict_reraises_internal_errors():
    m = SeqClassifier(nn.LSTM)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, console=False, strict=True, sinks=[BrokenSink()])
    with pytest.raises(OSError):
        _train(m, opt, mon, steps=1)


def test_failing_capture_falls_back_to_plain_forward(monkeypatch, caplog):
    import gradwatch.capture.stack as stack

    m = SeqClassifier(nn.GRU)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, every=1, console=False)
    monkeypatch.setattr(stack, "timestep_norms", lambda *a, **k: 1 / 0)
    torch.manual_seed(1)
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        losses = _train(m, opt, mon, steps=3)
    mon.close()
    assert len(losses) == 3 and mon.steps == 3
    assert sum("forward capture" in r.getMessage() for r in caplog.records) == 1


def test_nonfinite_from_the_start_is_reported_not_fatal():
    m = nn.GRU(3, 4, num_layers=2)
    with torch.no_grad():
        m.weight_hh_l1.fill_(float("nan"))  # weights already broken when watching starts
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, console=False)
    for step in range(3):
        x = torch.full((5, 2, 3), float("nan")) if step == 0 else torch.randn(5, 2, 3)
        loss = m(x)[0].mean()
        opt.zero_grad(); loss.backward(); opt.step(); mon.step(loss)
    mon.close()
    assert mon.steps == 3
    assert all(s.nonfinite is not None for s in mon.history)
    assert mon.history[0].nonfinite.where == "weights" and mon.history[0].nonfinite.layer == 1
    assert math.isnan(mon.history[0].loss)


def test_never_opens_a_network_connection(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("gradwatch opened a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    m = SeqClassifier(nn.LSTM)
    opt = torch.optim.Adam(m.parameters())
    mon = gradwatch.watch(m, opt, console="logging")
    _train(m, opt, mon, steps=3)
    mon.close()


# ------------------------------------------------------------------ a failing part is really disabled
def _bitwise_training(make_monitor, steps=5):
    """(losses, parameters) of a seeded run; `make_monitor(model, opt)` may return None (unwatched)."""
    torch.manual_seed(0)
    m = SeqClassifier(nn.LSTM)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = make_monitor(m, opt)
    losses = []
    for _ in range(steps):
        x, y = lm_batch()
        loss = nn.functional.cross_entropy(m(x).reshape(-1, 20), y.reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step()
        if mon is not None:
            mon.step(loss)
        losses.append(loss.detach())
    if mon is not None:
        mon.close()
    return losses, [p.detach().clone() for p in m.parameters()], mon


def _same_training(a, b):
    return all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


@pytest.mark.parametrize("target", ["gradwatch.capture.params.ParameterMap.read_before_update",
                                    "gradwatch.capture.params.ParameterMap.weight_and_update_sumsq",
                                    "gradwatch.monitor.build_step_stats"],
                         ids=["gradient-read", "update-read", "record-build"])
def test_a_failing_step_part_is_reported_once_and_never_run_again(target, monkeypatch, caplog):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("internal bug")

    plain = _bitwise_training(lambda m, o: None)
    monkeypatch.setattr(target, broken)
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        watched = _bitwise_training(lambda m, o: gradwatch.watch(m, o, every=1, console=False))
    assert _same_training(plain, watched)
    assert len(calls) == 1  # the log says it stops: it really stops
    messages = [r.getMessage() for r in caplog.records if "internal bug" in r.getMessage()]
    assert len(messages) == 1 and "stops measuring" in messages[0]
    mon = watched[2]
    assert mon.session.enabled is False  # the forward adapters stopped measuring too


def test_a_failing_clipping_policy_is_switched_off_and_the_records_go_on(monkeypatch, caplog):
    from gradwatch.actions import Actions

    calls = []

    def broken(self, optimizers, profiles=()):
        calls.append(1)
        raise RuntimeError("clipping bug")

    monkeypatch.setattr(Actions, "before_step", broken)
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        _, _, mon = _bitwise_training(lambda m, o: gradwatch.watch(m, o, clip=1.0, console=False))
    assert len(calls) == 1 and mon.steps == 5 and len(mon.history) == 5
    assert sum("clipping bug" in r.getMessage() for r in caplog.records) == 1


def test_strict_reraises_a_failure_inside_the_backward_probe(monkeypatch):
    import gradwatch.capture.probe as probe

    m = SeqClassifier(nn.LSTM)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, every=1, console=False, strict=True)
    monkeypatch.setattr(probe, "timestep_norms", lambda *a, **k: 1 / 0)  # only the backward probe uses this name
    x, y = lm_batch()
    loss = nn.functional.cross_entropy(m(x).reshape(-1, 20), y.reshape(-1))
    with pytest.raises(ZeroDivisionError):
        loss.backward()
    mon.close()


def test_a_failing_backward_probe_is_reported_once_and_its_capture_switched_off(monkeypatch, caplog):
    import gradwatch.capture.probe as probe

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ZeroDivisionError("probe bug")

    plain = _bitwise_training(lambda m, o: None)
    monkeypatch.setattr(probe, "timestep_norms", broken)
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        watched = _bitwise_training(lambda m, o: gradwatch.watch(m, o, every=1, console=False))
    assert _same_training(plain, watched)
    assert sum("probe bug" in r.getMessage() for r in caplog.records) == 1
    assert 1 <= len(calls) <= 3  # the probes of the first backward; none after that
    assert watched[2].steps == 5
