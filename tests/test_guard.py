"""skip_nonfinite=True: a poisoned step changes nothing, for every torch.optim optimizer, on every rank."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gradwatch
from gradwatch import GradwatchError
from gradwatch.actions import build_actions
from gradwatch.actions.base import NO_ACTION
from models import SeqClassifier, lm_batch


def _optimizers():
    o = torch.optim
    cases = [
        ("sgd", lambda ps: o.SGD(ps, lr=0.1)),
        ("sgd-nesterov-decay", lambda ps: o.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
        ("sgd-foreach-off", lambda ps: o.SGD(ps, lr=0.1, momentum=0.9, foreach=False)),
        ("adam", lambda ps: o.Adam(ps, lr=1e-2)),
        ("adam-amsgrad-foreach", lambda ps: o.Adam(ps, lr=1e-2, amsgrad=True, foreach=True)),
        ("adam-fused", lambda ps: o.Adam(ps, lr=1e-2, fused=True)),
        ("adamw", lambda ps: o.AdamW(ps, lr=1e-2)),
        ("adamax", lambda ps: o.Adamax(ps, lr=1e-2)),
        ("nadam", lambda ps: o.NAdam(ps, lr=1e-2)),
        ("radam", lambda ps: o.RAdam(ps, lr=1e-2)),
        ("rmsprop-centered-momentum", lambda ps: o.RMSprop(ps, lr=1e-3, momentum=0.9, centered=True)),
        ("adagrad", lambda ps: o.Adagrad(ps, lr=1e-2)),
        ("adadelta", lambda ps: o.Adadelta(ps)),
        ("asgd", lambda ps: o.ASGD(ps, lr=1e-2)),
        ("rprop", lambda ps: o.Rprop(ps, lr=1e-2)),
    ]
    if hasattr(o, "Adafactor"):
        cases.append(("adafactor", lambda ps: o.Adafactor(ps, lr=1e-2)))
    return cases


def same(a, b) -> bool:
    """Bit-identical nested state (tensors by torch.equal and dtype, everything else by ==)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], _clone(opt.state_dict())


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(v) for v in x)
    return x


def _step(model, opt, batch, *, poison: bool = False, monitor=None):
    x, y = batch
    out = model(x)
    loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    if poison:
        model.rnn.weight_hh_l0.grad[0, 0] = math.nan
        model.head.bias.grad[1] = math.inf
    opt.step()
    if monitor is not None:
        monitor.step(loss)


@pytest.mark.parametrize("name,make", _optimizers(), ids=[c[0] for c in _optimizers()])
def test_poisoned_step_leaves_parameters_and_optimizer_state_bit_identical(name, make):
    torch.manual_seed(0)
    batches = [lm_batch() for _ in range(4)]

    def fresh():
        torch.manual_seed(1)
        model = SeqClassifier(nn.LSTM, dropout=0.0)
        return model, make(model.parameters())

    model, opt = fresh()
    monitor = gradwatch.watch(model, opt, skip_nonfinite=True, console=False, strict=True)
    _step(model, opt, batches[0], monitor=monitor)
    _step(model, opt, batches[1], monitor=monitor)
    params, state = snapshot(model, opt)
    _step(model, opt, batches[2], poison=True, monitor=monitor)
    after_params, after_state = snapshot(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(params, after_params))
    assert same(state, after_state)
    _step(model, opt, batches[3], monitor=monitor)  # training goes on
    monitor.close()
    assert [s.skipped for s in monitor.history] == [False, False, True, False]

    ref, ref_opt = fresh()  # the same run without the poisoned batch at all
    for b in (batches[0], batches[1], batches[3]):
        _step(ref, ref_opt, b)
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters()))
    assert same(ref_opt.state_dict(), opt.state_dict())


def test_sparse_adam_skips_too():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = torch.optim.SparseAdam(emb.parameters(), lr=0.1)
    actions = build_actions(None, True)
    optimizers = [opt]
    for poison in (False, True):
        opt.zero_grad()
        out = emb(torch.tensor([1, 2, 3])).sum() * (math.nan if poison else 1.0)
        out.backward()
        weight, state = emb.weight.detach().clone(), _clone(opt.state_dict())
        assert actions.before_step(optimizers).skipped is poison
        opt.step()
    assert torch.equal(weight, emb.weight) and same(state, opt.state_dict())


def test_finite_steps_are_not_skipped_and_cost_nothing_else():
    model = SeqClassifier(nn.GRU, dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _step(model, opt, lm_batch())
    out = build_actions(None, True).before_step([opt])
    assert out == NO_ACTION and all(p.grad is not None for p in model.parameters())


def test_half_precision_gradients_are_not_mistaken_for_overflow():
    p = nn.Parameter(torch.zeros(4096, dtype=torch.float16))
    p.grad = torch.full((4096,), 60000.0, dtype=torch.float16)  # finite; its fp16 norm would overflow
    opt = torch.optim.SGD([p], lr=0.1)
    assert build_actions(None, True).before_step([opt]) == NO_ACTION
    p.grad[7] = math.inf
    assert build_actions(None, True).before_step([opt]).skipped


def test_guard_and_clipping_together_skip_before_clipping():
    model = SeqClassifier(nn.LSTM, dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradwatch.watch(model, opt, clip="auto", skip_nonfinite=True, console=False, strict=True)
    _step(model, opt, lm_batch(), monitor=monitor)
    _step(model, opt, lm_batch(), poison=True, monitor=monitor)
    _step(model, opt, lm_batch(), monitor=monitor)
    monitor.close()
    h = monitor.history
    assert [s.skipped for s in h] == [False, True, False]
    assert h[1].clip is None and h[0].clip is not None and h[2].clip is not None
    assert h[1].nonfinite is not None  # the stream still shows where the NaN was


def test_guard_rejects_lbfgs_and_missing_optimizer_and_non_bool():
    model = SeqClassifier()
    with pytest.raises(GradwatchError, match="LBFGS"):
        gradwatch.watch(model, torch.optim.LBFGS(model.parameters()), skip_nonfinite=True, console=False)
    with pytest.raises(GradwatchError, match="optimizer"):
        gradwatch.watch(model, skip_nonfinite=True, console=False)
    with pytest.raises(GradwatchError, match="True or False"):
        gradwatch.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), skip_nonfinite="yes", console=False)


# ----------------------------------------------------------------------- two processes (gloo)
def _rank_worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        actions = build_actions(None, True)
        optimizers = [opt]
        for step, bad_rank in enumerate((1, None)):
            # No DDP here: each rank has its own gradients, so only the all-reduce makes them agree.
            for p in model.parameters():
                p.grad = torch.ones_like(p) * (rank + 1)
            if rank == bad_rank:
                model.weight.grad[0, 0] = math.nan
            skipped = actions.before_step(optimizers).skipped
            assert skipped is (bad_rank is not None), (rank, step, skipped)
            assert all((p.grad is None) == skipped for p in model.parameters())
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_every_rank_skips_when_one_rank_has_a_nan(tmp_path):
    init_file = str(tmp_path / "init")
    # fork: the workers inherit the imported modules (spawn would re-import torch twice, ~20 s)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_rank_worker, args=(2, init_file), nprocs=2, join=True, start_method=method)
