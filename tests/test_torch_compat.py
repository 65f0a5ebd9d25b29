"""The torch internals gradwatch reads (`gradwatch/torch_compat.py`), pinned on the installed torch."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradwatch import torch_compat


class _Recorder(nn.Module):
    def __init__(self, probe):
        super().__init__()
        self.probe, self.seen = probe, []

    def forward(self, x):
        self.seen.append(self.probe())
        return (x * 2).sin()


def test_checkpoint_recomputation_is_detected_only_in_the_non_reentrant_recomputation():
    x = torch.randn(3, requires_grad=True)
    non_reentrant = _Recorder(torch_compat.in_checkpoint_recomputation)
    checkpoint(non_reentrant, x, use_reentrant=False).sum().backward()
    assert non_reentrant.seen == [False, True]  # the forward, then the recomputation in backward
    reentrant = _Recorder(torch_compat.in_checkpoint_recomputation)
    checkpoint(reentrant, x, use_reentrant=True).sum().backward()
    assert reentrant.seen == [False, False]
    plain = _Recorder(torch_compat.in_checkpoint_recomputation)
    plain(x).sum().backward()
    assert plain.seen == [False]


def test_stop_recomputation_error_is_torchs():
    from torch.utils import checkpoint as module

    assert torch_compat.stop_recomputation_error() is module._StopRecomputationError


def test_functorch_transform_is_detected():
    rec = _Recorder(torch_compat.functorch_transform_active)
    torch.func.grad(lambda x: rec(x).sum())(torch.randn(3))
    rec(torch.randn(3))
    assert rec.seen == [True, False]


def test_jit_tracing_is_detected():
    rec = _Recorder(torch_compat.jit_tracing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(rec, torch.randn(3), check_trace=False)
    rec(torch.randn(3))
    assert rec.seen == [True, False]


def test_scriptable_forward_runs_the_adapter_in_python_and_the_class_forward_when_scripted():
    calls = []
    lstm = nn.LSTM(3, 4)

    def adapter(input, hx=None):
        calls.append(1)
        return nn.LSTM.forward(lstm, input, hx)

    lstm.forward = torch_compat.scriptable_forward(adapter, nn.LSTM.forward).__get__(lstm)
    x = torch.randn(5, 2, 3)
    lstm(x)
    assert calls == [1]
    assert getattr(lstm.forward.__func__, torch_compat.ADAPTER_ATTRIBUTE) is adapter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(nn.Sequential(lstm))
    torch.testing.assert_close(scripted(x)[0], nn.LSTM.forward(lstm, x)[0], rtol=0, atol=0)
    assert calls == [1]  # the scripted module never calls back into Python


# -- foreach ops, nn.RNNBase, GradScaler and nn.Module internals --

import pytest  # noqa: E402
from torch.nn.utils import parametrizations  # noqa: E402

_FOREACH = ("_foreach_norm", "_foreach_mul_", "_foreach_clamp_min_", "_foreach_clamp_max_",
            "_foreach_copy_", "_foreach_sub_")


@pytest.fixture(params=["foreach", "fallback"])
def foreach_path(request, monkeypatch):
    """Run a test on the installed torch's foreach kernels and on the per-tensor fallback."""
    if request.param == "fallback":
        for name in _FOREACH:
            monkeypatch.delattr(torch, name)
    return request.param


def _tensors():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(5, generator=g), torch.randn(3, 4, generator=g), torch.randn((), generator=g) * 1e3]


@pytest.mark.parametrize("dtype", [None, torch.float64], ids=["own-dtype", "float64"])
def test_foreach_norm_is_each_tensors_l2_norm(foreach_path, dtype):
    ts = _tensors()
    got = torch_compat.foreach_norm(ts, dtype=dtype)
    for n, t in zip(got, ts):
        assert n.dtype == (dtype or t.dtype)
        torch.testing.assert_close(n, torch.linalg.vector_norm(t, dtype=dtype), rtol=1e-6, atol=0)


