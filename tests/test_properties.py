"""Property-based tests: for generated recurrent configurations, the invariants hold."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gradwatch
from gradwatch.capture.stack import installed_adapter
from reference import reference_timestep_grads


@st.composite
def rnn_configs(draw):
    cls = draw(st.sampled_from([nn.RNN, nn.LSTM, nn.GRU]))
    kw = dict(
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
    )
    hidden = draw(st.integers(1, 6))
    if cls is nn.LSTM and draw(st.booleans()) and hidden > 1:
        kw["proj_size"] = draw(st.integers(1, hidden - 1))
    if cls is nn.RNN:
        kw["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    shape = dict(T=draw(st.integers(1, 7)), B=draw(st.integers(1, 4)), F=draw(st.integers(1, 5)))
    packed = draw(st.sampled_from([None, "sorted", "unsorted"]))
    return cls, hidden, kw, shape, packed, draw(st.integers(0, 2**16))


def _make(cfg):
    cls, hidden, kw, shape, packed, seed = cfg
    torch.manual_seed(seed)
    m = cls(shape["F"], hidden, **kw)
    T, B = shape["T"], shape["B"]
    x = torch.randn(B, T, shape["F"]) if m.batch_first else torch.randn(T, B, shape["F"])
    if packed:
        lengths = torch.randint(1, T + 1, (B,))
        if packed == "sorted":
            lengths = lengths.sort(descending=True).values
            lengths[0] = T
        x = pack_padded_sequence(x, lengths, batch_first=m.batch_first, enforce_sorted=packed == "sorted")
    return m, x


def _loss(out, hidden):
    data = out.data if isinstance(out, PackedSequence) else out
    hs = hidden if isinstance(hidden, tuple) else (hidden,)
    return data.pow(2).sum() * 0.5 + sum(h.sin().sum() for h in hs)


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(rnn_configs())
def test_timestep_norms_equal_autograd_reference(cfg):
    m, x = _make(cfg)
    expected = reference_timestep_grads(m, x, None, _loss)
    m.zero_grad()
    mon = gradwatch.watch(m, every=1, console=False, strict=True)
    _loss(*m(x)).backward()
    mon.step()
    mon.close()
    for layer in range(m.num_layers):
        got = mon.history[0].layers[("", layer)].timestep_grad_norms
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected[layer]), rtol=1e-4, atol=1e-6)


@SETTINGS
@given(rnn_configs())
def test_watching_changes_no_output_or_gradient_and_close_leaves_nothing(cfg):
    m, x = _make(cfg)

    def run():
        m.zero_grad()
        out, hidden = m(x)
        _loss(out, hidden).backward()
        data = out.data if isinstance(out, PackedSequence) else out
        return data.detach().clone(), [p.grad.clone() for p in m.parameters()]

    plain_out, plain_grads = run()
    mon = gradwatch.watch(m, every=1, console=False, strict=True)
    watched_out, watched_grads = run()
    mon.step()
    mon.close()
    assert torch.equal(plain_out, watched_out)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, watched_grads))
    assert installed_adapter(m) is None
    assert not any(len(mod._forward_hooks) or len(mod._forward_pre_hooks) for mod in m.modules())
