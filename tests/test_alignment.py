"""`clip="auto"`'s alignment feedback (`gradwatch.actions.alignment`): the update bound of an ungated
network shrinks while its bounded steps overshoot (the new gradient points back along the last update)."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import GradwatchError
from gradwatch.actions import Auto, build_actions
from gradwatch.actions.alignment import AlignmentFeedback


class Tiny(nn.Module):
    def __init__(self, cell: type[nn.Module] = nn.RNN) -> None:
        super().__init__()
        self.rnn, self.head = cell(2, 8), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def _run(signs, *, host: bool = True, weights: bool = True, lr: float = 50.0, cell: type[nn.Module] = nn.RNN,
         profiles=None, policy: Auto | None = None, noise: float = 0.0):
    """auto on hand-set gradients ±G (sign per step), the optimizer stepping in between; the records and
    the alignment factor after each step. `weights`: the monitor told auto the recurrent weights."""
    torch.manual_seed(0)
    model = Tiny(cell)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr)
    actions = build_actions(policy or Auto(spike=20.0), False)  # spike bound out of the way
    actions.clipper.host = host
    actions.observe_recurrent([cell], [model.rnn.weight_hh_l0] if weights else [])
    gen = torch.Generator().manual_seed(1)
    directions = [torch.randn(p.shape, generator=gen) for p in params]
    records, factors = [], []
    for step, sign in enumerate(signs):
        for p, d in zip(params, directions):
            p.grad = sign * d.clone()
            if noise:  # a fresh random part each step: cos(g_t, g_{t−1}) ≈ −1 / (1 + noise²) when alternating
                p.grad += noise * torch.randn(p.shape, generator=gen)
        f = actions.clipper.alignment.factor  # the factor this step's bound gets
        factors.append(1.0 if f is None else float(f))
        records.append(actions.before_step([opt], profiles(step) if profiles else []).clip)
        opt.step()
    return torch.stack(records), factors


ALTERNATING = [(-1.0) ** t for t in range(120)]
"""Each step's gradient points back along the last update: every bounded step overshoots (cosine −1)."""


@pytest.mark.parametrize("host", [True, False], ids=["host-floats", "device-tensors"])
def test_auto_tightens_the_update_bound_of_an_ungated_run_whose_bounded_steps_overshoot(host):
    """Issue #14 (session 7): default-initialised vanilla RNNs with a too-high learning rate sat at
    2.5-3.8× their best fixed threshold (held-out r4) with auto's plain bound too loose for them. The
    alignment cos(g_t, −Δθ_{t−1}) is measured on one step in 10 (`Auto.align_every`; the copy on step
    9, the measure on step 10); each mostly-clipped block of 10 steps whose mean is below −0.3 multiplies
    the bound by 0.7, down to 1/16. Step 10's sample decides at the end of step 19."""
    records, factors = _run(ALTERNATING, host=host)
    expected = [1.0] * 20 + [max(0.7 ** n, 1 / 16) for n in range(1, 11) for _ in range(10)]
    assert factors == pytest.approx(expected, rel=1e-6)
    plain, _ = _run(ALTERNATING, host=host, weights=False)
    ratio = (records[:, 3] / plain[:, 3]).tolist()
    assert ratio[:20] == pytest.approx([1.0] * 20, rel=1e-6)
    assert ratio == pytest.approx(expected, rel=0.05)  # ‖θ‖ moves a little differently under the two bounds


def test_auto_alignment_factor_only_tightens():
    """Blocks whose gradient keeps pointing where the last update went do not give the bound back:
    the factor is a decay on detected overshoot (giving it back ×1.5 per block above +0.3 did worse on
    held-out r4 and r3, docs/clipping.md "Session 7")."""
    _, factors = _run(ALTERNATING[:40] + [1.0] * 80)
    assert factors[50] == pytest.approx(0.7 ** 4)  # step 40's sample compares with step 39's update: still a reversal
    assert factors[50:] == pytest.approx([0.7 ** 4] * 70)


def test_auto_alignment_leaves_runs_it_does_not_clip_alone():
    """A healthy run is clipped on almost none of its steps: blocks auto mostly did not clip never move the bound."""
    records, factors = _run(ALTERNATING, lr=1e-6)
    plain, _ = _run(ALTERNATING, lr=1e-6, weights=False)
    assert set(factors) == {1.0} and float(records[:, 2].min()) == 1.0
    torch.testing.assert_close(records, plain, rtol=0, atol=0)


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM], ids=["gru", "lstm"])
def test_auto_alignment_is_off_for_gated_networks(cell):
    """Gated networks keep their bound exactly as before (no measurement, no factor)."""
    records, factors = _run(ALTERNATING, cell=cell)
    plain, _ = _run(ALTERNATING, cell=cell, weights=False)
    assert set(factors) == {1.0}
    torch.testing.assert_close(records, plain, rtol=0, atol=0)


