"""A labelled suite of small, reproducible training runs that judges gradwatch's detectors.

    $ python benchmarks/scenarios.py              # every scenario × 3 seeds, Markdown tables
    $ python benchmarks/scenarios.py --quick      # the fast subset (also run by tests/test_scenarios.py)
    $ python benchmarks/scenarios.py --only vanishing_long_tanh --seeds 0 --verbose

    >>> from benchmarks.scenarios import run_suite
    >>> results = run_suite(quick=True)           # a plain dict (for `gradwatch bench`)
    >>> results["ok"], results["signs"]["temporal_decay"]["recall"]

Each scenario is a real training run driven through `gradwatch.watch(model, opt,
console=False)`: small models (hidden ≤ 64, T ≤ 100) on synthetic data, one CPU thread.
Its label says which problem it shows and which signs (`Alert.sign`) a practitioner would
recognise in it. A run is judged on:

* recall: every labelled sign raised at `warning` or `critical` at least once;
* false alarms: any `warning`/`critical` on a healthy run (info is allowed);
* lead time: on a diverging run, steps between the first exploding warning and the first
  non-finite loss (must be ≥ 3);
* step 0: where the explosion is present at initialisation, an exploding warning at step 0;
* NaN localisation: a `non_finite` alert at the very step of the injected NaN, naming the
  module, layer, timestep and forward vs backward.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

import gradwatch
from gradwatch.records import Alert

__all__ = ["Scenario", "RunRecord", "SCENARIOS", "run_scenario", "judge", "run_suite", "markdown", "main"]

LEAD_TIME = 3
"""Least steps between the first exploding warning and the first non-finite loss."""
SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------------------- models and data
class SeqModel(nn.Module):
    """A recurrent module followed by a linear read-out of every timestep or of the last one."""

    def __init__(self, rnn: nn.Module, hidden: int, out: int, *, last: bool) -> None:
        super().__init__()
        self.rnn, self.head, self.last = rnn, nn.Linear(hidden, out), last

    def forward(self, x: torch.Tensor, poison_grad_at: int | None = None) -> torch.Tensor:
        y, _ = self.rnn(x)
        if poison_grad_at is not None:
            y.register_hook(lambda g: _poison(g, poison_grad_at))
        return self.head(y[:, -1] if self.last else y)


def _poison(grad: torch.Tensor, t: int) -> torch.Tensor:
    grad = grad.clone()
    grad[0, t, 0] = float("nan")
    return grad


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(10_000 + seed)


def _noise_task(gen: torch.Generator, *, batch: int, steps: int, features: int, target: Callable) -> Callable:
    """Fresh Gaussian sequences each step; `target(x)` builds the labels."""

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch, steps, features, generator=gen)
        return x, target(x)

    return batch_at


WORDS = ("the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "red", "hat", "and", "sun")


def _text_task(gen: torch.Generator, *, batch: int, steps: int) -> tuple[Callable, int]:
    """Character-level language modelling on random sequences of short words: short memory."""
    chars = sorted(set("".join(WORDS)) | {" "})
    index = {c: i for i, c in enumerate(chars)}
    picks = torch.randint(0, len(WORDS), (6000,), generator=gen).tolist()
    text = torch.tensor([index[c] for c in " ".join(WORDS[i] for i in picks)])
    vocab = len(chars)

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = torch.randint(0, len(text) - steps - 1, (batch,), generator=gen)
        rows = torch.stack([text[s : s + steps + 1] for s in start.tolist()])
        return F.one_hot(rows[:, :-1], vocab).float(), rows[:, 1:]

    return batch_at, vocab


def _ce_all(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


# ---------------------------------------------------------------------------------------- one run
@dataclass
class RunRecord:
    """What one (scenario, seed) run produced."""

    scenario: str
    seed: int
    alerts: list[Alert]
    losses: list[float]
    steps: int
    first_nonfinite_loss: int | None
    seconds: float
    history: list[Any] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class NanSpec:
    """Where a scenario injects a NaN, and therefore where it must be reported."""

    step: int
    timestep: int
    where: str  # "input" (into the input batch) or "backward" (into the output gradient)
    module: str = "rnn"
    layer: int = 0


def _train(
    name: str,
    seed: int,
    model: SeqModel,
    opt: torch.optim.Optimizer,
    batch_at: Callable,
    loss_fn: Callable,
    *,
    steps: int,
    options: dict[str, Any],
    lr_at: Callable[[int], float] | None = None,
    nan: NanSpec | None = None,
    keep_history: bool = False,
) -> RunRecord:
    """Train with gradwatch watching. With `nan`, a non-finite step is skipped (set_to_none) as a careful
    user's guard would; without it, a run whose loss turned non-finite is stopped two steps later."""
    monitor = gradwatch.watch(model, opt, console=False, **options)
    losses: list[float] = []
    first_bad = None
    began = time.perf_counter()
    history: list[Any] = []
    for step in range(steps):
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
        x, y = batch_at(step)
        poison = None
        if nan is not None and nan.step == step:
            if nan.where == "input":
                x = x.clone()
                x[3, nan.timestep] = float("nan")
            else:
                poison = nan.timestep
        loss = loss_fn(model(x, poison_grad_at=poison), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if nan is not None:
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            if not torch.isfinite(total):
                opt.zero_grad(set_to_none=True)  # the user's own guard: skip the poisoned update
        opt.step()
        monitor.step(loss)
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value) and first_bad is None:
            first_bad = step
        if nan is None and first_bad is not None and step >= first_bad + 2:
            break
    monitor.close()
    if keep_history:
        history = list(monitor.history)
    return RunRecord(name, seed, list(monitor.alerts), losses, len(losses), first_bad,
                     time.perf_counter() - began, history)


