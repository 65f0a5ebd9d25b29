"""10,000 short steps: memory stays flat; close() lets go of the model and every tensor it held."""

from __future__ import annotations

import gc
import sys
import tracemalloc
import weakref

import pytest
import torch
from torch import nn

import gradwatch


def _tensors():
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def _train(model, opt, monitor, x, steps):
    for _ in range(steps):
        out, _ = model(x)
        loss = out.pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step(); monitor.step(loss)


GRADWATCH_CODE = [tracemalloc.Filter(True, "*/gradwatch/*")]


def _traced_growth(model, opt, monitor, x, settle, steps):
    """Bytes held by objects that gradwatch's code allocated, grown over `steps` steps (tracemalloc).

    Tracing starts `settle` steps earlier, so that the objects alive in the steady state (the
    bounded history, the pending step) were allocated while tracing and are in both snapshots.
    """
    tracemalloc.start()
    try:
        _train(model, opt, monitor, x, settle)
        gc.collect()
        before = tracemalloc.take_snapshot().filter_traces(GRADWATCH_CODE)
        _train(model, opt, monitor, x, steps)
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(GRADWATCH_CODE)
    finally:
        tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    return sum(s.size_diff for s in stats), "\n".join(str(s) for s in stats[:5])


def test_memory_stays_flat_from_step_2000_to_10000():
    """Allocator caches and the bounded history fill up during the first steps; from step 2,000 to
    10,000 the Python heap (allocated blocks), the gc-tracked objects and the live tensors must not
    grow, and tracemalloc (~3x slower per step, so only over the last 800 steps) must find nothing
    that gradwatch's code allocated piling up."""
    torch.manual_seed(0)
    model = nn.GRU(2, 3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    monitor = gradwatch.watch(model, opt, every=10, console=False, history=20, strict=True)
    x = torch.randn(3, 1, 2)

    _train(model, opt, monitor, x, 2_000)
    tensors0 = _tensors()
    objects0, blocks0 = len(gc.get_objects()), sys.getallocatedblocks()
    _train(model, opt, monitor, x, 7_200)
    traced, lines = _traced_growth(model, opt, monitor, x, settle=200, steps=600)
    tensors1 = _tensors()
    objects1, blocks1 = len(gc.get_objects()), sys.getallocatedblocks()
    monitor.close()

    assert monitor.steps == 10_000 and len(monitor.history) == 20
    assert tensors1 <= tensors0, f"live tensors {tensors0} -> {tensors1} between steps 2,000 and 10,000"
    assert objects1 - objects0 <= 50, f"gc-tracked objects {objects0} -> {objects1}"
    # one leaked object per step would be 8,000 blocks; caches settle within a few dozen
    assert blocks1 - blocks0 < 1_000, f"Python heap grew by {blocks1 - blocks0} blocks over steps 2,000-10,000"
    assert traced < 8_000, f"objects allocated by gradwatch grew by {traced} bytes over 600 steps:\n{lines}"


def test_memory_growth_is_detected():
    """The checks above can fail: a sink that keeps every record makes both measures grow."""

    class Hoarder:
        def __init__(self):
            self.kept = []

        def on_step(self, stats, alerts):
            self.kept.append(stats)

        def close(self, summary):
            pass

    model = nn.GRU(2, 3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    monitor = gradwatch.watch(model, opt, every=10, console=False, history=20, sinks=[Hoarder()])
    x = torch.randn(3, 1, 2)
    _train(model, opt, monitor, x, 100)
    gc.collect()
    blocks0 = sys.getallocatedblocks()
    traced, _ = _traced_growth(model, opt, monitor, x, settle=50, steps=300)
    gc.collect()
    monitor.close()
    assert sys.getallocatedblocks() - blocks0 > 1_000
    assert traced > 8_000


def _short_run(model, steps=3, every=1, **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    monitor = gradwatch.watch(model, opt, every=every, console=False, strict=True, **options)
    _train(model, opt, monitor, torch.randn(4, 2, 2), steps)
    return monitor, opt


def test_close_frees_the_update_snapshot_while_the_monitor_lives_on():
    model = nn.LSTM(2, 3, num_layers=2)
    monitor, opt = _short_run(model)
    snapshot = [weakref.ref(t) for t in monitor.params.snapshot]
    monitor.close()
    gc.collect()
    assert snapshot and all(ref() is None for ref in snapshot)
    assert monitor.history[-1].layers[("", 1)].timestep_grad_norms is not None  # the records stay


@pytest.mark.parametrize("clip", [None, "auto"], ids=["no-clip", "clip-auto"])
def test_close_frees_every_tensor_gradwatch_made(clip):
    """Once closed, the monitor (kept for its records) holds no tensor: the live tensors are the
    model's and the optimizer's, as in the same training without gradwatch."""
    torch.manual_seed(0)
    model = nn.LSTM(2, 3, num_layers=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, 2, 2)
    _train(model, opt, _NoMonitor(), x, 1)  # gradients and momentum buffers exist from here on
    unwatched = _tensors()
    monitor = gradwatch.watch(model, opt, every=1, console=False, strict=True, clip=clip)
    _train(model, opt, monitor, x, 3)
    monitor.close()
    assert _tensors() == unwatched


class _NoMonitor:
    def step(self, loss):
        pass


def test_a_closed_monitor_does_not_keep_the_model_alive(tmp_path):
    """Users keep the monitor for its history after training; dropping the model must free it."""
    model = nn.GRU(2, 3, num_layers=2)
    monitor, opt = _short_run(model, jsonl=tmp_path / "run.jsonl")
    monitor.close()
    refs = [weakref.ref(model)] + [weakref.ref(p) for p in model.parameters()]
    del model, opt
    gc.collect()
    assert [r() is None for r in refs] == [True] * len(refs)
    assert len(monitor.history) == 3 and monitor.steps == 3