def test_auto_alignment_is_off_without_recurrent_weights_to_measure():
    """Actions used without a monitor (no weights told): auto is exactly as before."""
    _, factors = _run(ALTERNATING, weights=False)
    assert set(factors) == {1.0}


def _p40(step):
    """A probe profile every 10 steps with P = 40 (an IRNN's P is 100-6,000): P tightens the bound."""
    u = torch.zeros(40)
    u[-1] = 1.0
    return [(u, torch.ones(40))] if step % 10 == 0 else []


def test_auto_alignment_factor_does_not_apply_where_the_propagation_factor_tightens_the_bound():
    """An IRNN's P (100-6,000) already tightens the bound and its loss feedback loosens it back: the
    ordinary alignment factor (blocks below −0.3) is for P ≤ 3 only; with `align_below_propagating`
    off the IRNN rows stay as they were in session 7's first round."""
    for host in (True, False):
        off = Auto(spike=20.0, align_below_propagating=None)
        records, factors = _run(ALTERNATING, host=host, profiles=_p40, policy=off)
        plain, _ = _run(ALTERNATING, host=host, weights=False, profiles=_p40, policy=off)
        assert factors[-1] < 1.0  # measured, but not applied
        torch.testing.assert_close(records, plain, rtol=1e-6, atol=0)


@pytest.mark.parametrize("host", [True, False], ids=["host-floats", "device-tensors"])
def test_auto_strong_anti_alignment_tightens_the_bound_where_the_propagation_factor_does(host):
    """Issue #14 (session 7, branch tune): "IRNN adding T=200" seeds 8 and 9 diverged in a period-2
    bounce across a valley under a bound that binds every step (blocks of cos(g_t, −Δθ_{t−1}) of −0.9
    to −1); P > 3 kept the alignment factor off there. Now a mostly-clipped block below
    `align_below_propagating` = −0.8 tightens the bound there too (×0.7 a block, down to 1/16)."""
    records, _ = _run(ALTERNATING, host=host, profiles=_p40)
    plain, _ = _run(ALTERNATING, host=host, weights=False, profiles=_p40)
    ratio = (records[:, 3] / plain[:, 3]).tolist()
    expected = [1.0] * 20 + [max(0.7 ** n, 1 / 16) for n in range(1, 11) for _ in range(10)]
    assert ratio[:20] == pytest.approx([1.0] * 20, rel=1e-6)
    assert ratio == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("host", [True, False], ids=["host-floats", "device-tensors"])
def test_auto_mild_anti_alignment_leaves_the_bound_alone_where_the_propagation_factor_tightens_it(host):
    """Blocks of −0.3 to −0.8 (IRNN T=150, T=300, multiplication: single samples down to −0.98 on some
    blocks, about −0.5 typically) tighten the ordinary factor only: with P > 3 the bound is unchanged."""
    records, factors = _run(ALTERNATING, host=host, profiles=_p40, noise=1.0)  # cos ≈ −0.5
    plain, _ = _run(ALTERNATING, host=host, weights=False, profiles=_p40, noise=1.0)
    assert factors[-1] < 1.0  # the ordinary factor (below −0.3) tightened: measured as mild overshoot
    torch.testing.assert_close(records, plain, rtol=1e-6, atol=0)


def test_auto_alignment_on_host_floats_and_device_tensors_agree():
    signs = ALTERNATING[:50] + [1.0] * 30 + ALTERNATING[:40]  # tighten, hold, tighten
    host, host_f = _run(signs, host=True)
    device, device_f = _run(signs, host=False)
    torch.testing.assert_close(host, device, rtol=1e-5, atol=0)
    assert host_f == pytest.approx(device_f, rel=1e-6)


def _forbid(*_args, **_kw):
    raise AssertionError("a host-device sync (item/tolist/bool/float/numpy) in the clipping path")


