"""Per-layer gradient norms, weight norms, update ratios and activation statistics against references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradwatch
from reference import single_layer_copy


def _layer_params(m, layer, direction=None):
    out = []
    for name, p in m.named_parameters():
        if f"_l{layer}" not in name:
            continue
        if direction is not None and name.endswith("_reverse") != (direction == 1):
            continue
        out.append((name, p))
    return out


def _norm(ts):
    return math.sqrt(sum(float(t.double().square().sum()) for t in ts))


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "manual"])
@pytest.mark.parametrize("cls,kw", [(nn.LSTM, dict(num_layers=2, bidirectional=True)), (nn.GRU, dict(num_layers=3)),
                                    (nn.RNN, dict(num_layers=2, nonlinearity="relu"))],
                         ids=["lstm-bidir", "gru-3layer", "rnn-relu"])
def test_grad_weight_update_norms(cls, kw, opt_name):
    torch.manual_seed(0)
    m = cls(4, 6, **kw)
    head = nn.Linear(6 * (2 if m.bidirectional else 1), 1)
    params = list(m.parameters()) + list(head.parameters())
    opt = None
    if opt_name == "sgd":
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    elif opt_name == "adam":
        opt = torch.optim.Adam(params, lr=1e-3)
    model = nn.ModuleDict({"rnn": m, "head": head})
    mon = gradwatch.watch(model, opt, every=1, console=False, strict=True)
    for _ in range(3):
        x = torch.randn(5, 2, 4)
        loss = head(m(x)[0]).pow(2).mean()
        for p in params:
            p.grad = None
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        total = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        if opt is not None:
            opt.step()
        else:
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad, alpha=-0.05)
        mon.step(loss)
        mon.flush()
        stats = mon.history[-1]
        assert stats.loss == pytest.approx(float(loss))
        assert stats.grad_norm == pytest.approx(float(total), rel=1e-5)
        for layer in range(m.num_layers):
            ls = stats.layers[("rnn", layer)]
            names = [n for n, _ in _layer_params(m, layer)]
            gnorm = _norm([grads[n] for n in names])
            wnorm = _norm([before[n] for n in names])
            unorm = _norm([dict(m.named_parameters())[n].detach() - before[n] for n in names])
            assert ls.grad_norm == pytest.approx(gnorm, rel=1e-5)
            assert ls.weight_norm == pytest.approx(wnorm, rel=1e-5)
            assert ls.update_norm == pytest.approx(unorm, rel=1e-4, abs=1e-9)
            assert ls.update_ratio == pytest.approx(unorm / wnorm, rel=1e-4, abs=1e-9)
            assert len(ls.directions) == (2 if m.bidirectional else 1)
            for d, ds in enumerate(ls.directions):
                dnames = [n for n, _ in _layer_params(m, layer, d)]
                assert ds.grad_norm == pytest.approx(_norm([grads[n] for n in dnames]), rel=1e-5)
                assert ds.weight_norm == pytest.approx(_norm([before[n] for n in dnames]), rel=1e-5)
    mon.close()


def _reference_activity(m, x):
    """Per-layer outputs of `m`, computed by separate single-layer modules (eval: no dropout)."""
    outs, cur = [], x
    for layer in range(m.num_layers):
        cur, _ = single_layer_copy(m, layer)(cur)
        outs.append(cur.detach())
    return outs


@pytest.mark.parametrize("cls,kw", [(nn.RNN, dict(nonlinearity="relu")), (nn.RNN, {}), (nn.GRU, {})],
                         ids=["rnn-relu", "rnn-tanh", "gru"])
def test_dead_and_saturated_fractions(cls, kw):
    torch.manual_seed(0)
    m = cls(3, 8, num_layers=2, **kw)
    with torch.no_grad():  # make some units dead (relu) or saturated (tanh) on purpose
        if cls is nn.GRU:  # update gate shut (h = candidate), candidate pinned at +1
            m.bias_ih_l0[8:11] = -50.0
            m.bias_ih_l0[16:19] = 50.0
        else:
            m.bias_ih_l0[:3] = -50.0 if kw.get("nonlinearity") == "relu" else 50.0
        m.weight_ih_l1.mul_(20.0)
    x = torch.randn(6, 4, 3)
    refs = _reference_activity(m, x)
    mon = gradwatch.watch(m, every=1, console=False, strict=True)
    m(x)[0].sum().backward()
    mon.step()
    mon.close()
    for layer, h in enumerate(refs):
        ls = mon.history[-1].layers[("", layer)]
        a = h.abs().reshape(-1, h.shape[-1])
        dead = float((a < 1e-6).all(dim=0).float().mean())
        sat = float(((a >= 0.99).float().mean(dim=0) >= 0.9).float().mean())
        assert ls.dead_fraction == pytest.approx(dead)
        if kw.get("nonlinearity") == "relu":
            assert ls.saturated_fraction is None
        else:
            assert ls.saturated_fraction == pytest.approx(sat)
        expected_act = h.pow(2).sum(dim=(1, 2)).sqrt()
        torch.testing.assert_close(torch.tensor(ls.timestep_activation_norms), expected_act, rtol=1e-5, atol=1e-6)
    if kw.get("nonlinearity") == "relu":
        assert mon.history[-1].layers[("", 0)].dead_fraction >= 3 / 8
    else:
        assert mon.history[-1].layers[("", 0)].saturated_fraction >= 3 / 8


def test_frozen_layer_has_no_grad():
    m = nn.LSTM(3, 4, num_layers=2)
    for n, p in m.named_parameters():
        if n.endswith("l0"):
            p.requires_grad_(False)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    mon = gradwatch.watch(m, opt, console=False, strict=True)
    out, _ = m(torch.randn(5, 2, 3))
    opt.zero_grad(); out.sum().backward(); opt.step(); mon.step()
    mon.close()
    s = mon.history[-1]
    assert not s.layers[("", 0)].has_grad and s.layers[("", 0)].grad_norm == 0.0
    assert s.layers[("", 0)].update_norm == 0.0
    assert s.layers[("", 1)].has_grad and s.layers[("", 1)].grad_norm > 0
