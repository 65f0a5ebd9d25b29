"""The statistics stay right at extreme scales and for sparse gradients (float64 references)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.capture.probe import timestep_sumsq
from gradwatch.stats.tensor_stats import group_sumsq, stored_values
from models import SeqClassifier, lm_batch
from reference import reference_timestep_grads


def _f64_sumsq(t):
    return float(t.detach().double().pow(2).sum())


def test_group_sumsq_of_huge_finite_tensors_is_finite_and_exact():
    tensors = [torch.full((50,), 3e29), torch.randn(7, 3) * 1e25, torch.randn(4)]
    index = torch.tensor([0, 0, 1])
    got = group_sumsq(tensors, index, 2)
    assert got.dtype == torch.float64
    expected = [_f64_sumsq(tensors[0]) + _f64_sumsq(tensors[1]), _f64_sumsq(tensors[2])]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("time_dim,shape", [(0, (6, 3, 4)), (1, (3, 6, 4)), (None, (3, 4))], ids=["T-first", "batch-first", "cell"])
def test_timestep_sumsq_of_huge_finite_values_matches_float64(time_dim, shape):
    x = torch.randn(shape) * 1e30
    got = timestep_sumsq(x, time_dim)
    if time_dim is None:
        expected = torch.tensor(_f64_sumsq(x), dtype=torch.float64)
    else:
        other = tuple(d for d in range(x.dim()) if d != time_dim)
        expected = x.double().pow(2).sum(dim=other)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, expected.to(got.dtype), rtol=1e-12)


def test_packed_timestep_sumsq_of_huge_values_matches_float64():
    data = torch.randn(9, 4) * 1e28
    batch_sizes = torch.tensor([3, 3, 2, 1])
    got = timestep_sumsq(data, None, batch_sizes)
    rows = data.double().pow(2).sum(dim=1)
    expected = torch.stack([rows[0:3].sum(), rows[3:6].sum(), rows[6:8].sum(), rows[8:9].sum()])
    assert torch.allclose(got, expected, rtol=1e-12)


def _scaled_run(watch, scale=1e30):
    torch.manual_seed(0)
    m = SeqClassifier(nn.LSTM, dropout=0.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)  # lr 0: the huge gradients change nothing
    mon = gradwatch.watch(m, opt, every=1, console=False, strict=True) if watch else None
    x, y = lm_batch()
    out = m(x)
    loss = nn.functional.cross_entropy(out.reshape(-1, 20), y.reshape(-1)) * scale
    opt.zero_grad(); loss.backward()
    grads = [p.grad.detach().clone() for p in m.parameters()]
    opt.step()
    if mon:
        mon.step(loss)
        mon.close()
    return m, x, y, grads, mon


def test_loss_times_1e30_with_finite_gradients_is_not_reported_as_nonfinite():
    _, _, _, plain_grads, _ = _scaled_run(False)
    model, x, y, grads, mon = _scaled_run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, grads))  # watching changed nothing
    assert all(torch.isfinite(g).all() for g in grads)
    stats = mon.history[0]
    assert stats.nonfinite is None
    total = math.sqrt(sum(_f64_sumsq(g) for g in grads))
    assert stats.grad_norm == pytest.approx(total, rel=1e-6)
    names = dict(model.rnn.named_parameters())
    for layer in range(2):
        expected = math.sqrt(sum(_f64_sumsq(names[n].grad) for n in names if n.endswith(f"_l{layer}")))
        assert stats.layers[("rnn", layer)].grad_norm == pytest.approx(expected, rel=1e-6)
    # per-timestep norms against plain autograd on the unscaled loss (gradients are linear in the scale)
    ref = reference_timestep_grads(model.rnn, model.emb(x).detach(), None,
                                   lambda out, h: nn.functional.cross_entropy(model.head(out).reshape(-1, 20), y.reshape(-1)))
    for layer in range(2):
        got = stats.layers[("rnn", layer)].timestep_grad_norms
        assert all(math.isfinite(v) for v in got)
        assert got == pytest.approx([1e30 * v for v in ref[layer]], rel=1e-4)


# ------------------------------------------------------------------ sparse gradients
def test_stored_values_of_an_uncoalesced_sparse_tensor_give_its_norm():
    s = torch.sparse_coo_tensor(torch.tensor([[0, 0, 2]]), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), (4, 2))
    assert float(torch.linalg.vector_norm(stored_values(s))) == pytest.approx(float(torch.linalg.vector_norm(s.to_dense())))


def _sparse_run(watch):
    torch.manual_seed(0)
    m = SeqClassifier(nn.GRU)
    m.emb = nn.Embedding(20, 8, sparse=True)
    sparse = torch.optim.SparseAdam(list(m.emb.parameters()), lr=1e-2)
    dense = torch.optim.Adam(list(m.rnn.parameters()) + list(m.head.parameters()), lr=1e-2)
    mon = gradwatch.watch(m, [sparse, dense], console=False, strict=True) if watch else None
    totals = []
    for _ in range(4):
        x, y = lm_batch()
        x[0, :] = x[1, :]  # repeated tokens: the embedding gradient repeats indices (uncoalesced)
        out = m(x)
        loss = nn.functional.cross_entropy(out.reshape(-1, 20), y.reshape(-1))
        sparse.zero_grad(); dense.zero_grad(); loss.backward()
        assert m.emb.weight.grad.is_sparse
        dense_grads = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in m.parameters()]
        totals.append(float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in dense_grads]).double())))
        sparse.step(); dense.step()
        if mon:
            mon.step(loss)
    if mon:
        mon.close()
    return [p.detach().clone() for p in m.parameters()], totals, mon


def test_sparse_embedding_gradients_with_sparse_adam_give_records_with_the_dense_norm():
    plain, totals, _ = _sparse_run(False)
    watched, _, mon = _sparse_run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    assert mon.steps == 4 and len(mon.history) == 4
    assert [s.grad_norm for s in mon.history] == pytest.approx(totals, rel=1e-6)
    assert all(s.nonfinite is None for s in mon.history)


@pytest.mark.parametrize("scale", [1.0, 1e25, float("nan")], ids=["ordinary", "past-float32-overflow", "nan"])
def test_host_group_sumsq_gives_the_bits_of_group_sumsq(scale):
    """The CPU's Python-float path and the device path (`group_sumsq`) agree bit for bit, also when
    the float32 norms overflow and both fall back to float64, and on a NaN."""
    from gradwatch.stats.tensor_stats import group_sumsq, host_group_sumsq

    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(5, 3, generator=g) * scale, torch.randn(4, generator=g), torch.randn(2, 2, generator=g) * 3]
    slots = [0, 1, 0]
    host = torch.tensor(host_group_sumsq(tensors, slots, 3), dtype=torch.float64)
    device = group_sumsq(tensors, torch.tensor(slots), 3)
    assert torch.equal(host, device) or (scale != scale and torch.equal(host.isnan(), device.isnan()))
    if scale == 1e25:
        assert torch.isfinite(host).all()
