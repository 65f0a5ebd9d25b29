"""The measurement schema: every channel declared once, slots fixed per module layout, and the
parts that used to spell keys (capture, pack, reducer, builder) working from it."""

from __future__ import annotations

import torch
from torch import nn

import gradwatch
from gradwatch.stream import schema
from gradwatch.stream.build import ModuleInfo
from gradwatch.stream.schema import CHANNELS, Reduce, Scope, Shape, StepLayout

MODULES = [ModuleInfo("enc", "LSTM", 2), ModuleInfo("dec.cell", "GRUCell", 1)]


def test_every_channel_is_declared_once_with_a_unique_name_and_exported():
    names = [c.name for c in CHANNELS]
    assert len(names) == len(set(names))
    declared = {v for k, v in vars(schema).items() if isinstance(v, schema.Channel)}
    assert declared == set(CHANNELS)
    assert all(c.fills for c in CHANNELS)


def test_per_timestep_channels_and_only_they_reduce_by_root_sum_square():
    for c in CHANNELS:
        assert (c.reduce is Reduce.ROOT_SUM_SQUARE) == (c.shape is Shape.PER_TIMESTEP), c.name


def test_channels_that_only_locate_nan_fill_only_the_nonfinite_field():
    """`locates_only` lets the accumulator skip a measurement proven finite (issue #15): only a channel
    whose declared field is `StepStats.nonfinite` alone may say so, and the layout marks its slots."""
    for channel in CHANNELS:
        assert channel.locates_only == channel.fills.startswith("StepStats.nonfinite"), channel.name
    layout = StepLayout([ModuleInfo("rnn", "LSTM", num_layers=2)])
    marked = {layout.describe(s) for s, locating in enumerate(layout.locating) if locating}
    assert marked == {"outside_wsq", "in_act[rnn]", "out_act[rnn]", "final[rnn]"}


def test_slots_number_every_channel_instance_once():
    layout = StepLayout(MODULES)
    step = sum(c.scope is Scope.STEP for c in CHANNELS)
    per_module = sum(c.scope is Scope.MODULE for c in CHANNELS)
    per_layer = sum(c.scope is Scope.LAYER for c in CHANNELS)
    assert layout.size == step + 2 * per_module + 3 * per_layer
    enc = layout.modules["enc"]
    slots = [enc.in_act, enc.out_act, enc.out_grad, enc.final, *enc.xgrad, *enc.act, *enc.activity]
    assert len(set(slots)) == len(slots) and len(enc.xgrad) == 2
    assert layout.slot(schema.XGRAD, "enc", 1) == enc.xgrad[1]
    assert layout.describe(enc.xgrad[1]) == "xgrad[enc, layer 1]"
    assert set(layout.summed_slots) == {s for s in range(layout.size) if layout.channels[s].shape is Shape.PER_TIMESTEP}


def test_step_channels_keep_their_slots_in_every_layout():
    """`stream.step_scalars` relies on it: the monitor's channels need no layout to be written."""
    for c in CHANNELS:
        if c.scope is Scope.STEP:
            assert StepLayout([]).slot(c) == StepLayout(MODULES).slot(c)


def test_a_decoding_loop_measures_its_inputs_and_output_gradients_once_per_step(monkeypatch):
    """20 one-token calls of a GRU: the inputs and the output gradients are measured at the step's
    end, one reduction per channel, not one per call (outputs, which the user may change in place,
    are measured per call). Finite inputs are proven finite by one sum there and not measured
    (round 4, `StepAccumulator.finite_checks`); a NaN token's step measures them once."""
    from gradwatch.stream import accumulator

    calls = []
    measure = accumulator.timestep_norms
    monkeypatch.setattr(accumulator, "timestep_norms", lambda *a, **k: calls.append(a[0].shape) or measure(*a, **k))
    torch.manual_seed(0)
    gru = nn.GRU(4, 5)
    x = torch.randn(20, 3, 4)
    with gradwatch.watch(gru, every=1000, console=False) as mon:
        for step in range(3):
            if step == 2:
                x[7, 1, 2] = float("nan")
            outs, h = [], None
            for t in range(20):
                out, h = gru(x[t : t + 1], h)
                outs.append(out)
            torch.cat(outs).square().mean().backward()
            calls.clear()
            mon.step()
            if step == 1:
                assert calls == [torch.Size([20, 3, 5])]  # output gradients; the inputs summed, finite
                record = mon.history[-1]
        assert sorted(calls) == [torch.Size([20, 3, 4]), torch.Size([20, 3, 5])]  # inputs, output gradients
        nan_record = mon.history[-1]
    assert len(record.timestep_output_grad_norms[""]) == 20
    assert nan_record.nonfinite is not None and (nan_record.nonfinite.where, nan_record.nonfinite.timestep) == ("input", 7)