def test_auto_alignment_never_reads_a_tensor_on_the_host(monkeypatch):
    """The device path: the cosine, the block means and the factor stay 0-d tensors (torch.where, no branch)."""
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, _forbid)
    torch.manual_seed(0)
    model = Tiny()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=50.0, momentum=0.9)
    actions = build_actions(Auto(spike=20.0), False)
    actions.clipper.host = False
    actions.observe_recurrent([nn.RNN], [model.rnn.weight_hh_l0])
    for step in range(40):
        for p in params:
            p.grad = (-1.0) ** step * torch.ones_like(p)
        actions.before_step([opt])
        opt.step()
    factor = actions.clipper.alignment.factor
    assert isinstance(factor, torch.Tensor)
    monkeypatch.undo()
    assert float(factor) < 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_alignment_does_not_synchronize_on_cuda():
    torch.manual_seed(0)
    model = Tiny().cuda()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=50.0)
    actions = build_actions(Auto(spike=20.0), False)
    actions.observe_recurrent([nn.RNN], [model.rnn.weight_hh_l0])
    for step in range(40):
        for p in params:
            p.grad = (-1.0) ** step * torch.ones_like(p)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            actions.before_step([opt])
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert float(actions.clipper.alignment.factor) < 1.0


def test_watch_tells_auto_the_recurrent_weights_of_the_watched_modules():
    """Under `gradwatch.watch` the monitor passes the hidden-to-hidden matrices (weight_hh*) to auto."""
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradwatch.watch(model, opt, clip="auto", console=False)
    try:
        clipper = monitor._actions.clipper
        assert clipper.alignment._ids == frozenset({id(model.rnn.weight_hh_l0)})
    finally:
        monitor.close()


def test_alignment_feedback_ignores_steps_with_no_update_and_non_finite_gradients():
    """A zero update (weights put back, a skipped step) or a NaN gradient gives no sample: the factor stays."""
    fb = AlignmentFeedback(window=2, every=1, below=-0.3, tighten=0.5, lowest=0.25)
    fb.use([w := nn.Parameter(torch.ones(3))])
    batch = type("B", (), {})()
    batch.params = [w]
    w.grad = torch.ones(3)
    batch.grads = [w.grad]
    for _ in range(6):  # the weights never move
        fb.step(batch, True)
    assert fb.factor == 1.0 and math.isnan(fb.last)
    w.grad = torch.full((3,), math.nan)
    batch.grads = [w.grad]
    with torch.no_grad():
        w.add_(1.0)
    fb.step(batch, True)
    fb.step(batch, True)
    assert fb.factor == 1.0


@pytest.mark.parametrize("kw", [{"align_every": 0}, {"align_window": 0}, {"align_below": 1.0}, {"align_below": -1.5},
                                {"align_tighten": 1.5}, {"align_tighten": 0.0}, {"align_lowest": 2.0},
                                {"align_every": 2.5}, {"align_below_propagating": -1.0},
                                {"align_below_propagating": True}])
def test_auto_rejects_alignment_settings_that_cannot_work(kw):
    with pytest.raises(GradwatchError, match="align_"):
        Auto(**kw)


def test_a_failing_alignment_measurement_stops_the_feedback_not_the_clipping():
    """An internal failure must never kill training: the alignment factor is switched off (back to 1)."""
    torch.manual_seed(0)
    model = Tiny()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=50.0)
    actions = build_actions(Auto(spike=20.0), False)
    actions.observe_recurrent([nn.RNN], [model.rnn.weight_hh_l0])

    def broken(*args, **kw):
        raise RuntimeError("boom")

    actions.clipper.alignment._measure = broken
    for step in range(30):
        for p in params:
            p.grad = (-1.0) ** step * torch.ones_like(p)
        record = actions.before_step([opt]).clip
        opt.step()
        assert record[2].item() <= 1.0
    assert actions.clipper.alignment_failed and actions.clipper.alignment.factor is None
    actions.observe_recurrent([nn.RNN], [model.rnn.weight_hh_l0])  # the monitor re-telling its modules
    assert not actions.clipper.alignment._ids


