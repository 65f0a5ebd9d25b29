"""CPU time that gradwatch's own per-step code takes, measured inside its hooks.

    python benchmarks/hook_time.py                 # 2-layer LSTMs, hidden 64 and 256, every=10
    python benchmarks/hook_time.py --every 1       # probe on every step

The overhead benchmark (`overhead.py`) compares whole training steps, which on a shared VM swing
by several % between runs. This one times only gradwatch's work that runs at the end of a step
(the optimizer's pre- and post-step hooks and `monitor.step(loss)`: reading gradients, weights
and updates, clipping, packing, read-back, records, detectors) with the thread's CPU time, so it
resolves changes of tens of µs. It does not include the forward adapters or the backward probes
(see `overhead.py` for those). Reported: median over 10-step blocks (one probe step per block at
every=10) of the CPU time per step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradwatch  # noqa: E402
from gradwatch.monitor import Monitor  # noqa: E402

from overhead import Case, _Model  # noqa: E402  (the overhead benchmark's model and data shapes)

TIMED = ("_on_update_start", "_on_update_end", "step")
"""The monitor's entry points that run at the end of each training step."""


def _timed(fn: Callable[..., Any], spent: list[int]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[0] += time.thread_time_ns() - start
    return wrapper


def measure(hidden: int, *, every: int = 10, blocks: int = 30, block: int = 10) -> float:
    """Median CPU µs per step spent in the monitor's end-of-step code (the first 5 blocks warm up)."""
    torch.manual_seed(0)
    case = Case(hidden=hidden, seq_len=32, batch=32, features=32)
    model = _Model(case)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x = torch.randn(case.seq_len, case.batch, case.features)
    y = torch.randn_like(x)
    spent = [0]
    originals = {name: getattr(Monitor, name) for name in TIMED}
    try:
        for name, fn in originals.items():
            setattr(Monitor, name, _timed(fn, spent))
        monitor = gradwatch.watch(model, opt, every=every, console=False)
        per_step = []
        for _ in range(blocks):
            spent[0] = 0
            for _ in range(block):
                loss = nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                monitor.step(loss)
            per_step.append(spent[0] / block / 1e3)
        monitor.close()
    finally:
        for name, fn in originals.items():
            setattr(Monitor, name, fn)
    return statistics.median(per_step[5:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, every={args.every}; 2-layer LSTM, input 32, T=32, batch 32 "
          "(overhead.py's model)")
    for hidden in (64, 256):
        print(f"hidden {hidden}: {measure(hidden, every=args.every):.0f} µs of CPU per step in gradwatch's hooks")


if __name__ == "__main__":
    main()
