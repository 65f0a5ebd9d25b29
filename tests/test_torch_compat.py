"""The torch internals gradwatch reads (`capture/torch_compat.py`), pinned on the installed torch."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradwatch.capture import torch_compat


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
