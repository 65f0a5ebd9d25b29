"""Where gradwatch's per-step CPU time goes, part by part, inside a real training loop.

    python benchmarks/step_parts.py                # GRU H=64, T=50, B=32, Adam, every=10, 1 thread
    python benchmarks/step_parts.py --per-token    # the same GRU called once per token, 20 calls per step
    python benchmarks/step_parts.py --reference    # the reference 2-layer LSTM, H=256, T=100, B=32, SGD

Each part is timed with the thread's CPU time where it runs in the loop (after backward, with
caches as training leaves them: the same code costs several times more there than in a
micro-benchmark run back to back). Reported: median over the non-probe steps, and mean over all
steps (probe steps included). "forward adapter (own)" excludes the module's own forward.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradwatch  # noqa: E402
import gradwatch.monitor as monitor_module  # noqa: E402
from gradwatch.capture import probe, stack  # noqa: E402
try:  # session 6: the chance level inferred from the criterion's targets (older code: not there)
    from gradwatch.capture.criteria import CriterionTargets  # noqa: E402
except ImportError:
    CriterionTargets = None
from gradwatch.capture.params import ParameterMap  # noqa: E402
from gradwatch.stream import accumulator  # noqa: E402
from gradwatch.stream.accumulator import StepAccumulator  # noqa: E402

PARTS = [
    (monitor_module.Monitor, "_on_update_start", "end of step: optimizer pre-hook"),
    (monitor_module.Monitor, "_on_update_end", "end of step: optimizer post-hook"),
    (monitor_module.Monitor, "step", "end of step: monitor.step(loss)"),
    (monitor_module.Monitor, "_attach_loss", "  loss hand-over (in step)"),
    (ParameterMap, "is_current", "  parameter map check"),
    (ParameterMap, "read_before_update", "  gradient + weight read"),
    (ParameterMap, "weight_and_update_sumsq", "  update read + snapshot"),
    (ParameterMap, "_check_snapshot", "  snapshot checks (in both reads)"),
    (StepAccumulator, "pack", "  pack"),
    (monitor_module, "start_readback", "  read-back start"),
    (monitor_module, "build_step_stats", "  record build"),
    (probe, "timestep_norms", "backward probes (probe steps: per-layer gradient norms)"),
    (accumulator, "host_all_finite", "finite-sum checks (forward; pack: one-token inputs)"),
    (CriterionTargets, "_observe", "criterion targets (in the loss call)"),
    (CriterionTargets, "estimate", "  chance estimate (in the post-hook, every 10 steps)"),
]
BACKWARD = "backward hooks (output-gradient norms)"


def _timed(owner: Any, name: str, spent: list[int]) -> Any:
    fn = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[-1] += time.thread_time_ns() - start

    setattr(owner, name, wrapper)
    return fn


def main(steps: int = 300, warmup: int = 50, every: int = 10, per_token: bool = False,
         reference: bool = False) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    hidden_size = 256 if reference else 64
    rnn = nn.LSTM(64, 256, num_layers=2) if reference else nn.GRU(64, 64)
    model = nn.ModuleDict({"rnn": rnn, "head": nn.Linear(hidden_size, 64)})
    opt = torch.optim.SGD(model.parameters(), lr=1e-3) if reference else torch.optim.Adam(model.parameters(), lr=1e-3)
    seq = 20 if per_token else 100 if reference else 50
    x, y = torch.randn(seq, 32, 64), torch.randn(seq, 32, 64)

    def forward() -> Any:
        if not per_token:
            return model["head"](model["rnn"](x)[0])
        outputs, hidden = [], None
        for t in range(seq):
            out, hidden = model["rnn"](x[t : t + 1], hidden)
            outputs.append(out)
        return model["head"](torch.cat(outputs))
    spent: dict[str, list[int]] = {label: [] for _, _, label in PARTS}
    adapter_total: list[int] = []
    module_forward: list[int] = []
    parts = [(owner, name, label) for owner, name, label in PARTS
             if owner is not None and hasattr(owner, name)]  # older code: fewer parts
    spent = {label: spent[label] for _, _, label in parts}
    originals = [(owner, name, _timed(owner, name, spent[label])) for owner, name, label in parts]
    originals.append((stack.StackForward, "__call__", _timed(stack.StackForward, "__call__", adapter_total)))
    spent[BACKWARD] = []
    make_sink = stack._gradient_sink
    originals.append((stack, "_gradient_sink", make_sink))
    stack._gradient_sink = lambda *a: _timed_call(make_sink(*a), spent[BACKWARD])
    try:
        monitor = gradwatch.watch(model, opt, every=every, console=False)
        detectors: list[int] = []
        _timed(monitor.detectors, "update", detectors)
        adapter = monitor._adapters[0]
        plain = adapter.original
        adapter.original = lambda *a: _run_timed(plain, a, module_forward)
        for _ in range(steps):
            for counter in [*spent.values(), adapter_total, module_forward, detectors]:  # noqa: B007
                counter.append(0)
            loss = nn.functional.mse_loss(forward(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss)
        monitor.close()
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    spent["  detectors"] = detectors
    spent["forward adapter (own)"] = [a - b for a, b in zip(adapter_total, module_forward)]
    shape = ("2-layer LSTM H=256 T=100 B=32 SGD" if reference else
             f"GRU H=64 {'T=20 per token (20 calls)' if per_token else 'T=50'} B=32 Adam")
    print(f"torch {torch.__version__}, 1 thread, {shape}, every={every}: CPU µs per step")
    top = ["end of step: optimizer pre-hook", "end of step: optimizer post-hook", "end of step: monitor.step(loss)",
           BACKWARD, "forward adapter (own)"]
    top += [k for k in ("criterion targets (in the loss call)",) if k in spent]
    spent["total (pre + post + step + backward + forward + criterion)"] = [sum(v) for v in zip(*(spent[k] for k in top))]
    for label, values in spent.items():
        values = values[warmup:]
        plain_steps = [v for i, v in enumerate(values) if (i + warmup) % every != 0]
        print(f"{label:42s} median {statistics.median(plain_steps) / 1e3:7.1f}   mean {statistics.mean(values) / 1e3:7.1f}")


def _timed_call(fn: Any, counter: list[int]) -> Any:
    def wrapper(*args: Any) -> Any:
        start = time.thread_time_ns()
        try:
            return fn(*args)
        finally:
            counter[-1] += time.thread_time_ns() - start
    return wrapper


def _run_timed(fn: Any, args: tuple, counter: list[int]) -> Any:
    start = time.thread_time_ns()
    try:
        return fn(*args)
    finally:
        counter[-1] += time.thread_time_ns() - start


if __name__ == "__main__":
    reference = "--reference" in sys.argv[1:]
    main(per_token="--per-token" in sys.argv[1:], reference=reference, **({"steps": 80, "warmup": 20} if reference else {}))
