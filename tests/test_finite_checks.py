"""The finite-sum shortcut for a module's input and output (`StepAccumulator.finite_checks`) gives
the very records and alerts of measuring them in full, NaN/Inf or not (issue #15).

Each case trains a few steps twice from the same seed: once as gradwatch runs on one CPU process
(input and output summed first, measured per timestep only when the sum is not finite), once with
every slot measured (`_host_checkable` off: the path devices and several processes take). The
records (JSON, NaN spelled out) and alerts must be byte-identical; where the case injects a
NaN/Inf, its location is also checked against where the test put it.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gradwatch
from gradwatch.stream.schema import IN_ACT, OUT_ACT


def _records(monitor: gradwatch.Monitor) -> str:
    return json.dumps([r.to_dict() for r in monitor.history], sort_keys=True, default=str)


def _alerts(monitor: gradwatch.Monitor) -> str:
    return json.dumps([a.to_dict() for a in monitor.alerts], sort_keys=True, default=str)


def _train(make: Callable[[], tuple[nn.Module, Callable[[Any, int], Any]]], every: int,
           steps: int = 4) -> gradwatch.Monitor:
    torch.manual_seed(0)
    model, loss_at = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = gradwatch.watch(model, opt, every=every, console=False)
    for step in range(steps):
        loss = loss_at(model, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss)
    monitor.close()
    return monitor


def _nan_input_stack() -> tuple[nn.Module, Callable[[Any, int], Any]]:
    model = nn.GRU(3, 5, num_layers=2)

    def loss_at(m: Any, step: int) -> Any:
        x = torch.randn(8, 2, 3)
        if step == 1:
            x[5, 1, 2] = float("nan")
        return m(x)[0].pow(2).mean()
    return model, loss_at


def _overflow_forward(layers: int) -> Callable[[], tuple[nn.Module, Callable[[Any, int], Any]]]:
    def make() -> tuple[nn.Module, Callable[[Any, int], Any]]:
        model = nn.RNN(3, 4, num_layers=layers, nonlinearity="relu")
        with torch.no_grad():
            model.weight_hh_l0.fill_(1e20)  # type: ignore[operator]  # finite weights; h_t overflows by t=2

        def loss_at(m: Any, step: int) -> Any:
            return m(torch.rand(6, 2, 3) + 1.0)[0].sum()
        return model, loss_at
    return make


def _huge_but_finite() -> tuple[nn.Module, Callable[[Any, int], Any]]:
    """Inputs whose float32 norm overflows (~1e20 each) and, at step 2, whose float32 sum does too:
    finite data, measured again in float64 by the full path; the shortcut must not call it non-finite."""
    model = nn.LSTM(3, 4)

    def loss_at(m: Any, step: int) -> Any:
        x = torch.full((6, 2, 3), 1e20 if step < 2 else 3e38)
        return m(x)[0].sum()
    return model, loss_at


class _Decoder(nn.Module):
    def __init__(self, cell: bool) -> None:
        super().__init__()
        self.cell = cell
        self.rnn: nn.Module = nn.LSTMCell(3, 4) if cell else nn.GRU(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, h = [], None
        for t in range(x.shape[0]):
            if self.cell:
                h = self.rnn(x[t], h)
                outs.append(h[0])
            else:
                out, h = self.rnn(x[t : t + 1], h)
                outs.append(out[0])
        return torch.stack(outs)


def _decoding_loop(cell: bool) -> Callable[[], tuple[nn.Module, Callable[[Any, int], Any]]]:
    def make() -> tuple[nn.Module, Callable[[Any, int], Any]]:
        model = _Decoder(cell)

        def loss_at(m: Any, step: int) -> Any:
            x = torch.randn(7, 2, 3)
            if step == 2:
                x[4, 0, 1] = float("inf")
            return m(x).pow(2).mean()
        return model, loss_at
    return make


def _packed_nan() -> tuple[nn.Module, Callable[[Any, int], Any]]:
    model = nn.LSTM(3, 4, num_layers=2, batch_first=True)

    def loss_at(m: Any, step: int) -> Any:
        x = torch.randn(3, 6, 3)
        if step == 3:
            x[1, 2, 0] = float("nan")
        out = m(pack_padded_sequence(x, torch.tensor([6, 5, 2]), batch_first=True))[0]
        return out.data.pow(2).mean()
    return model, loss_at


def _batch_first_output_nan() -> tuple[nn.Module, Callable[[Any, int], Any]]:
    """A NaN born inside the module at step 1 (a weight set to NaN by hand after the first update)."""
    model = nn.GRU(3, 5, batch_first=True)

    def loss_at(m: Any, step: int) -> Any:
        if step == 2:
            with torch.no_grad():
                m.bias_hh_l0[0] = float("nan")
        return m(torch.randn(2, 6, 3))[0].pow(2).mean()
    return model, loss_at


CASES = {
    "nan-input-2-layer-gru": _nan_input_stack,
    "overflow-forward-1-layer": _overflow_forward(1),
    "overflow-forward-2-layers": _overflow_forward(2),
    "huge-but-finite-input": _huge_but_finite,
    "gru-per-token-inf-input": _decoding_loop(cell=False),
    "lstm-cell-inf-input": _decoding_loop(cell=True),
    "packed-nan-input": _packed_nan,
    "batch-first-nan-weight": _batch_first_output_nan,
}


@pytest.mark.parametrize("every", [1, 3], ids=["probe-every-step", "probe-every-3"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_records_and_alerts_with_finite_sum_checks_equal_fully_measured_ones(monkeypatch: pytest.MonkeyPatch, case: str,
                                                                            every: int) -> None:
    checked = _train(CASES[case], every)
    monkeypatch.setattr("gradwatch.stream.accumulator._host_checkable", lambda x: False)
    full = _train(CASES[case], every)
    assert _records(checked) == _records(full)
    assert _alerts(checked) == _alerts(full)


def test_a_nan_in_the_input_is_still_located_at_its_timestep_on_ordinary_steps() -> None:
    monitor = _train(_nan_input_stack, every=10)
    nf, after = monitor.history[1].nonfinite, monitor.history[2].nonfinite
    assert monitor.history[0].nonfinite is None and after is not None and after.where == "weights"  # NaN update
    assert nf is not None
    assert (nf.where, nf.module, nf.layer, nf.timestep) == ("input", "", 0, 5)


def test_huge_finite_inputs_are_not_reported_non_finite() -> None:
    monitor = _train(_huge_but_finite, every=10)
    assert all(r.nonfinite is None for r in monitor.history)


def test_a_finite_input_and_output_are_not_measured_per_timestep_but_a_non_finite_one_is() -> None:
    """The shortcut itself: with finite data the step holds no per-timestep input/output norms."""
    torch.manual_seed(0)
    gru = nn.GRU(3, 5)
    monitor = gradwatch.watch(gru, every=10, console=False)
    slots = monitor.session.layout.modules[""]
    gru(torch.randn(6, 2, 3))
    acc = monitor.session.accumulator
    assert slots.in_act not in acc.pieces and slots.out_act not in acc.pieces
    bad = torch.randn(6, 2, 3)
    bad[2, 0, 0] = float("nan")
    gru(bad)
    assert slots.in_act in acc.pieces and slots.out_act in acc.pieces
    assert monitor.session.layout.locating[slots.in_act] and monitor.session.layout.locating[slots.out_act]
    assert monitor.session.layout.slot(IN_ACT, "") == slots.in_act and monitor.session.layout.slot(OUT_ACT, "") == slots.out_act
    monitor.close()


def test_several_processes_measure_every_slot() -> None:
    """Every rank must pack the same slots for the reducer: no shortcut with one."""
    from gradwatch.monitor import Monitor

    class _Reducer:
        def start(self, flat: Any, segments: Any, layout: Any) -> Any:  # pragma: no cover - not reached here
            raise AssertionError

    monitor = Monitor(nn.GRU(3, 5), [], every=10, history=10, strict=True, detectors=None, sinks=[],
                      reducer=_Reducer())  # type: ignore[arg-type]  # a stand-in: never called
    assert not monitor.session.accumulator.finite_checks
    assert gradwatch.watch(nn.GRU(3, 5), console=False).session.accumulator.finite_checks


def test_a_decoding_loops_one_token_inputs_are_summed_at_pack_not_measured_per_token() -> None:
    """Round 4: a decoding loop's inputs (deferred one-token pieces) are proven finite by one sum
    at pack and leave no per-timestep segment; a NaN token keeps them measured."""
    from gradwatch.stream.accumulator import StepAccumulator

    torch.manual_seed(0)
    gru = nn.GRU(3, 5)
    monitor = gradwatch.watch(gru, every=10, console=False)
    layout = monitor.session.layout
    slots = layout.modules[""]
    for nan_at in (None, 3):
        acc = StepAccumulator(layout, finite_checks=True)
        monitor.session.accumulator = acc
        state = None
        for t in range(6):
            x = torch.randn(1, 2, 3)
            if t == nan_at:
                x[0, 1, 2] = float("nan")
            _, state = gru(x, state)
        assert len(acc.pieces[slots.in_act]) == 6 and all(p.values is None for p in acc.pieces[slots.in_act])
        flat, segments = acc.pack([])
        packed = dict(segments)
        if nan_at is None:
            assert slots.in_act not in packed
        else:
            assert packed[slots.in_act] == 6
            start = sum(n for s, n in segments[: [s for s, _ in segments].index(slots.in_act)])
            norms = flat[start : start + 6]
            assert torch.isnan(norms[nan_at]) and torch.isfinite(torch.cat([norms[:nan_at], norms[nan_at + 1:]])).all()
    monitor.close()