def _reference_alignment(weights, grads, clipped, *, window, every, below, tighten, lowest, binding=0.5):
    """The alignment feedback written out plainly (module docstring of `actions.alignment`): per step the
    cosine sampled (or NaN) and the factor after the step. Host floats: float32 dot products per tensor
    (numpy, as BLAS computes them), summed in double."""
    factor, total, samples, n_clipped, copy = 1.0, 0.0, 0.0, 0.0, None
    lasts, factors = [], []
    last = None
    for t, (ws, gs, c) in enumerate(zip(weights, grads, clipped)):
        if t % every == 0 and copy is not None:
            num = gg = dd = 0.0
            for g, prev, w in zip(gs, copy, ws):
                d = np.subtract(prev, w).reshape(-1)
                g = g.reshape(-1)
                num, gg, dd = num + float(np.dot(g, d)), gg + float(np.dot(g, g)), dd + float(np.dot(d, d))
            den = math.sqrt(gg * dd)
            last = num / den if den > 0 and math.isfinite(num / den) else math.nan
            if math.isfinite(last):
                total, samples = total + max(-1.0, min(1.0, last)), samples + 1.0
            copy = None
        if t % every == every - 1:
            copy = [w.copy() for w in ws]
        n_clipped += float(c)
        if (t + 1) % window == 0:
            if samples > 0 and n_clipped >= binding * window and total / samples < below:
                factor = max(factor * tighten, lowest)
            total = samples = n_clipped = 0.0
        lasts.append(last)
        factors.append(factor)
    return lasts, factors


@pytest.mark.parametrize("window,every", [(10, 10), (4, 2), (3, 1), (6, 4)])
@pytest.mark.parametrize("host", [True, False], ids=["host-floats", "device-tensors"])
def test_alignment_feedback_matches_a_plain_reference_computation_step_by_step(window, every, host):
    """Pins the measurement mechanics (session 7, branch cost: the bookkeeping was made cheaper, the
    results must not move): on random weight moves, gradients partly pointing back along the last move
    and random clipped flags, every sampled cosine and every factor equal a plain recomputation: to the
    bit for host floats, to float32 rounding for device tensors (whose decisions are the same)."""
    gen = np.random.default_rng(0)
    steps = 120
    shapes = [(6, 6), (5,), (4, 3)]  # the second is not a recurrent weight: never measured
    ws = [nn.Parameter(torch.from_numpy(gen.standard_normal(s).astype(np.float32))) for s in shapes]
    chosen = [ws[0], ws[2]]
    fb = AlignmentFeedback(window=window, every=every, below=-0.3, tighten=0.7, lowest=1 / 16)
    fb.use(chosen)
    batch = type("B", (), {})()
    batch.params = ws
    seen_w, seen_g, flags, lasts, factors = [], [], [], [], []
    previous = [w.detach().numpy().copy() for w in ws]
    for t in range(steps):
        back = gen.uniform(-0.5, 2.0)  # how strongly this gradient points back along the last move
        for w, prev in zip(ws, previous):
            move = w.detach().numpy() - prev
            w.grad = torch.from_numpy((back * move + 0.05 * gen.standard_normal(w.shape)).astype(np.float32))
        batch.grads = [w.grad for w in ws]
        clipped = bool(gen.uniform() < 0.8)
        seen_w.append([w.detach().numpy().copy() for w in chosen])
        seen_g.append([w.grad.numpy().copy() for w in chosen])
        flags.append(clipped)
        fb.step(batch, clipped if host else torch.tensor(clipped))
        lasts.append(None if fb.last is None else float(fb.last))
        factors.append(float(fb.factor))
        previous = [w.detach().numpy().copy() for w in ws]
        with torch.no_grad():
            for w in ws:
                w.add_(torch.from_numpy(gen.standard_normal(w.shape).astype(np.float32)) * 0.1)
    ref_lasts, ref_factors = _reference_alignment(seen_w, seen_g, flags, window=window, every=every,
                                                  below=-0.3, tighten=0.7, lowest=1 / 16)
    assert min(ref_factors) < 0.7 ** 2 and sum(1 for c in ref_lasts if c is not None and c > -0.3) > 3  # both ways
    if host:
        assert lasts == ref_lasts and factors == ref_factors
    else:
        assert [c is None for c in lasts] == [c is None for c in ref_lasts]
        assert [c for c in lasts if c is not None] == pytest.approx([c for c in ref_lasts if c is not None], abs=1e-5)
        assert factors == pytest.approx(ref_factors, rel=1e-6)


def test_auto_host_record_has_the_bits_torch_tensor_gives():
    """The host path's record is built from an array of C floats (cheaper than torch.tensor): same bits,
    overflow, subnormals and NaN included."""
    from gradwatch.actions.auto import _host_record

    values = [1.2345678901234, 1e300, -1e300, 3.4028235e38, 3.4028236e38, 1e-45, 7e-46, -0.0, math.nan, math.inf, 0.1]
    got, want = _host_record(*values), torch.tensor(values, dtype=torch.float32)
    assert got.dtype == torch.float32 and got.shape == (len(values),)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
