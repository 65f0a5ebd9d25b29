"""Per-layer, per-timestep gradient norms against a layer-by-layer autograd reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gradwatch
from reference import per_timestep_norms, reference_timestep_grads

T, B, F, H = 6, 3, 4, 5

CONFIGS = {
    "lstm-1layer": (nn.LSTM, dict(num_layers=1)),
    "lstm-3layer": (nn.LSTM, dict(num_layers=3)),
    "lstm-bidir-2layer": (nn.LSTM, dict(num_layers=2, bidirectional=True)),
    "lstm-batch_first": (nn.LSTM, dict(num_layers=2, batch_first=True)),
    "lstm-proj": (nn.LSTM, dict(num_layers=2, proj_size=3)),
    "lstm-proj-bidir-dropout": (nn.LSTM, dict(num_layers=2, proj_size=3, bidirectional=True, dropout=0.3)),
    "lstm-dropout": (nn.LSTM, dict(num_layers=3, dropout=0.5)),
    "lstm-nobias": (nn.LSTM, dict(num_layers=2, bias=False)),
    "gru-2layer": (nn.GRU, dict(num_layers=2)),
    "gru-bidir-batch_first": (nn.GRU, dict(num_layers=2, bidirectional=True, batch_first=True)),
    "rnn-tanh-3layer": (nn.RNN, dict(num_layers=3)),
    "rnn-relu-bidir": (nn.RNN, dict(num_layers=2, nonlinearity="relu", bidirectional=True)),
}


def _loss_fn(seed_out, seed_h):
    def loss(out, hidden):
        data = out.data if isinstance(out, PackedSequence) else out
        hs = hidden if isinstance(hidden, tuple) else (hidden,)
        return (data * seed_out[: data.numel()].reshape(data.shape)).sum() + sum(
            (h * seed_h[: h.numel()].reshape(h.shape)).sum() for h in hs
        )

    return loss


def _inputs(m, packed: str | None, with_hx: bool):
    ndir = 2 if m.bidirectional else 1
    x = torch.randn(B, T, F) if m.batch_first else torch.randn(T, B, F)
    if packed:
        lengths = torch.tensor([6, 4, 2]) if packed == "sorted" else torch.tensor([4, 6, 2])
        x = pack_padded_sequence(x, lengths, batch_first=m.batch_first, enforce_sorted=packed == "sorted")
    hx = None
    if with_hx:
        hsize = m.proj_size if getattr(m, "proj_size", 0) else H
        h0 = torch.randn(m.num_layers * ndir, B, hsize)
        hx = (h0, torch.randn(m.num_layers * ndir, B, H)) if isinstance(m, nn.LSTM) else h0
    return x, hx


@pytest.mark.parametrize("packed", [None, "sorted", "unsorted"], ids=["padded", "packed-sorted", "packed-unsorted"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["hx-none", "hx-given"])
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_timestep_grad_norms_match_reference(config, packed, with_hx):
    cls, kwargs = CONFIGS[config]
    torch.manual_seed(1)
    m = cls(F, H, **kwargs)
    x, hx = _inputs(m, packed, with_hx)
    loss_fn = _loss_fn(torch.randn(10_000), torch.randn(10_000))

    expected = reference_timestep_grads(m, x, hx, loss_fn, seed=7)

    m.zero_grad()
    monitor = gradwatch.watch(m, every=1, console=False, strict=True)
    torch.manual_seed(7)
    out, hidden = m(x, hx)
    loss_fn(out, hidden).backward()
    monitor.step()
    monitor.close()
    stats = monitor.history[-1]
    assert stats.probed
    for layer in range(m.num_layers):
        got = stats.layers[("", layer)].timestep_grad_norms
        assert got is not None
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected[layer]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("config", ["lstm-3layer", "gru-bidir-batch_first", "rnn-relu-bidir"])
def test_output_grad_norms_every_step(config):
    cls, kwargs = CONFIGS[config]
    m = cls(F, H, **kwargs)
    x, _ = _inputs(m, None, False)
    monitor = gradwatch.watch(m, every=5, console=False, strict=True)
    for _ in range(2):
        out, _ = m(x)
        out.retain_grad()
        (out.square().sum() * 0.5).backward()
        monitor.step()
        expected = per_timestep_norms(out.grad, out, m.batch_first)
        monitor.flush()
        torch.testing.assert_close(torch.tensor(monitor.history[-1].timestep_output_grad_norms[""]),
                                   torch.tensor(expected), rtol=1e-5, atol=1e-7)
    monitor.close()
    assert [s.probed for s in monitor.history] == [True, False]
    assert monitor.history[1].layers[("", 0)].timestep_grad_norms is None


def test_unbatched_input_matches_reference():
    m = nn.LSTM(F, H, num_layers=2)
    x = torch.randn(T, F)
    expected_out, _ = m(x)
    x3 = x.unsqueeze(1)
    expected = reference_timestep_grads(m, x3, None, lambda o, h: o.square().sum())
    monitor = gradwatch.watch(m, every=1, console=False, strict=True)
    out, (h, c) = m(x)
    assert out.shape == (T, H) and h.shape == (2, H)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    out.square().sum().backward()
    monitor.step()
    monitor.close()
    for layer in range(2):
        torch.testing.assert_close(torch.tensor(monitor.history[-1].layers[("", layer)].timestep_grad_norms),
                                   torch.tensor(expected[layer]), rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_adds_squared_norms():
    m = nn.GRU(F, H, num_layers=2)
    xs = [torch.randn(T, B, F), torch.randn(T - 2, B, F)]
    refs = [reference_timestep_grads(m, x, None, lambda o, h: o.sum()) for x in xs]
    monitor = gradwatch.watch(m, every=1, console=False, strict=True)
    for x in xs:
        m(x)[0].sum().backward()
    monitor.step()
    monitor.close()
    got = monitor.history[-1].layers[("", 1)].timestep_grad_norms
    a, b = refs[0][1], refs[1][1] + [0.0, 0.0]
    expected = [math.sqrt(u * u + v * v) for u, v in zip(a, b)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-7)
