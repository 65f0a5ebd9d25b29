"""Real training setups: gradwatch keeps working and keeps its numbers right."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch
from models import SeqClassifier, lm_batch


def _step(model, opt, mon, x=None, y=None):
    x, y = (x, y) if x is not None else lm_batch()
    out = model(x)
    loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    opt.zero_grad(); loss.backward(); opt.step(); mon.step(loss)
    return loss


def test_modules_created_and_removed_after_watch():
    class Growing(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.GRU(3, 4)
            self.extra = None

        def forward(self, x):
            y = self.a(x)[0]
            if self.extra is not None:
                y = self.extra(y)[0]
            return y

    m = Growing()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, every=2, console=False, strict=True)
    for step in range(8):
        if step == 1:
            m.extra = nn.LSTM(4, 4, num_layers=2)
            opt.add_param_group({"params": m.extra.parameters()})
        if step == 4:
            m.extra = None
        out = m(torch.randn(5, 2, 3))
        opt.zero_grad(); out.sum().backward(); opt.step(); mon.step()
    mon.close()
    seen = [sorted({k[0] for k in s.layers}) for s in mon.history]
    assert seen[0] == ["a"] and seen[2] == ["a", "extra"] and seen[3] == ["a", "extra"]
    # a removed module is dropped at the next probe boundary; until then it shows no gradient
    assert not mon.history[5].layers[("extra", 0)].has_grad
    assert seen[6] == ["a"] and seen[7] == ["a"]
    assert mon.history[2].layers[("extra", 1)].timestep_grad_norms is not None


def test_model_moved_to_another_dtype_after_watch():
    m = SeqClassifier(nn.LSTM)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, every=1, console=False, strict=True)
    _step(m, opt, mon)
    m.double()
    loss = _step(m, opt, mon)
    mon.close()
    assert loss.dtype == torch.float64
    assert mon.history[-1].layers[("rnn", 0)].update_norm > 0
    assert mon.history[-1].layers[("rnn", 1)].timestep_grad_norms is not None


def test_two_optimizers_one_step_each():
    m = SeqClassifier(nn.GRU)
    rnn_opt = torch.optim.Adam(m.rnn.parameters(), lr=1e-3)
    rest_opt = torch.optim.SGD(list(m.emb.parameters()) + list(m.head.parameters()), lr=0.1)
    mon = gradwatch.watch(m, [rnn_opt, rest_opt], console=False, strict=True)
    for _ in range(3):
        x, y = lm_batch()
        loss = m(x).logsumexp(-1).mean()
        rnn_opt.zero_grad(); rest_opt.zero_grad(); loss.backward()
        total = torch.nn.utils.clip_grad_norm_(m.parameters(), float("inf"))
        rnn_opt.step(); rest_opt.step(); mon.step(loss)
        mon.flush()
        assert mon.history[-1].grad_norm == pytest.approx(float(total), rel=1e-5)
    mon.close()
    assert mon.steps == 3


def test_lbfgs_closure_called_several_times():
    torch.manual_seed(0)
    m = nn.GRU(3, 4)
    opt = torch.optim.LBFGS(m.parameters(), lr=0.5, max_iter=4)
    mon = gradwatch.watch(m, opt, every=1, console=False, strict=True)
    x = torch.randn(6, 2, 3)

    def closure():
        opt.zero_grad()
        loss = m(x)[0].pow(2).mean()
        loss.backward()
        return loss

    for _ in range(2):
        loss = opt.step(closure)
        mon.step(loss)
    mon.close()
    assert mon.steps == 2 and all(s.layers[("", 0)].update_norm > 0 for s in mon.history)


def test_cpu_autocast_bfloat16_is_bit_identical():
    def run(watch):
        torch.manual_seed(0)
        m = SeqClassifier(nn.LSTM)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        mon = gradwatch.watch(m, opt, every=1, console=False, strict=True) if watch else None
        losses = []
        for _ in range(3):
            x, y = lm_batch()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = m(x)
                loss = nn.functional.cross_entropy(out.float().reshape(-1, 20), y.reshape(-1))
            opt.zero_grad(); loss.backward(); opt.step()
            losses.append(loss.detach())
            if mon:
                mon.step(loss)
        if mon:
            mon.close()
        return losses, mon

    plain, _ = run(False)
    watched, mon = run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    assert mon.history[-1].layers[("rnn", 1)].timestep_grad_norms is not None


@pytest.mark.parametrize("T,B", [(1, 1), (1, 5), (7, 1)], ids=["T1-B1", "T1", "B1"])
def test_tiny_shapes(T, B):
    m = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    mon = gradwatch.watch(m, every=1, console=False, strict=True)
    m(torch.randn(T, B, 3))[0].sum().backward()
    mon.step()
    mon.close()
    assert len(mon.history[0].layers[("", 1)].timestep_grad_norms) == T


def test_very_long_sequence():
    m = nn.GRU(2, 8, num_layers=2)
    mon = gradwatch.watch(m, every=1, console=False, strict=True)
    m(torch.randn(2000, 2, 2))[0][-1].sum().backward()
    mon.step()
    mon.close()
    norms = mon.history[0].layers[("", 0)].timestep_grad_norms
    assert len(norms) == 2000 and norms[-1] > norms[0]  # the gradient decays back through time


def test_truncated_bptt_with_carried_state():
    torch.manual_seed(0)
    m = nn.LSTM(3, 5, num_layers=2)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    mon = gradwatch.watch(m, opt, every=1, console=False, strict=True)
    hidden = None
    data = torch.randn(40, 2, 3)
    for chunk in data.split(10):
        out, hidden = m(chunk, hidden)
        hidden = tuple(h.detach() for h in hidden)
        loss = out.pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step(); mon.step(loss)
    mon.close()
    assert mon.steps == 4 and all(len(s.layers[("", 0)].timestep_grad_norms) == 10 for s in mon.history)


def test_retain_graph_and_second_backward():
    m = nn.RNN(3, 4)
    mon = gradwatch.watch(m, every=1, console=False, strict=True)
    out = m(torch.randn(5, 2, 3))[0].sum()
    out.backward(retain_graph=True)
    once = m.weight_hh_l0.grad.clone()
    out.backward()
    mon.step()
    mon.close()
    assert torch.allclose(m.weight_hh_l0.grad, 2 * once)
    total = torch.nn.utils.clip_grad_norm_(m.parameters(), float("inf"))
    assert mon.history[0].layers[("", 0)].grad_norm == pytest.approx(float(total), rel=1e-5)


def test_eval_train_switching_and_no_grad_eval():
    m = SeqClassifier(nn.LSTM)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, every=1, console=False, strict=True)
    for _ in range(3):
        _step(m, opt, mon)
        m.eval()
        with torch.no_grad():
            m(torch.randint(0, 20, (30, 2)))
        m.train()
    mon.close()
    assert mon.steps == 3
    assert all(len(s.layers[("rnn", 0)].timestep_grad_norms) == 12 for s in mon.history)


def test_lbfgs_gradient_norm_is_the_last_closure_gradient():
    torch.manual_seed(0)
    m = nn.GRU(3, 4)
    opt = torch.optim.LBFGS(m.parameters(), lr=0.5, max_iter=3)
    mon = gradwatch.watch(m, opt, console=False, strict=True)
    x = torch.randn(6, 2, 3)
    seen = []

    def closure():
        opt.zero_grad()
        loss = m(x)[0].pow(2).mean()
        loss.backward()
        seen.append(float(torch.nn.utils.clip_grad_norm_(m.parameters(), float("inf"))))
        return loss

    for _ in range(2):
        seen.clear()
        opt.step(closure)
        mon.step()
        mon.flush()
        assert mon.history[-1].grad_norm == pytest.approx(seen[-1], rel=1e-5)
    mon.close()