def test_foreach_norm_is_bitwise_torchs_foreach_kernel():
    ts = _tensors()
    for a, b in zip(torch_compat.foreach_norm(ts), torch._foreach_norm(ts, 2.0)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("factor", [0.5, torch.tensor(0.25)], ids=["float", "tensor"])
def test_foreach_mul_scales_each_tensor_in_place(foreach_path, factor):
    ts, ref = _tensors(), [t * factor for t in _tensors()]
    torch_compat.foreach_mul_(ts, factor)
    assert all(torch.equal(a, b) for a, b in zip(ts, ref))


def test_foreach_clamp_clamps_each_tensor_in_place(foreach_path):
    ts, ref = _tensors(), [t.clamp(-0.7, 0.7) for t in _tensors()]
    torch_compat.foreach_clamp_(ts, -0.7, 0.7)
    assert all(torch.equal(a, b) for a, b in zip(ts, ref))


def test_foreach_copy_and_sub_update_targets_in_place(foreach_path):
    targets, sources = [torch.zeros_like(t) for t in _tensors()], _tensors()
    torch_compat.foreach_copy_(targets, sources)
    assert all(torch.equal(a, b) for a, b in zip(targets, sources))
    torch_compat.foreach_sub_(targets, sources)
    assert all(torch.equal(a, torch.zeros_like(b)) for a, b in zip(targets, sources))


_RNNS = {"lstm": lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True),
         "gru": lambda: nn.GRU(3, 4, num_layers=2), "rnn-tanh": lambda: nn.RNN(3, 4),
         "rnn-relu": lambda: nn.RNN(3, 4, nonlinearity="relu", bias=False),
         "lstm-proj": lambda: nn.LSTM(3, 4, proj_size=2)}


@pytest.mark.parametrize("make", list(_RNNS.values()), ids=list(_RNNS))
def test_rnn_kernel_with_flat_weights_reproduces_the_modules_forward_bitwise(make):
    torch.manual_seed(0)
    m, x = make(), torch.randn(6, 2, 3)
    torch_compat.refresh_flat_weights(m)
    weights = torch_compat.flat_weights(m)
    assert [id(w) for w in weights] == [id(w) for layer in m.all_weights for w in layer]
    ndir = 2 if m.bidirectional else 1
    real = m.proj_size if getattr(m, "proj_size", 0) else m.hidden_size
    h = torch.zeros(m.num_layers * ndir, 2, real)
    hx = (h, torch.zeros(m.num_layers * ndir, 2, m.hidden_size)) if isinstance(m, nn.LSTM) else h
    got = torch_compat.rnn_kernel(m)(x, hx, weights, m.bias, m.num_layers, 0.0, False, m.bidirectional, False)
    assert torch.equal(got[0], m(x)[0])


def test_flat_weights_falls_back_to_all_weights_without_the_private_list():
    m = nn.GRU(3, 4, num_layers=2)
    expected = [id(w) for w in m._flat_weights]
    del m._flat_weights
    assert [id(w) for w in torch_compat.flat_weights(m)] == expected


def test_scaler_stage_follows_the_grad_scalers_bookkeeping():
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    assert all(hasattr(scaler, name) for name in torch_compat.SCALER_ATTRIBUTES)
    scaler.scale(w.sum()).backward()
    assert torch_compat.scaler_stage(scaler, opt) == "READY"
    scaler.unscale_(opt)
    assert torch_compat.scaler_stage(scaler, opt) == "UNSCALED"
    scaler.step(opt)
    assert torch_compat.scaler_stage(scaler, opt) == "STEPPED"


def test_replicate_for_data_parallel_uses_the_class_method_not_an_instance_override():
    m = nn.LSTM(3, 4)
    setattr(m, torch_compat.REPLICATE_ATTRIBUTE, lambda: "override")
    replica = torch_compat.replicate_for_data_parallel(m)
    assert isinstance(replica, nn.LSTM) and replica is not m
    assert replica.__dict__[torch_compat.REPLICATE_ATTRIBUTE]() == "override"  # __dict__ copied, as torch does


@pytest.mark.parametrize("make", [lambda: nn.LSTM(3, 4, num_layers=2),
                                  lambda: parametrizations.weight_norm(nn.GRU(3, 4), "weight_hh_l0"),
                                  lambda: nn.Sequential(nn.Linear(2, 3), nn.RNN(3, 4))],
                         ids=["plain-lstm", "parametrized-gru", "sequential"])
def test_parameters_in_order_is_module_parameters(make):
    m = make()
    assert [id(p) for p in torch_compat.parameters_in_order(m)] == [id(p) for p in m.parameters()]
