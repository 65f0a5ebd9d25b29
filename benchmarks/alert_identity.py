"""Dump every alert and record gradwatch produces on fixed inputs, to diff two versions of the code.

    python benchmarks/alert_identity.py corpus > /tmp/before-corpus.txt   # replay the cached corpus
    python benchmarks/alert_identity.py live > /tmp/before-live.txt       # small live runs: records + alerts
    ... change the code ...
    python benchmarks/alert_identity.py corpus | diff /tmp/before-corpus.txt -

`corpus` replays the detectors over every run saved in `.cache/corpus` (`benchmarks/corpus.py
generate`), with default options and again with the run's chance loss (`chance_loss=`), and prints
one line per alert: run, options, step, sign, severity, module, layer, timestep, value, threshold,
and the full message. `live` trains a few small models under `gradwatch.watch` (fused and cell
modules, a NaN, clipping, every=1) and prints every record (`repr`, floats exact) and every alert.
A change meant to be a pure speed-up must leave both dumps byte-identical.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradwatch  # noqa: E402
from benchmarks import corpus  # noqa: E402
from gradwatch.records import Alert  # noqa: E402


def alert_line(prefix: str, a: Alert) -> str:
    return (f"{prefix} step={a.step} sign={a.sign} severity={a.severity} module={a.module!r} layer={a.layer} "
            f"timestep={a.timestep} value={a.value!r} threshold={a.threshold!r} message={a.message!r}")


def dump_corpus(cache: Path) -> Iterable[str]:
    runs = corpus.load_runs(cache)
    total = 0
    for run in runs:
        name = corpus.Spec(**run["spec"]).name
        for label, options in (("default", {}), ("chance", {"chance_loss": run["chance"]})):
            for a in corpus.replay(run["records"], options):
                total += 1
                yield alert_line(f"{name} {label}", a)
    yield f"# {len(runs)} runs, {total} alerts"


class _Seq(nn.Module):
    def __init__(self, rnn: nn.Module, hidden: int) -> None:
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(hidden, 1)
        self.per_token = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.rnn, nn.RNNCellBase):
            h = None
            outs = []
            for t in range(x.shape[0]):
                h = self.rnn(x[t], h)
                outs.append(h[0] if isinstance(h, tuple) else h)
            y = torch.stack(outs)
        elif self.per_token:  # a decoding loop: the fused module called once per token, state chained
            state: Any = None
            outs = []
            for t in range(x.shape[0]):
                out, state = self.rnn(x[t : t + 1], state)
                outs.append(out)
            y = torch.cat(outs)
        else:
            y = self.rnn(x)[0]
        return self.head(y)


def _live_cases() -> list[tuple[str, Any, dict[str, Any], float, int | None]]:
    """(name, rnn factory, watch options, lr, step at which the input turns NaN)."""
    return [
        ("gru-adam", lambda: nn.GRU(8, 16), {}, 1e-2, None),
        ("lstm2-every1", lambda: nn.LSTM(8, 16, num_layers=2), {"every": 1}, 1e-2, None),
        ("rnn-relu-bi-lr-high", lambda: nn.RNN(8, 16, nonlinearity="relu", bidirectional=True), {}, 3.0, None),
        ("grucell-clip", lambda: nn.GRUCell(8, 16), {"clip": 0.5}, 1e-1, None),
        ("lstm-nan", lambda: nn.LSTM(8, 16), {}, 1e-2, 25),
        ("rnn-tanh-vanishing", lambda: nn.RNN(8, 16), {"every": 1}, 1e-6, None),
        # NaN/Inf located on ordinary and probe steps, in a fused stack, a cell and a relu overflow
        # (issue #15: a module's input and output are summed first, measured only when not finite)
        ("lstm2-nan-every3", lambda: nn.LSTM(8, 16, num_layers=2), {"every": 3}, 1e-2, 25),
        ("grucell-nan", lambda: nn.GRUCell(8, 16), {}, 1e-2, 25),
        ("rnn-relu2-lr-high", lambda: nn.RNN(8, 16, num_layers=2, nonlinearity="relu"), {}, 30.0, None),
        # decoding loops (a fused module called once per token): inputs summed at pack (issue #15, round 4)
        ("gru-per-token-adam", lambda: nn.GRU(8, 16), {}, 1e-2, None),
        ("lstm2-per-token-nan-every3", lambda: nn.LSTM(8, 16, num_layers=2), {"every": 3}, 1e-2, 25),
    ]


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else x.hex()
    if isinstance(x, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in x) + "]"
    if isinstance(x, dict):
        return "{" + ",".join(f"{k!r}:{_fmt(v)}" for k, v in x.items()) + "}"
    if hasattr(x, "__dataclass_fields__"):
        return type(x).__name__ + "(" + ",".join(f"{k}={_fmt(getattr(x, k))}" for k in x.__dataclass_fields__) + ")"
    return repr(x)


def dump_live(steps: int = 60) -> Iterable[str]:
    torch.set_num_threads(1)
    for name, make, options, lr, nan_at in _live_cases():
        torch.manual_seed(0)
        model = _Seq(make(), 32 if "bi" in name else 16)
        model.per_token = "per-token" in name
        opt = torch.optim.Adam(model.parameters(), lr=lr) if "adam" in name or "nan" in name else \
            torch.optim.SGD(model.parameters(), lr=lr)
        monitor = gradwatch.watch(model, opt, console=False, history=steps + 5, **options)
        for step in range(steps):
            x = torch.randn(12, 4, 8) * (4.0 if "high" in name else 1.0)
            if nan_at is not None and step >= nan_at:
                x[3, 1, 2] = float("nan")
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss)
        monitor.close()
        for rec in monitor.history:
            yield f"{name} record {_fmt(rec)}"
        for a in monitor.alerts:
            yield alert_line(name, a)
        yield f"# {name}: {len(monitor.history)} records, {len(monitor.alerts)} alerts"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("corpus", "live"))
    parser.add_argument("--cache", type=Path, default=corpus.CACHE)
    args = parser.parse_args()
    lines = dump_corpus(args.cache) if args.what == "corpus" else dump_live()
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
