"""NaN/Inf located to step, module, layer and timestep, forward vs backward, on every step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.GRU(3, 5, num_layers=3)
        self.head = nn.Linear(5, 1)

    def forward(self, x):
        return self.head(self.enc(x)[0])


class NanGradAt(torch.autograd.Function):
    """Identity forward; the backward puts a NaN into the gradient at timestep t."""

    @staticmethod
    def forward(ctx, x, t):
        ctx.t = t
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        g[ctx.t] = float("nan")
        return g, None


def _run(every, step_of_nan, inject):
    torch.manual_seed(0)
    m = Net()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    mon = gradwatch.watch(m, opt, every=every, console=False, strict=True)
    for step in range(4):
        x = torch.randn(8, 2, 3)
        if step == step_of_nan and inject == "input":
            x[5, 1, 2] = float("nan")
        out = m.enc(x)[0]
        if step == step_of_nan and inject == "grad":
            out = NanGradAt.apply(out, 6)
        loss = m.head(out).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step(); mon.step(loss)
    mon.close()
    return mon


@pytest.mark.parametrize("every", [1, 10], ids=["probe-step", "non-probe-step"])
def test_nan_in_input_is_input_at_its_timestep(every):
    mon = _run(every, 1, "input")
    assert mon.history[0].nonfinite is None
    nf = mon.history[1].nonfinite
    assert (nf.where, nf.module, nf.layer, nf.timestep) == ("input", "enc", 0, 5)


@pytest.mark.parametrize("every", [1, 10], ids=["probe-step", "non-probe-step"])
def test_nan_only_in_backward_is_located(every):
    mon = _run(every, 2, "grad")
    assert mon.history[1].nonfinite is None
    nf = mon.history[2].nonfinite
    assert (nf.where, nf.module, nf.layer, nf.timestep) == ("backward", "enc", 2, 6)


def test_nan_inside_a_layer_located_on_probe_steps():
    torch.manual_seed(0)
    m = nn.LSTM(3, 4, num_layers=3)
    mon = gradwatch.watch(m, every=1, console=False, strict=True)
    with torch.no_grad():
        m.weight_hh_l1[0, 0] = float("inf")  # layer 1 breaks from its second timestep on
    out, _ = m(torch.randn(6, 2, 3))
    out.sum().backward()
    mon.step()
    mon.close()
    nf = mon.history[0].nonfinite
    assert (nf.where, nf.layer, nf.timestep) == ("forward", 1, 0)  # W_hh·h0 = inf·0 = NaN at t=0
    # weights that a step left non-finite are named as such from the next step on
    m2 = nn.LSTM(3, 4, num_layers=3)
    opt = torch.optim.SGD(m2.parameters(), lr=1.0)
    mon2 = gradwatch.watch(m2, opt, console=False, strict=True)
    for step in range(2):
        out, _ = m2(torch.randn(6, 2, 3))
        opt.zero_grad(); out.sum().backward()
        if step == 0:
            m2.weight_ih_l2.grad[0, 0] = float("nan")
        opt.step(); mon2.step()
    mon2.close()
    assert mon2.history[0].nonfinite.where == "backward"
    assert (mon2.history[1].nonfinite.where, mon2.history[1].nonfinite.layer) == ("weights", 2)


def test_nonfinite_loss_only():
    m = nn.RNN(2, 3)
    mon = gradwatch.watch(m, console=False, strict=True)
    out, _ = m(torch.randn(4, 1, 2))
    loss = out.sum() * 0 + torch.log(torch.tensor(-1.0))
    mon.step(loss)
    mon.close()
    nf = mon.history[0].nonfinite
    assert nf.where == "loss" and mon.history[0].loss != mon.history[0].loss


@pytest.mark.parametrize("every", [1, 10], ids=["probe-step", "non-probe-step"])
def test_overflow_born_in_layer_0_is_not_blamed_on_the_input(every):
    """Regression: finite data through weights that overflow layer 0 was reported as NaN 'already in the
    input sequence' with a data-pipeline remedy (the exploding demo's NaN step)."""
    torch.manual_seed(0)
    m = nn.RNN(3, 4, num_layers=2, nonlinearity="relu")
    with torch.no_grad():
        m.weight_hh_l0.fill_(1e20)  # finite weights; h_t grows ×4e20 per timestep and overflows by t=2
    mon = gradwatch.watch(m, every=every, console=False, strict=True)
    for _ in range(2):  # step 1 is a non-probe step when every=10
        out, _ = m(torch.rand(6, 2, 3) + 1.0)
        out.sum().backward()
        mon.step()
    mon.close()
    for record in mon.history:
        nf = record.nonfinite
        assert (nf.where, nf.module, nf.layer) == ("forward", "", 0)
    alert = next(a for a in mon.alerts if a.sign == "non_finite")
    assert "data pipeline" not in alert.message and "overflowed" in alert.message


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "bidirectional"])
def test_overflow_inside_a_one_layer_module_is_located_on_ordinary_steps_without_final_state_sums(bidirectional):
    """A one-layer module skips the per-call final-state sums (they can only name layer 0): the
    location on a non-probe step is the same as with them."""
    torch.manual_seed(0)
    rnn = nn.RNN(2, 3, nonlinearity="relu", bidirectional=bidirectional)
    with torch.no_grad():
        for p in rnn.parameters():
            p.fill_(1e13)  # finite weights; the relu recurrence overflows to Inf after a few timesteps
    mon = gradwatch.watch(rnn, every=10, console=False)
    for _ in range(2):  # step 1 is not a probe step
        out, _ = rnn(torch.ones(6, 1, 2))
        out.sum().backward()
        mon.step(0.0)
    record = mon.history[-1]
    assert not record.probed
    assert record.nonfinite is not None and record.nonfinite.where == "forward"
    assert (record.nonfinite.module, record.nonfinite.layer) == ("", 0)
    mon.close()
