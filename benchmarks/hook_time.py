"""CPU time that gradwatch's own per-step code takes, measured inside its hooks.

    python benchmarks/hook_time.py                 # 2-layer LSTMs, hidden 64 and 256, every=10
    python benchmarks/hook_time.py --every 1       # probe on every step
    python benchmarks/hook_time.py --small         # issue #15's GRU (H=64, T=50, B=32, Adam), with the
                                                   # forward adapter's and backward hooks' own time too

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


def measure(hidden: int, *, every: int = 10, blocks: int = 30, block: int = 10, case: Case | None = None) -> float:
    """Median CPU µs per step spent in the monitor's end-of-step code (the first 5 blocks warm up)."""
    return measure_parts(case or Case(hidden=hidden, seq_len=32, batch=32, features=32),
                         every=every, blocks=blocks, block=block)["end of step"]


def measure_parts(case: Case, *, every: int = 10, blocks: int = 30, block: int = 10) -> dict[str, float]:
    """Median CPU µs per step in the end-of-step code, in the forward adapters (their own work, the
    module's forward excluded) and in the backward hooks (output-gradient and probe norms)."""
    from gradwatch.capture import probe, stack

    torch.manual_seed(0)
    model = _Model(case)
    opt_class = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam}[case.optimizer]
    opt = opt_class(model.parameters(), lr=1e-2 if case.optimizer == "SGD" else 1e-3)
    x = torch.randn(case.seq_len, case.batch, case.features)
    y = torch.randn_like(x)
    end, adapter, inner, backward = [0], [0], [0], [0]
    originals = {name: getattr(Monitor, name) for name in TIMED}
    patched = [(Monitor, name, fn) for name, fn in originals.items()]
    patched += [(stack.StackForward, "__call__", stack.StackForward.__call__), (probe, "timestep_norms", probe.timestep_norms),
                (stack, "_gradient_sink", stack._gradient_sink)]
    try:
        for name, fn in originals.items():
            setattr(Monitor, name, _timed(fn, end))
        stack.StackForward.__call__ = _timed(stack.StackForward.__call__, adapter)  # type: ignore[method-assign]
        probe.timestep_norms = _timed(probe.timestep_norms, backward)  # the backward probes' binding only
        make_sink = stack._gradient_sink  # the output-gradient hooks' sinks
        stack._gradient_sink = lambda *a: _timed(make_sink(*a), backward)
        monitor = gradwatch.watch(model, opt, every=every, console=False)
        for a in monitor._adapters:
            a.original = _timed(a.original, inner)
        per_step: dict[str, list[float]] = {"end of step": [], "forward adapter": [], "backward hooks": []}
        for _ in range(blocks):
            for counter in (end, adapter, inner, backward):
                counter[0] = 0
            for _ in range(block):
                loss = nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                monitor.step(loss)
            per_step["end of step"].append(end[0] / block / 1e3)
            per_step["forward adapter"].append((adapter[0] - inner[0]) / block / 1e3)
            per_step["backward hooks"].append(backward[0] / block / 1e3)
        monitor.close()
    finally:
        for owner, name, fn in patched:
            setattr(owner, name, fn)
    return {k: statistics.median(v[5:]) for k, v in per_step.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.small:
        for case in (Case(cell="GRU", hidden=64, seq_len=50, layers=1, optimizer="Adam"),
                     Case(cell="GRU", hidden=64, seq_len=20, layers=1, optimizer="Adam", per_token=True)):
            parts = measure_parts(case, every=args.every)
            print(f"GRU H={case.hidden} T={case.seq_len} B={case.batch} Adam{' per token' if case.per_token else ''}, "
                  f"every={args.every}: " + ", ".join(f"{k} {v:.0f} µs" for k, v in parts.items())
                  + f", total {sum(parts.values()):.0f} µs of CPU per step")
        return
    print(f"torch {torch.__version__}, 1 thread, every={args.every}; 2-layer LSTM, input 32, T=32, batch 32 "
          "(overhead.py's model)")
    for hidden in (64, 256):
        print(f"hidden {hidden}: {measure(hidden, every=args.every):.0f} µs of CPU per step in gradwatch's hooks")


if __name__ == "__main__":
    main()
