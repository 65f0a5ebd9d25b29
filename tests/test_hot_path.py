"""The per-step path never turns a tensor into a Python number (the CPU stand-in for a host sync).

Memory over long runs: tests/test_long_run.py."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import gradwatch
from models import CellDecoder, SeqClassifier

CONVERSIONS = ["item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__", "__format__", "cpu"]
HOST_SIDE = {
    ("gradwatch.stream.readback", "values"),  # a read-back's host buffer, once it has arrived
    ("gradwatch.stream.readback", "host_loss"),  # CPU-only: a float32 CPU loss read where it would be copied
    ("gradwatch.stats.tensor_stats", "_host_overflowed"),  # CPU-only: no device to wait for
    ("gradwatch.stats.tensor_stats", "host_group_sumsq"),  # CPU-only: parameter norms read as Python floats
    ("gradwatch.stats.tensor_stats", "host_total"),  # CPU-only: their total, with torch's summation order
    ("gradwatch.stats.tensor_stats", "host_all_finite"),  # CPU-only: a module's input/output proven finite
    ("gradwatch.distributed", "start"),  # the agreed lengths: a CPU tensor reduced over gloo
}
"""The (module, function) pairs that may turn a tensor into Python numbers: each reads a host buffer."""


@pytest.fixture
def forbid_conversions_in_gradwatch(monkeypatch):
    """Fail when gradwatch code converts a tensor to Python outside the host-side functions `HOST_SIDE`."""
    calls = []

    def guard(name, original):
        def patched(self, *args, **kwargs):
            frame = sys._getframe(1)
            caller = frame.f_globals.get("__name__", "")
            if caller.startswith("gradwatch") and (caller, frame.f_code.co_name) not in HOST_SIDE:
                calls.append(f"{caller}: Tensor.{name}")
                raise AssertionError(f"{caller} called Tensor.{name} in the per-step path")
            return original(self, *args, **kwargs)

        return patched

    for name in CONVERSIONS:
        monkeypatch.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
    yield calls
    assert not calls, calls


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
@pytest.mark.parametrize("every", [1, 10], ids=["probe-every-step", "default"])
def test_per_step_path_has_no_tensor_to_python_conversion(forbid_conversions_in_gradwatch, every, device_path,
                                                           monkeypatch):
    """`device-path`: the parameter reads take the path of device tensors (as on CUDA), not the CPU's
    host floats, so that the CPU stand-in checks the path CUDA runs."""
    if device_path:
        monkeypatch.setattr("gradwatch.capture.params._on_cpu", lambda tensors: False)
        monkeypatch.setattr("gradwatch.stream.accumulator._host_checkable", lambda x: False)
        monkeypatch.setattr("gradwatch.monitor.host_loss", lambda loss: None)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_a_cpu_loss_is_recorded_as_the_float32_value_of_its_copy(dtype):
    """Round 4: a float32 CPU loss is read directly (`readback.host_loss`) instead of copied; the
    record holds the same float as the float32 copy other dtypes (and CUDA) still take."""
    from gradwatch.stream.readback import host_loss, start_readback

    torch.manual_seed(0)
    model = nn.GRU(3, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradwatch.watch(model, opt, console=False)
    expected = []
    for _ in range(3):
        loss = model(torch.randn(5, 2, 3))[0].to(dtype).pow(2).mean() * 1.1
        opt.zero_grad(); loss.backward(); opt.step()
        expected.append(start_readback(loss.detach().reshape(1).float()).values()[0])
        mon.step(loss)
    mon.close()
    assert [r.loss for r in mon.history] == expected
    assert (host_loss(loss) is not None) == (dtype == torch.float32)


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
def test_inferring_the_chance_level_converts_no_tensor_to_python(forbid_conversions_in_gradwatch, device_path,
                                                                  monkeypatch):
    """Issue #13: counting the criterion's targets (cross-entropy with padding, MSE) and the estimate packed every
    10 steps stay on the device; the record still gets its level."""
    if device_path:
        monkeypatch.setattr("gradwatch.capture.params._on_cpu", lambda tensors: False)
        monkeypatch.setattr("gradwatch.stream.accumulator._host_checkable", lambda x: False)
        monkeypatch.setattr("gradwatch.monitor.host_loss", lambda loss: None)
    torch.manual_seed(0)
    m = SeqClassifier(nn.GRU)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, console=False, strict=True)
    for i in range(22):
        out = m(torch.randint(0, 20, (9, 3)))
        y = torch.randint(0, out.shape[-1], out.shape[:-1])
        y[0] = -100
        loss = (nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)) if i < 12
                else nn.functional.mse_loss(out, torch.randn_like(out)))
        opt.zero_grad(); loss.backward(); opt.step()
        mon.step(loss)
    mon.close()
    assert mon.history[11].chance_loss is not None and mon.history[-1].chance_loss is not None
