"""`actions.batch.GradBatch.total_norm`: torch's public `get_total_norm` where torch has it, the same
steps where it does not, and bit for bit what `clip_grad_norm_` returns either way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch import torch_compat
from gradwatch.actions import batch as batch_module
from gradwatch.actions.batch import GradBatch
from gradwatch.stats.tensor_stats import stack_scalars


def _params(dtypes, scale=1.0, seed=0):
    torch.manual_seed(seed)
    params = [nn.Parameter(torch.randn(n, 7, dtype=dt)) for n, dt in zip((5, 3, 11, 2), dtypes)]
    for p in params:
        p.grad = torch.randn_like(p) * scale
    return params


def _reference(params):
    """clip_grad_norm_ with an infinite threshold returns the norm and leaves the gradients alone."""
    return nn.utils.clip_grad_norm_(params, float("inf"))


def _todays(batch):
    """gradwatch's computation before it used get_total_norm: the norm of the per-gradient norms."""
    return torch.linalg.vector_norm(stack_scalars(batch.norms))


DTYPES = {"float32": [torch.float32] * 4, "float64": [torch.float64] * 4,
          "mixed": [torch.float32, torch.float64, torch.float32, torch.float64]}


@pytest.fixture(params=["foreach", "public", "before-torch-2.6"])
def torch_api(request, monkeypatch):
    """`foreach`: the CPU's own path (one foreach norm per group); `public`: torch's get_total_norm, as on
    an accelerator; `before-torch-2.6`: GradBatch's own steps on a torch without it."""
    if request.param != "foreach":
        monkeypatch.setattr(batch_module, "LOOPS_PER_TENSOR", ())
    if request.param == "before-torch-2.6":
        monkeypatch.delattr(torch.nn.utils, "get_total_norm", raising=False)
    return request.param


@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e18], ids=["unit", "tiny", "huge"])
@pytest.mark.parametrize("dtypes", list(DTYPES.values()), ids=list(DTYPES))
def test_total_norm_is_bitwise_clip_grad_norm_and_todays_result(torch_api, dtypes, scale):
    params = _params(dtypes, scale)
    got = GradBatch(params).total_norm()
    assert torch.equal(got, _reference(params))
    assert torch.equal(got, _todays(GradBatch(params)))
    assert got.dtype == _reference(params).dtype


def test_total_norm_reuses_norms_already_taken_and_gives_the_same_bits():
    params = _params(DTYPES["mixed"])
    fresh, warmed = GradBatch(params), GradBatch(params)
    warmed.norms  # the guard reads the per-gradient norms first
    assert torch.equal(fresh.total_norm(), warmed.total_norm())


@pytest.mark.parametrize("device_loops_per_tensor", [True, False], ids=["cpu", "accelerator"])
def test_total_norm_calls_torchs_public_helper_except_where_it_loops_per_tensor(monkeypatch, device_loops_per_tensor):
    if not hasattr(torch.nn.utils, "get_total_norm"):
        pytest.skip("torch < 2.6 has no public get_total_norm")
    if not device_loops_per_tensor:
        monkeypatch.setattr(batch_module, "LOOPS_PER_TENSOR", ())
    calls = []
    real = torch.nn.utils.get_total_norm
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", lambda ts: calls.append(len(ts)) or real(ts))
    GradBatch(_params(DTYPES["float32"])).total_norm()
    assert calls == ([] if device_loops_per_tensor else [4])


def test_total_norm_of_sparse_gradients_matches_the_dense_norm(torch_api):
    emb = nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2, 1])).sum().backward()
    dense = emb.weight.grad.to_dense()
    assert torch.equal(GradBatch([emb.weight]).total_norm(), torch.linalg.vector_norm(dense))


def test_total_norm_without_torchs_public_helper_is_bitwise_torchs(monkeypatch):
    """torch < 2.6: `torch_compat.total_norm` has no helper to call, and GradBatch takes its steps itself."""
    params = _params(DTYPES["mixed"], 3.0)
    monkeypatch.setattr(batch_module, "LOOPS_PER_TENSOR", ())
    public = GradBatch(params).total_norm()
    monkeypatch.delattr(torch.nn.utils, "get_total_norm", raising=False)
    assert torch_compat.total_norm([p.grad for p in params]) is None
    assert torch.equal(GradBatch(params).total_norm(), public)
