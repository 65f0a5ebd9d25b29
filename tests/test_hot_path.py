"""The per-step path never turns a tensor into a Python number (the CPU stand-in for a host sync),
and memory stays flat over long runs."""

from __future__ import annotations

import gc
import sys
import tracemalloc

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.stream.readback import HOST_MARK
from models import CellDecoder, SeqClassifier

CONVERSIONS = ["item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__", "__format__", "cpu"]


@pytest.fixture
def forbid_conversions_in_gradwatch(monkeypatch):
    """Fail when gradwatch code converts a device tensor to Python (except read-back host buffers)."""
    calls = []

    def guard(name, original):
        def patched(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("gradwatch") and not getattr(self, HOST_MARK, False):
                calls.append(f"{caller}: Tensor.{name}")
                raise AssertionError(f"{caller} called Tensor.{name} in the per-step path")
            return original(self, *args, **kwargs)

        return patched

    for name in CONVERSIONS:
        monkeypatch.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
    yield calls
    assert not calls, calls


@pytest.mark.parametrize("every", [1, 10], ids=["probe-every-step", "default"])
def test_per_step_path_has_no_tensor_to_python_conversion(forbid_conversions_in_gradwatch, every):
    torch.manual_seed(0)
    m = nn.ModuleDict({"lm": SeqClassifier(nn.LSTM, bidirectional=True), "dec": CellDecoder()})
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    mon = gradwatch.watch(m, opt, every=every, console=False, strict=True)
    for _ in range(12):
        x = torch.randint(0, 20, (9, 3))
        loss = m["lm"](x).logsumexp(-1).mean() + m["dec"](torch.randn(5, 3, 4)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        mon.step(loss)
    mon.close()
    assert len(mon.history) == 12 and mon.history[-1].loss is not None


def test_memory_stays_flat_over_2000_steps():
    torch.manual_seed(0)
    m = nn.GRU(3, 4, num_layers=2)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    mon = gradwatch.watch(m, opt, every=3, console=False, history=20, strict=True)
    x = torch.randn(5, 2, 3)

    def run(n):
        for _ in range(n):
            out, _ = m(x)
            loss = out.pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step(); mon.step(loss)

    def tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    run(200)
    base_tensors = tensors()
    tracemalloc.start()
    run(800)  # allocator free lists and caches settle during the first steps
    gc.collect()
    base_mem = tracemalloc.get_traced_memory()[0]
    run(1000)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base_mem
    tracemalloc.stop()
    assert tensors() <= base_tensors
    mon.close()
    assert grown < 50_000, f"Python memory grew by {grown} bytes over steps 1000-2000"