# ---------------------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Scenario:
    """A labelled training run."""

    name: str
    label: str
    """'healthy', 'vanishing' or 'exploding'."""
    signs: tuple[str, ...]
    """Signs the run is built to show; each must be raised at warning or above."""
    description: str
    build: Callable[..., RunRecord]
    quick: bool = False
    """Part of the fast subset."""
    diverges: bool = False
    """The loss turns non-finite: lead time is judged."""
    at_step0: bool = False
    """The explosion is present at initialisation: an exploding warning is due at step 0."""
    nan: NanSpec | None = None

    def run(self, seed: int, *, options: dict[str, Any] | None = None, keep_history: bool = False) -> RunRecord:
        torch.manual_seed(seed)
        return self.build(self, seed, dict(options or {}), keep_history)


def healthy_tiny_loss(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """GRU regression of the sum of the last 2 inputs; SGD+momentum drives the loss (and gradients) to ~0."""
    gen = _generator(seed)
    model = SeqModel(nn.GRU(4, 32, batch_first=True), 32, 1, last=True)
    batch_at = _noise_task(gen, batch=64, steps=20, features=4, target=lambda x: x[:, -2:, :1].sum(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return _train(sc.name, seed, model, opt, batch_at, F.mse_loss, steps=300, options=options, keep_history=keep)


def healthy_char_lm(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """Character-level LSTM language model (short memory, loss at every timestep), Adam 3e-3."""
    gen = _generator(seed)
    batch_at, vocab = _text_task(gen, batch=32, steps=64)
    model = SeqModel(nn.LSTM(vocab, 64, batch_first=True), 64, vocab, last=False)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return _train(sc.name, seed, model, opt, batch_at, _ce_all, steps=200, options=options, keep_history=keep)


def healthy_short_memory(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """2-layer GRU classifying the sign of the last 4 inputs of 60: strong temporal decay, yet it learns."""
    gen = _generator(seed)
    model = SeqModel(nn.GRU(4, 32, num_layers=2, batch_first=True), 32, 2, last=True)
    target = lambda x: (x[:, -4:, 0].sum(1) > 0).long()  # noqa: E731
    batch_at = _noise_task(gen, batch=32, steps=60, features=4, target=target)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return _train(sc.name, seed, model, opt, batch_at, F.cross_entropy, steps=200, options=options, keep_history=keep)


def healthy_delayed_copy(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """2-layer LSTM (dropout) copying the token seen 5 steps earlier; Adam at a brisk 1e-2."""
    gen = _generator(seed)
    vocab, steps = 8, 40

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        tok = torch.randint(0, vocab, (32, steps), generator=gen)
        return F.one_hot(tok, vocab).float(), torch.roll(tok, 5, dims=1)

    model = SeqModel(nn.LSTM(vocab, 48, num_layers=2, dropout=0.1, batch_first=True), 48, vocab, last=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return _train(sc.name, seed, model, opt, batch_at, _ce_all, steps=200, options=options, keep_history=keep)


def healthy_small_batch_sgd(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """GRU regression at batch 8 (SGD 0.05, momentum 0.9): skewed, heavy mini-batch noise around a falling loss."""
    gen = _generator(seed)
    model = SeqModel(nn.GRU(4, 32, batch_first=True), 32, 1, last=True)
    batch_at = _noise_task(gen, batch=8, steps=30, features=4, target=lambda x: x[:, -3:, :1].sum(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return _train(sc.name, seed, model, opt, batch_at, F.mse_loss, steps=300, options=options, keep_history=keep)


def healthy_noisy_plateau(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """LSTM regression, Adam 1e-3, batch 32, 300 steps: the loss reaches a plateau and wanders on it."""
    gen = _generator(seed)
    model = SeqModel(nn.LSTM(4, 32, batch_first=True), 32, 1, last=True)
    batch_at = _noise_task(gen, batch=32, steps=30, features=4, target=lambda x: x[:, -3:, :1].sum(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return _train(sc.name, seed, model, opt, batch_at, F.mse_loss, steps=300, options=options, keep_history=keep)


def vanishing_long_tanh(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """Vanilla tanh RNN, T=100, label = sign of the first input: the signal cannot travel 100 steps back."""
    gen = _generator(seed)
    model = SeqModel(nn.RNN(4, 32, batch_first=True), 32, 2, last=True)
    batch_at = _noise_task(gen, batch=32, steps=100, features=4, target=lambda x: (x[:, 0, 0] > 0).long())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return _train(sc.name, seed, model, opt, batch_at, F.cross_entropy, steps=200, options=options, keep_history=keep)


def vanishing_dead_relu(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """ReLU RNN whose biases start at −1.5: nearly every unit outputs 0 for every input, so nothing learns."""
    gen = _generator(seed)
    rnn = nn.RNN(4, 32, nonlinearity="relu", batch_first=True)
    with torch.no_grad():
        rnn.bias_ih_l0.fill_(-1.5)
        rnn.bias_hh_l0.fill_(-1.5)
    model = SeqModel(rnn, 32, 1, last=True)
    batch_at = _noise_task(gen, batch=32, steps=50, features=4, target=lambda x: x[:, -5:, :1].sum(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return _train(sc.name, seed, model, opt, batch_at, F.mse_loss, steps=200, options=options, keep_history=keep)


def vanishing_saturated_tanh(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """tanh RNN fed raw, unnormalised features (mean 50): most units sit at ±1 and pass almost no gradient."""
    gen = _generator(seed)
    model = SeqModel(nn.RNN(4, 32, batch_first=True), 32, 1, last=True)

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(32, 50, 4, generator=gen)
        return 50.0 + x, x[:, -3:, :1].sum(1)

    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return _train(sc.name, seed, model, opt, batch_at, F.mse_loss, steps=200, options=options, keep_history=keep)


def vanishing_tiny_updates(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """3-layer tanh RNN initialised 30× too small, plain SGD at 1e-3: the bottom layers barely move."""
    gen = _generator(seed)
    rnn = nn.RNN(4, 32, num_layers=3, batch_first=True)
    with torch.no_grad():
        for p in rnn.parameters():
            p.mul_(0.03)
    model = SeqModel(rnn, 32, 1, last=True)
    batch_at = _noise_task(gen, batch=32, steps=30, features=4, target=lambda x: x[:, -5:, :1].sum(1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    return _train(sc.name, seed, model, opt, batch_at, F.mse_loss, steps=200, options=options, keep_history=keep)


def exploding_recurrent_gain(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """tanh RNN with weight_hh ~ N(0, 3²/hidden): the chaotic regime, where the gradient grows going back in time."""
    gen = _generator(seed)
    rnn = nn.RNN(4, 32, batch_first=True)
    with torch.no_grad():
        rnn.weight_hh_l0.normal_(0.0, 3.0 / 32**0.5)
    model = SeqModel(rnn, 32, 1, last=True)
    batch_at = _noise_task(gen, batch=32, steps=50, features=4, target=lambda x: x[:, -5:, :1].sum(1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    return _train(sc.name, seed, model, opt, batch_at, F.mse_loss, steps=60, options=options, keep_history=keep)


def exploding_lr_warmup(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """GRU regression whose linear warm-up climbs to a learning rate of 1 (momentum 0.9): it diverges."""
    gen = _generator(seed)
    model = SeqModel(nn.GRU(4, 32, batch_first=True), 32, 1, last=True)
    batch_at = _noise_task(gen, batch=32, steps=30, features=4, target=lambda x: x[:, -5:, :1].sum(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    return _train(sc.name, seed, model, opt, batch_at, F.mse_loss, steps=120, options=options,
                  lr_at=lambda s: min(1.0, (s + 1) / 30), keep_history=keep)


def exploding_lr_too_high(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """The same GRU regression started straight at a learning rate of 1 (plain SGD): it diverges at once."""
    gen = _generator(seed)
    model = SeqModel(nn.GRU(4, 32, batch_first=True), 32, 1, last=True)
    batch_at = _noise_task(gen, batch=32, steps=30, features=4, target=lambda x: x[:, -5:, :1].sum(1))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    return _train(sc.name, seed, model, opt, batch_at, F.mse_loss, steps=120, options=options, keep_history=keep)


def exploding_oscillation(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """LSTM copying the token 2 steps back with plain SGD at lr 10: the loss bounces and never settles."""
    gen = _generator(seed)
    vocab, steps = 8, 30

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        tok = torch.randint(0, vocab, (32, steps), generator=gen)
        return F.one_hot(tok, vocab).float(), torch.roll(tok, 2, dims=1)

    model = SeqModel(nn.LSTM(vocab, 32, batch_first=True), 32, vocab, last=False)
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    return _train(sc.name, seed, model, opt, batch_at, _ce_all, steps=150, options=options, keep_history=keep)


def _nan_run(sc: Scenario, seed: int, options: dict, keep: bool) -> RunRecord:
    """Healthy GRU language model; one batch carries a NaN at one timestep (forward) or in its gradient (backward)."""
    gen = _generator(seed)
    batch_at, vocab = _text_task(gen, batch=32, steps=60)
    model = SeqModel(nn.GRU(vocab, 48, batch_first=True), 48, vocab, last=False)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return _train(sc.name, seed, model, opt, batch_at, _ce_all, steps=50, options=options, nan=sc.nan,
                  keep_history=keep)


SCENARIOS: list[Scenario] = [
    Scenario("healthy_tiny_loss", "healthy", (), "GRU regression, SGD+momentum, loss → < 1 % of its start",
             healthy_tiny_loss, quick=True),
    Scenario("healthy_char_lm", "healthy", (), "char-level LSTM LM, Adam 3e-3 (short memory)", healthy_char_lm),
    Scenario("healthy_short_memory", "healthy", (), "2-layer GRU, T=60, label from the last 4 inputs",
             healthy_short_memory),
    Scenario("healthy_delayed_copy", "healthy", (), "2-layer LSTM copy-5-back, Adam 1e-2", healthy_delayed_copy),
    Scenario("healthy_small_batch_sgd", "healthy", (), "GRU regression, batch 8, SGD 0.05+momentum: noisy loss",
             healthy_small_batch_sgd, quick=True),
    Scenario("healthy_noisy_plateau", "healthy", (), "LSTM regression, Adam 1e-3, batch 32: noise on a plateau",
             healthy_noisy_plateau),
    Scenario("vanishing_long_tanh", "vanishing", ("temporal_decay", "slow_progress"),
             "tanh RNN, T=100, label = first input", vanishing_long_tanh, quick=True),
    Scenario("vanishing_dead_relu", "vanishing", ("dead_neurons", "slow_progress"),
             "ReLU RNN, biases −1.5: dead units", vanishing_dead_relu),
    Scenario("vanishing_saturated_tanh", "vanishing", ("dead_neurons", "slow_progress"),
             "tanh RNN fed unnormalised inputs (mean 50): saturated units", vanishing_saturated_tanh),
    Scenario("vanishing_tiny_updates", "vanishing", ("tiny_updates", "slow_progress"),
             "3-layer tanh RNN, init ×0.03, SGD 1e-3", vanishing_tiny_updates),
    Scenario("exploding_recurrent_gain", "exploding", ("temporal_growth", "norm_spike"),
             "tanh RNN, weight_hh gain 3 (chaotic), T=50", exploding_recurrent_gain, quick=True, at_step0=True),
    Scenario("exploding_lr_warmup", "exploding", ("norm_spike", "large_updates", "non_finite"),
             "GRU, SGD warm-up to lr 1 (momentum 0.9)", exploding_lr_warmup, quick=True, diverges=True),
    Scenario("exploding_lr_too_high", "exploding", ("large_updates", "norm_spike", "non_finite"),
             "GRU, plain SGD at lr 1 from the first step", exploding_lr_too_high, diverges=True),
    Scenario("exploding_oscillation", "exploding", ("oscillation",), "LSTM, plain SGD at lr 10",
             exploding_oscillation, quick=True),
    Scenario("nan_forward", "exploding", ("non_finite",), "GRU LM, NaN in the input at step 25, timestep 17",
             _nan_run, quick=True, nan=NanSpec(step=25, timestep=17, where="input")),
    Scenario("nan_backward", "exploding", ("non_finite",), "GRU LM, NaN in the output gradient at step 33, t=40",
             _nan_run, nan=NanSpec(step=33, timestep=40, where="backward")),
]


# ---------------------------------------------------------------------------------------- judging
def _serious(alerts: Iterable[Alert]) -> list[Alert]:
    return [a for a in alerts if a.severity in ("warning", "critical")]


def judge(sc: Scenario, rec: RunRecord) -> dict[str, Any]:
    """The verdict on one run: which labelled signs were caught, false alarms, lead time, localisation."""
    serious = _serious(rec.alerts)
    raised = sorted({a.sign for a in serious})
    verdict: dict[str, Any] = {
        "scenario": sc.name,
        "seed": rec.seed,
        "steps": rec.steps,
        "seconds": round(rec.seconds, 2),
        "raised": raised,
        "missed": [s for s in sc.signs if s not in raised],
        "extra": [s for s in raised if s not in sc.signs],
        "false_alarms": len(serious) if sc.label == "healthy" else 0,
        "first_alert_step": min((a.step for a in serious), default=None),
        "info": sorted({a.sign for a in rec.alerts if a.severity == "info"}),
    }
    if sc.label == "healthy":
        verdict["false_alarm_signs"] = raised
    exploding = [a for a in serious if a.problem == "exploding" and a.sign != "non_finite"]
    if sc.diverges:
        bad = rec.first_nonfinite_loss
        first = min((a.step for a in exploding), default=None)
        verdict["nonfinite_loss_step"] = bad
        verdict["lead_time"] = None if (bad is None or first is None) else bad - first
    if sc.at_step0:
        verdict["step0"] = any(a.step == 0 for a in exploding)
    if sc.nan is not None:
        verdict["nan_ok"], verdict["nan_found"] = _nan_verdict(sc.nan, serious)
    verdict["ok"] = _ok(sc, verdict)
    return verdict


_WHERE_WORDS = {"input": "already in the input", "forward": "in the forward", "backward": "only in the backward"}
"""How the non_finite alert words each place (`NonFinite.where`)."""


def _nan_verdict(spec: NanSpec, alerts: list[Alert]) -> tuple[bool, str]:
    hits = [a for a in alerts if a.sign == "non_finite" and a.step == spec.step]
    if not hits:
        return False, "no non_finite alert at the injected step"
    a = hits[0]
    where_ok = f"NaN/Inf {_WHERE_WORDS[spec.where]}" in a.message
    ok = a.severity == "critical" and a.module == spec.module and a.layer == spec.layer and a.timestep == spec.timestep
    said = next((where for where, words in _WHERE_WORDS.items() if words in a.message), "?")
    found = f"step {a.step}, {a.module}:{a.layer}, t={a.timestep}, {said}"
    return ok and where_ok, found


def _ok(sc: Scenario, v: dict[str, Any]) -> bool:
    if v["missed"] or v["false_alarms"]:
        return False
    if sc.diverges and (v.get("lead_time") is None or v["lead_time"] < LEAD_TIME):
        return False
    if sc.at_step0 and not v.get("step0"):
        return False
    return not (sc.nan is not None and not v.get("nan_ok"))


def run_scenario(sc: Scenario, seed: int, *, options: dict[str, Any] | None = None,
                 keep_history: bool = False) -> tuple[RunRecord, dict[str, Any]]:
    rec = sc.run(seed, options=options, keep_history=keep_history)
    return rec, judge(sc, rec)


def run_suite(
    *,
    quick: bool = False,
    seeds: Iterable[int] = SEEDS,
    only: Iterable[str] | None = None,
    options: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the scenarios and return every verdict plus per-scenario and per-sign aggregates."""
    torch.set_num_threads(1)
    chosen = [s for s in SCENARIOS if (not quick or s.quick) and (only is None or s.name in set(only))]
    seeds = tuple(seeds)
    runs = []
    for sc in chosen:
        for seed in seeds:
            _, verdict = run_scenario(sc, seed, options=options)
            runs.append(verdict)
            if progress is not None:
                progress(f"{sc.name} seed {seed}: {'ok' if verdict['ok'] else 'FAIL'} raised={verdict['raised']} "
                         f"({verdict['seconds']} s)")
    return _aggregate(chosen, seeds, runs)


def _aggregate(chosen: list[Scenario], seeds: tuple[int, ...], runs: list[dict[str, Any]]) -> dict[str, Any]:
    scenarios = {}
    for sc in chosen:
        mine = [r for r in runs if r["scenario"] == sc.name]
        expected = len(sc.signs) * len(mine)
        caught = sum(len(sc.signs) - len(r["missed"]) for r in mine)
        leads = [r["lead_time"] for r in mine if r.get("lead_time") is not None]
        scenarios[sc.name] = {
            "label": sc.label,
            "description": sc.description,
            "signs": list(sc.signs),
            "recall": caught / expected if expected else None,
            "false_alarms": sum(r["false_alarms"] for r in mine),
            "raised": sorted({s for r in mine for s in r["raised"]}),
            "extra": sorted({s for r in mine for s in r["extra"]}),
            "info": sorted({s for r in mine for s in r["info"]}),
            "first_alert": [r["first_alert_step"] for r in mine],
            "min_lead_time": min(leads) if sc.diverges and len(leads) == len(mine) else None,
            "step0": all(r.get("step0") for r in mine) if sc.at_step0 else None,
            "nan_ok": sum(bool(r.get("nan_ok")) for r in mine) if sc.nan else None,
            "nan_found": [r.get("nan_found") for r in mine] if sc.nan else None,
            "runs": len(mine),
            "ok": all(r["ok"] for r in mine),
            "seconds": round(sum(r["seconds"] for r in mine), 1),
        }
    signs: dict[str, dict[str, Any]] = {}
    for sc in chosen:
        for sign in sc.signs:
            entry = signs.setdefault(sign, {"runs": 0, "caught": 0})
            for r in (r for r in runs if r["scenario"] == sc.name):
                entry["runs"] += 1
                entry["caught"] += sign not in r["missed"]
    for entry in signs.values():
        entry["recall"] = entry["caught"] / entry["runs"]
    healthy = [r for r in runs if scenarios[r["scenario"]]["label"] == "healthy"]
    return {
        "seeds": list(seeds),
        "scenarios": scenarios,
        "signs": signs,
        "runs": runs,
        "false_alarms": sum(r["false_alarms"] for r in healthy),
        "healthy_runs": len(healthy),
        "ok": all(s["ok"] for s in scenarios.values()),
    }


# ---------------------------------------------------------------------------------------- report
def markdown(results: dict[str, Any]) -> str:
    """The scenario table and the per-sign recall table, in Markdown."""
    n = len(results["seeds"])
    lines = [
        "| scenario | label | signs expected | recall | false alarms | first warning (step/seed) | "
        "lead time | NaN localised | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results["scenarios"].items():
        recall = "n/a" if s["recall"] is None else f"{s['recall'] * 100:.0f} %"
        lead = "" if s["min_lead_time"] is None else f"≥ {s['min_lead_time']} steps"
        if s["step0"] is not None:
            lead = (lead + "; " if lead else "") + ("step 0 ✓" if s["step0"] else "step 0 ✗")
        nan = "" if s["nan_ok"] is None else f"{s['nan_ok']}/{s['runs']} ({s['nan_found'][0]})"
        expected = ", ".join(s["signs"]) or "—"
        extra = f" (+{', '.join(s['extra'])})" if s["extra"] else ""
        first = "/".join("—" if f is None else str(f) for f in s["first_alert"])
        lines.append(
            f"| {name} | {s['label']} | {expected}{extra} | {recall} | {s['false_alarms']} | {first} | {lead} | "
            f"{nan} | {'✓' if s['ok'] else '✗'} |"
        )
    lines += ["", "| sign | runs | caught | recall |", "|---|---|---|---|"]
    for sign, e in sorted(results["signs"].items()):
        lines.append(f"| {sign} | {e['runs']} | {e['caught']} | {e['recall'] * 100:.0f} % |")
    lines += [
        "",
        f"{len(results['scenarios'])} scenarios × {n} seeds; false alarms on healthy runs: {results['false_alarms']} "
        f"(over {results['healthy_runs']} runs); all criteria met: {'yes' if results['ok'] else 'NO'}.",
        "(+sign) in the expected column: other signs also raised at warning or above on that problem run.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the fast subset")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--only", nargs="+", help="scenario names")
    parser.add_argument("--verbose", action="store_true", help="print every run's progress and alerts")
    args = parser.parse_args(argv)
    if args.verbose:
        torch.set_num_threads(1)
        for sc in (s for s in SCENARIOS if args.only is None or s.name in args.only):
            for seed in args.seeds:
                rec, verdict = run_scenario(sc, seed)
                print(f"== {sc.name} seed {seed}: {verdict}")
                for a in rec.alerts:
                    print(f"  [{a.step:4d}] {a.severity:8} {a.problem}/{a.sign} {a.module}:{a.layer} t={a.timestep} "
                          f"{a.message[:200]}")
        return 0
    results = run_suite(quick=args.quick, seeds=args.seeds, only=args.only,
                        progress=lambda line: print(line, file=sys.stderr))
    print(markdown(results))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
