"""A labelled corpus of short training runs, split by family, that judges the detectors on runs nobody tuned them on.

    $ python benchmarks/corpus.py generate            # ~330 runs, recorded once into .cache/corpus (minutes)
    $ python benchmarks/corpus.py report              # replay the detectors offline, held-out table + plot
    $ python benchmarks/corpus.py report --half calibration   # the half thresholds may be chosen on
    $ python benchmarks/corpus.py report --quick      # a dozen tiny runs, generated and judged in seconds
    $ python benchmarks/corpus.py report --round1-labels --out /tmp/x   # round 1's labels (no 'recovered')
    $ python benchmarks/corpus.py report --session4-labels --out /tmp/x # session 4's (no one-step 'recovered')
    $ python benchmarks/corpus.py generate --split fresh8     # a fresh split (160 runs; also fresh..fresh7)
    $ python benchmarks/corpus.py report --half fresh3 --chance --out /tmp/f3   # each run given its chance loss
    $ python benchmarks/corpus.py report --no-inferred-chance      # records without the inferred chance level
    $ python benchmarks/corpus.py check-chance --split fresh6       # live runs: recorded chance == reconstruction

    >>> from benchmarks.corpus import make_specs, record_run, replay
    >>> run = record_run(make_specs(12, quick=True)[0])      # trains once under gradwatch
    >>> alerts = replay(run["records"])                       # the detector suite over the saved records

Each run draws a family (task × cell × optimizer) and the rest of its setup (learning-rate level,
initialisation, batch size 1-64, sequence length 10-500, hidden size, layers) from a fixed random
stream. It is trained once under `gradwatch.watch(console=False)`; its `StepStats` records and raw
losses are pickled into the cache. The detectors are pure state machines over those records, so
`report` replays them in seconds for any threshold setting.

Labels come from the raw losses only, never from gradwatch (`label_run`):

* diverged: a loss is non-finite or above 100× the step-0 loss (the step where that happens is
  the divergence step);
* stuck: not diverged, and the median of the last 20 losses is still ≥ 0.9 × min(initial loss,
  chance loss) — no better than chance or than where it started;
* oscillating: not diverged or stuck, and the 5-step running median of the second half of the
  losses swings up and down by a factor ≥ 2 at least three times;
* recovered: none of those, but the 5-step running median of the loss reached ≥ 3× the step-0
  loss at some step: a sustained loss explosion that the run survived (a 5-step
  median ignores one hard sample in a batch-1 run). Warnings there are neither required nor false
  alarms; the report counts them apart. (Added in round 2 of issue #13: "healthy" = converged at
  the end had hidden such runs — a packed GRU whose loss sat at 25× its start for several steps.)
  Session 5 adds a one-step form: with a batch of 4 or more samples, a single step's loss ≥ 3× the
  step-0 loss is recovered too. A batch loss is the mean over its samples, so one hard sample cannot
  triple it (it would need ≥ 12× the untrained loss on its own); a batch mean at 3× the untrained
  model's loss is the model made worse by a step — what a practitioner calls an instability the run
  survived (a loss 1.42 → 24 → 1.2 at batch 4, 2.58 → 115 → 3.2 at batch 64), not convergence.
  Batch 1 keeps the 5-step median only. `report --session4-labels` gives the labels without it.
* raw sign (for lead times): the first step whose loss or total gradient norm is ≥ 10× its
  step-0 value; a diverging run "gives a sign k steps early" when that step is ≤ divergence − k;
* healthy: none of those, and the last-20 median is ≤ 0.8 × min(initial, chance) — it learned;
* slow: the rest (learned something, not enough to call it converged); left out of the targets.

Ambiguous at step 40 (`stuck_at`, also from the raw losses only): the stuck rule above, same windows and
margin, applied to the losses of steps 0-40 as if the run had ended there (its last-20 median is steps
21-40, its reference the median of steps 0-2; 41 losses, because a vanishing warning at step 40 still counts
as "within 40 steps" and has seen the loss of step 40; 20 steps is the rule's own window and fits after the
3 of the reference without overlap). A healthy run stuck at step 40 cannot be told from a stuck run *by that
rule*; a stuck run not stuck at step 40 (its loss was ≥ 10 % below the reference then) cannot be expected
to be known yet. `healthy_warned_bound` turns the counts into the fewest healthy runs a detector must warn
to reach the stuck target if it cannot tell the ambiguous runs apart. The rule is coarse at step 40 (its
20-step median lags a loss that began to fall at step 31; its 10 % margin calls a character model just
below the unigram entropy and still falling "stuck"), so the report also gives the form without the margin
(`margin=False`: the median of steps 21-40 at or above the reference). Neither is a proof: a detector sees
more than the label rule does (issue #13 session 5: gradwatch beats the bound with the margin on three
splits; see docs/detectors.md).

"Chance" is the loss of the best input-blind predictor: the target variance for regression (1/6
for the adding problem, 3 for the sum of three Gaussians), log K for K balanced classes, and the
unigram entropy of the text for the language model.

Families are split by a hash of their key into a calibration half (thresholds may be chosen on
it) and a held-out half (figures reported). Fresh splits (`FRESH_SPLITS`) are drawn from their own
seeds, with the calibration families redrawn and two optimizers the main corpus never uses
(RMSprop, Nesterov momentum); each was frozen in git before the detector changes it judges were
made or read (issue #13, session 4). `report --chance` gives each run its chance loss
(`watch(chance_loss=...)`), as a user who knows it would.

By default `report` gives each record the chance level gradwatch infers from the criterion's targets
(`StepStats.chance_loss`, session 6), as a user who passes nothing gets it. Runs cached before that
field existed are completed without training: their batches are drawn again from `Task(spec)` and each
step's criterion call is made on a stand-in prediction under gradwatch's own `CriterionTargets`
(`inferred_chances`); `check-chance` trains runs live and checks the reconstruction equals what the live
runs recorded. `--no-inferred-chance` replays the records as cached (the old defaults).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import math
import os
import pickle
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gradwatch  # noqa: E402
from gradwatch.capture.criteria import CriterionTargets  # noqa: E402
from gradwatch.detectors import DetectorConfig, DetectorSuite  # noqa: E402
from gradwatch.monitor import CHANCE_EVERY  # noqa: E402
from gradwatch.records import Alert  # noqa: E402

__all__ = ["Spec", "make_specs", "record_run", "label_run", "run_label", "replay", "inferred_chances", "with_chances",
           "evaluate", "markdown", "main"]

CACHE = ROOT / ".cache" / "corpus"
TASKS = ("adding", "first_token", "char_lm", "packed_last", "packed_first", "regression")
CELLS = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU", "LSTMCell", "GRUCell")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
FRESH_OPTIMIZERS = ("rmsprop", "nesterov")  # only in the fresh split: families nobody has seen
FRESH_SEED = 2026
FRESH_SPLITS = {"fresh": (FRESH_SEED, "F"), "fresh2": (2027, "G"), "fresh3": (2028, "H"), "fresh4": (2029, "J"),
               "fresh5": (2030, "K"), "fresh6": (2031, "L"), "fresh7": (2032, "M"),
               "fresh8": (2033, "N")}
"""Fresh splits: seed and run-name prefix. `fresh` was frozen before round 3's tuning and judged once at its end;
`fresh2` was frozen (generated) before anyone looked at round 3's misses, for round 4; `fresh3` before anyone looked
at round 4's misses (and judged round 4 once); `fresh4` before round 5, for round 5; `fresh5` (session 5) before any
detector or label change of session 5, to be read once when that code is final; `fresh6` (session 5, round 3) before
round 3's detector changes, to be read once when that code is final; `fresh7` (session 6) before any detector change
of session 6, to be read once when that code is final; `fresh8` (session 6, round 2) before round 2's detector changes,
to be read once when that code is final."""
FRESH_N = 160
LR_LEVELS = ("too_low", "good", "good", "good", "too_high", "warmup_high")
INITS = ("default", "default", "orthogonal", "identity", "scaled_up", "scaled_down")
BATCHES = (1, 4, 8, 16, 32, 64)
GOOD_LR = {"sgd": 0.3, "momentum": 0.05, "adam": 1e-2, "adamw": 1e-2, "rmsprop": 3e-3, "nesterov": 0.05}
LR_FACTOR = {"too_low": 1e-3, "good": 1.0, "too_high": 30.0, "warmup_high": 100.0}
WARMUP_STEPS = 20
CLASSES = 4
DIVERGED_FACTOR = 100.0
STUCK_SHARE = 0.9
HEALTHY_SHARE = 0.8
FINAL_WINDOW = 20
LEAD_WANTED, LEAD_LEAST = 5, 3
SIGN_FACTOR = 10.0
RECOVERED_FACTOR, RECOVERED_WIDTH = 3.0, 5
RECOVERED_ONE_STEP_BATCH = 4
"""Session 5: from this batch size on, one step's loss ≥ `RECOVERED_FACTOR` × the step-0 loss is 'recovered' too."""
VANISHING_WITHIN = 40
"""Issue #13's stuck target: a vanishing warning at step ≤ 40; also the step at which `stuck_at` judges ambiguity."""
STUCK_RECALL_WANTED = 0.95
"""Issue #13's stuck target: this share of stuck runs warned within `VANISHING_WITHIN` steps."""
LABEL_SETS = ("session5", "session4", "round1")
"""Label rules by version: session 5 (one-step 'recovered' at batch ≥ 4), session 4 (= round 2: 5-step median only),
round 1 (no 'recovered')."""
LABELS = ("diverged", "stuck", "oscillating", "recovered", "healthy", "slow")


# ---------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Spec:
    """One corpus run's setup."""

    index: int
    task: str
    cell: str
    optimizer: str
    lr_level: str
    init: str
    batch: int
    timesteps: int
    hidden: int
    layers: int
    steps: int
    seed: int
    split: str = "main"  # "main" (calibration or held-out by family hash) or a fresh split ("fresh", "fresh2")

    @property
    def family(self) -> str:
        return f"{self.task}/{self.cell}/{self.optimizer}"

    @property
    def half(self) -> str:
        """'calibration' or 'held-out', from a hash of the family key (stable across runs and machines);
        the split's name for a fresh split."""
        return self.split if self.split in FRESH_SPLITS else _family_half(self.family)

    @property
    def name(self) -> str:
        return (f"{FRESH_SPLITS[self.split][1] if self.split in FRESH_SPLITS else ''}{self.index:03d}-{self.task}-{self.cell}-{self.optimizer}-{self.lr_level}-{self.init}-b{self.batch}"
                f"-T{self.timesteps}")


def _family_half(family: str) -> str:
    return "calibration" if hashlib.sha1(family.encode()).digest()[0] % 2 == 0 else "held-out"


def make_specs(n: int = 330, *, seed: int = 0, quick: bool = False, fresh: bool | str = False) -> list[Spec]:
    """`n` setups drawn from the families; mostly T ≤ 100, one in ten long (200-500).

    `fresh=True` (or a name of `FRESH_SPLITS`): a fresh split, drawn from its own seed, with two optimizers the main
    corpus never uses (RMSprop, SGD with Nesterov momentum); a family of the calibration half is redrawn,
    so a fresh run is either of a held-out family (new seeds) or of a family nobody has seen."""
    split = ("fresh" if fresh is True else fresh) if fresh else "main"
    rng = random.Random(FRESH_SPLITS[split][0] if fresh and seed == 0 else seed)
    specs: list[Spec] = []
    while len(specs) < n:
        task, cell = rng.choice(TASKS), rng.choice(CELLS)
        if cell.endswith("Cell") and task.startswith("packed"):
            continue  # a hand-unrolled cell loop takes no PackedSequence
        optimizer = rng.choice(OPTIMIZERS + FRESH_OPTIMIZERS) if fresh else None
        if optimizer is not None and optimizer in OPTIMIZERS and _family_half(f"{task}/{cell}/{optimizer}") == "calibration":
            continue
        long = not quick and not cell.endswith("Cell") and rng.random() < 0.1
        timesteps = rng.choice((200, 300, 500)) if long else rng.choice((10, 20, 30, 50, 80, 100))
        if quick:
            timesteps = rng.choice((10, 16))
        batch = rng.choice(BATCHES if not long else (1, 4, 8))
        specs.append(Spec(
            index=len(specs), task=task, cell=cell, optimizer=optimizer or rng.choice(OPTIMIZERS),
            lr_level=rng.choice(LR_LEVELS),
            init=rng.choice(INITS), batch=batch, timesteps=timesteps,
            hidden=rng.choice((16, 32) if long or quick else (16, 32, 64)),
            layers=1 if (cell.endswith("Cell") or rng.random() < 0.7) else 2,
            steps=30 if quick else (80 if long else rng.choice((100, 120))), seed=rng.randrange(10_000),
            split=split,
        ))
    return specs


# ---------------------------------------------------------------------------------------- data
def _text() -> tuple[torch.Tensor, int, float]:
    """Characters of argparse's own source (shipped with Python), as indices; vocabulary; unigram entropy."""
    keep = set("abcdefghijklmnopqrstuvwxyz .,:()_='\n")
    raw = "".join(c if c in keep else "#" for c in inspect.getsource(argparse).lower())
    chars = sorted(set(raw))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in raw])
    counts = torch.bincount(ids, minlength=len(chars)).double()
    p = counts[counts > 0] / counts.sum()
    return ids, len(chars), float(-(p * p.log()).sum())


class Task:
    """Draws batches and knows its input width, output width, loss and chance-level loss."""

    def __init__(self, spec: Spec) -> None:
        self.spec, self.gen = spec, torch.Generator().manual_seed(spec.seed)
        self.packed = spec.task.startswith("packed")
        self.dense = spec.task == "char_lm"
        if spec.task == "char_lm":
            self.text, self.inputs, self.chance = _text()
            self.outputs = self.inputs
        elif spec.task == "adding":
            self.inputs, self.outputs, self.chance = 2, 1, 1 / 6
        elif spec.task == "regression":
            self.inputs, self.outputs, self.chance = 4, 1, 3.0
        else:
            self.inputs, self.outputs, self.chance = CLASSES, CLASSES, math.log(CLASSES)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x (B, T, F), y, lengths or None)."""
        s, g = self.spec, self.gen
        B, T = s.batch, s.timesteps
        if s.task == "adding":
            values = torch.rand(B, T, generator=g)
            marks = torch.zeros(B, T)
            rows = torch.arange(B)
            marks[rows, torch.randint(0, max(1, T // 2), (B,), generator=g)] = 1.0
            marks[rows, torch.randint(T // 2, T, (B,), generator=g)] = 1.0
            return torch.stack([values, marks], -1), (values * marks).sum(1, keepdim=True), None
        if s.task == "regression":
            x = torch.randn(B, T, 4, generator=g)
            return x, x[:, -3:, :1].sum(1), None
        if s.task == "char_lm":
            start = torch.randint(0, len(self.text) - T - 1, (B,), generator=g)
            rows = torch.stack([self.text[i : i + T + 1] for i in start.tolist()])
            return F.one_hot(rows[:, :-1], self.inputs).float(), rows[:, 1:], None
        tokens = torch.randint(0, CLASSES, (B, T), generator=g)
        x = F.one_hot(tokens, CLASSES).float()
        if s.task == "first_token":
            return x, tokens[:, 0], None
        lengths = torch.randint(2, T + 1, (B,), generator=g)
        x = x * (torch.arange(T)[None, :] < lengths[:, None]).unsqueeze(-1)  # zero padding
        label = tokens[:, 0] if s.task == "packed_first" else tokens[torch.arange(B), lengths - 1]
        return x, label, lengths

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        if self.outputs == 1:
            return F.mse_loss(out, y)
        return F.cross_entropy(out, y)


# ---------------------------------------------------------------------------------------- model
class Net(nn.Module):
    """A recurrent module (or a hand-unrolled cell) and a linear read-out."""

    def __init__(self, spec: Spec, task: Task) -> None:
        super().__init__()
        H, kind = spec.hidden, spec.cell
        self.kind, self.dense = kind, task.dense
        if kind.endswith("Cell"):
            self.rnn: nn.Module = getattr(nn, kind)(task.inputs, H)
        elif kind.startswith("RNN"):
            self.rnn = nn.RNN(task.inputs, H, num_layers=spec.layers, batch_first=True,
                              nonlinearity="relu" if kind == "RNN_RELU" else "tanh")
        else:
            self.rnn = getattr(nn, kind)(task.inputs, H, num_layers=spec.layers, batch_first=True)
        self.head = nn.Linear(H, task.outputs)
        _initialise(self.rnn, spec.init)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if self.kind.endswith("Cell"):
            h = torch.zeros(x.shape[0], int(getattr(self.rnn, "hidden_size")))
            state: Any = (h, h.clone()) if self.kind == "LSTMCell" else h
            outs = []
            for t in range(x.shape[1]):
                state = self.rnn(x[:, t], state)
                outs.append(state[0] if isinstance(state, tuple) else state)
            y = torch.stack(outs, 1)
            out: torch.Tensor = self.head(y if self.dense else y[:, -1])
            return out
        if lengths is not None:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            _, h_n = self.rnn(packed)
            h_n = h_n[0] if isinstance(h_n, tuple) else h_n
            last: torch.Tensor = self.head(h_n[-1])
            return last
        y, _ = self.rnn(x)
        dense: torch.Tensor = self.head(y if self.dense else y[:, -1])
        return dense


def _initialise(rnn: nn.Module, init: str) -> None:
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if init == "scaled_up":
                p.mul_(3.0)
            elif init == "scaled_down":
                p.mul_(0.1)
            elif name.startswith("weight_hh") and init == "orthogonal":
                for chunk in torch.split(p, p.shape[1]):
                    nn.init.orthogonal_(chunk)
            elif name.startswith("weight_hh") and init == "identity":
                for chunk in torch.split(p, p.shape[1]):
                    chunk.copy_(torch.eye(p.shape[1]))


def _optimizer(spec: Spec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    lr = GOOD_LR[spec.optimizer] * LR_FACTOR[spec.lr_level]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if spec.optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if spec.optimizer == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)


def _lr_at(spec: Spec, step: int) -> float | None:
    if spec.lr_level != "warmup_high":
        return None
    return GOOD_LR[spec.optimizer] * LR_FACTOR["warmup_high"] * min(1.0, (step + 1) / WARMUP_STEPS)


# ---------------------------------------------------------------------------------------- one run
def record_run(spec: Spec) -> dict[str, Any]:
    """Train `spec` once under gradwatch and return its raw outcome and `StepStats` records."""
    torch.manual_seed(spec.seed)
    task = Task(spec)
    model = Net(spec, task)
    opt = _optimizer(spec, model.parameters())
    monitor = gradwatch.watch(model, opt, console=False, history=10_000)
    losses: list[float] = []
    began = time.perf_counter()
    first_bad = None
    for step in range(spec.steps):
        lr = _lr_at(spec, step)
        if lr is not None:
            for group in opt.param_groups:
                group["lr"] = lr
        x, y, lengths = task.batch()
        loss = task.loss(model(x, lengths), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        monitor.step(loss)
        value = float(loss.detach())
        losses.append(value)
        if first_bad is None and (not math.isfinite(value) or value > DIVERGED_FACTOR * losses[0]):
            first_bad = step
        if first_bad is not None and step >= first_bad + 2:
            break
    monitor.close()
    return {
        "spec": asdict(spec),
        "losses": losses,
        "chance": task.chance,
        "records": list(monitor.history),
        "live_alerts": list(monitor.alerts),
        "seconds": time.perf_counter() - began,
    }


# ---------------------------------------------------------------------------------------- labels
def _running_median(values: list[float], width: int) -> list[float]:
    return [statistics.median(values[i : i + width]) for i in range(len(values) - width + 1)]


def _swings(values: list[float], factor: float) -> int:
    """Alternating moves by at least `factor` (ratio) of a positive series."""
    legs, trend, low, high = 0, 0, values[0], values[0]
    for v in values[1:]:
        if trend == 0:
            low, high = min(low, v), max(high, v)
            if high >= factor * low:
                legs, trend, low, high = 1, (1 if v == high else -1), v, v
        elif trend == 1:
            if v >= high:
                high = v
            elif high >= factor * v:
                legs, trend, low = legs + 1, -1, v
        elif v <= low:
            low = v
        elif v >= factor * low:
            legs, trend, high = legs + 1, 1, v
    return legs


def label_run(losses: list[float], chance: float, *, recovered: bool = True, batch: int = 1,
              one_step: bool = True) -> tuple[str, int | None]:
    """(label, divergence step or None) from the raw losses (rules in the module docstring).

    `batch`: samples per step (the one-step 'recovered' rule needs ≥ `RECOVERED_ONE_STEP_BATCH`; 1 = off).
    `one_step=False` gives session 4's labels; `recovered=False` round 1's (no 'recovered': those runs are healthy
    or slow)."""
    for step, v in enumerate(losses):
        if not math.isfinite(v) or v > DIVERGED_FACTOR * losses[0]:
            return "diverged", step
    reference = min(statistics.median(losses[:3]), chance)
    final = statistics.median(losses[-FINAL_WINDOW:])
    if final >= STUCK_SHARE * reference:
        return "stuck", None
    second = losses[len(losses) // 2 :]
    if min(second) > 0 and _swings(_running_median(second, 5), 2.0) >= 3:
        return "oscillating", None
    if recovered and max(_running_median(losses, RECOVERED_WIDTH)) >= RECOVERED_FACTOR * losses[0]:
        return "recovered", None
    if recovered and one_step and batch >= RECOVERED_ONE_STEP_BATCH and max(losses) >= RECOVERED_FACTOR * losses[0]:
        return "recovered", None  # a batch mean tripled by one step: an instability it survived, not one hard sample
    if final <= HEALTHY_SHARE * reference:
        return "healthy", None
    return "slow", None


def stuck_at(losses: list[float], chance: float, step: int = VANISHING_WITHIN, *, margin: bool = True) -> bool:
    """Whether the run would be labelled stuck had it ended at `step`: the stuck rule of `label_run` (same windows,
    same margin) on the losses of steps 0..`step`. A run that diverged by then is not stuck. `margin=False`: the
    stricter form without the 10 % margin — the median of the last 20 losses still at or above the reference."""
    prefix = losses[: step + 1]
    if label_run(prefix, chance)[0] == "diverged":
        return False
    reference = min(statistics.median(prefix[:3]), chance)
    return statistics.median(prefix[-FINAL_WINDOW:]) >= (STUCK_SHARE if margin else 1.0) * reference


def healthy_warned_bound(stuck: int, stuck_not_yet: int, healthy_ambiguous: int, *,
                         recall: float = STUCK_RECALL_WANTED) -> float:
    """Fewest healthy runs (expected) that a detector meeting `recall` on `stuck` runs must warn, when it cannot tell
    the `healthy_ambiguous` runs (stuck at step 40) from the stuck runs that are stuck at step 40.

    Generous to the detector: it warns every one of the `stuck_not_yet` stuck runs (not stuck at step 40) and no
    healthy run that is not ambiguous. Among the ambiguous runs it cannot tell apart, whatever share it warns holds
    stuck and healthy runs alike, so a share p of them costs p × `healthy_ambiguous` healthy runs, where p is the
    share of ambiguous stuck runs still needed:
    (⌈recall × stuck⌉ − stuck_not_yet) / (stuck − stuck_not_yet)."""
    needed = math.ceil(recall * stuck - 1e-9) - stuck_not_yet
    ambiguous_stuck = stuck - stuck_not_yet
    if needed <= 0 or ambiguous_stuck <= 0:
        return 0.0
    return healthy_ambiguous * needed / ambiguous_stuck


# ---------------------------------------------------------------------------------------- inferred chance levels
def _prediction_shape(task: Task, x: torch.Tensor) -> tuple[int, ...]:
    """The shape of the model's output for a batch `x` (B, T, F): what the criterion's input looks like."""
    return (x.shape[0], x.shape[1], task.outputs) if task.dense else (x.shape[0], task.outputs)


def inferred_chances(run: dict[str, Any]) -> list[float | None]:
    """The chance level the live run would have recorded at each step (`StepStats.chance_loss`), reconstructed
    without training: the run's batches are drawn again from `Task(spec)` (its generator is used by nothing else),
    and each step's criterion call is made on a stand-in prediction while gradwatch's own `CriterionTargets` watches
    it, exactly as in `record_run` (one `task.loss` call per step; the fed loss is its output), the estimate computed
    every `CHANCE_EVERY` steps and carried in between as the monitor does."""
    task = Task(Spec(**run["spec"]))
    steps = len(run["records"])
    errors: list[Any] = []
    criteria = CriterionTargets(lambda *args, **kwargs: errors.append(args))
    chances: list[float | None] = []
    level: float | None = None
    try:
        for step in range(steps):
            x, y, _lengths = task.batch()
            prediction = torch.zeros(_prediction_shape(task, x), requires_grad=True)
            task.loss(prediction, y)
            if step % CHANCE_EVERY == 0 or criteria.switched():
                estimate = criteria.estimate()
                value = float(estimate) if estimate is not None else -1.0
                level = value if value > 0 and math.isfinite(value) else None
            chances.append(level)
    finally:
        criteria.close()
    if errors:
        raise RuntimeError(f"chance inference failed while replaying {Spec(**run['spec']).name}: {errors[0]}")
    return chances


def with_chances(run: dict[str, Any], inferred: bool = True) -> list[Any]:
    """The run's records with `chance_loss` as the live estimator would have given it (`inferred_chances`), or
    with none (`inferred=False`: the records as gradwatch gave them before the chance level was inferred)."""
    chances = inferred_chances(run) if inferred else [None] * len(run["records"])
    return [replace(r, chance_loss=c) for r, c in zip(run["records"], chances)]


def check_inferred(specs: list[Spec], *, log: Callable[[str], None] = print) -> float:
    """Train each spec live (`record_run`) and compare the chance levels its records got from the live estimator with
    `inferred_chances`' reconstruction; returns the largest relative difference (raises if a step has one and not the
    other)."""
    worst = 0.0
    for spec in specs:
        run = record_run(spec)
        live = [r.chance_loss for r in run["records"]]
        rebuilt = inferred_chances(run)
        if [c is None for c in live] != [c is None for c in rebuilt]:
            raise AssertionError(f"{spec.name}: steps with an estimate differ (live {live[:5]}..., rebuilt {rebuilt[:5]}...)")
        diff = max((abs(a - b) / b for a, b in zip(live, rebuilt) if a is not None and b is not None), default=0.0)
        worst = max(worst, diff)
        known = [c for c in live if c is not None]
        log(f"{spec.name}: {len(live)} steps, {len(known)} with an estimate (last {known[-1] if known else None!r}, "
            f"task's chance {run['chance']:.4g}); largest relative difference live/rebuilt {diff:.1e}")
    return worst


# ---------------------------------------------------------------------------------------- replay and judging
def replay(records: list[Any], options: dict[str, Any] | None = None) -> list[Alert]:
    """Every alert the default detector suite (with `options`) raises over the saved records."""
    suite = DetectorSuite(DetectorConfig.from_options(dict(options or {})))
    return [a for r in records for a in suite.update(r)]


def _serious(alerts: Iterable[Alert]) -> list[Alert]:
    return [a for a in alerts if a.severity in ("warning", "critical")]


def judge(run: dict[str, Any], alerts: list[Alert], *, labels: str = "session5") -> dict[str, Any]:
    """One run's label (`labels`: one of `LABEL_SETS`) and what the detectors said about it."""
    label, bad = run_label(run, labels)
    serious = _serious(alerts)
    exploding = [a for a in serious if a.problem == "exploding"]
    vanishing = [a for a in serious if a.problem == "vanishing"]
    first_warn = min((a.step for a in exploding), default=None)
    return {
        "sign_step": first_sign(run) if bad is not None else None,
        "name": Spec(**run["spec"]).name,
        "family": Spec(**run["spec"]).family,
        "half": Spec(**run["spec"]).half,
        "spec": run["spec"],
        "label": label,
        "steps": len(run["losses"]),
        "divergence": bad,
        "lead": None if bad is None or first_warn is None or first_warn > bad else bad - first_warn,
        "first_vanishing": min((a.step for a in vanishing), default=None),
        "stuck_at_step_40": stuck_at(run["losses"], run["chance"]),
        "flat_at_step_40": stuck_at(run["losses"], run["chance"], margin=False),
        "serious": [(a.step, a.severity, a.sign) for a in serious],
        "signs": sorted({a.sign for a in serious}),
        "problems": sorted({a.problem for a in serious}),
    }


def run_label(run: dict[str, Any], labels: str = "session5") -> tuple[str, int | None]:
    """`label_run` on a saved run, under the label rules `labels` (one of `LABEL_SETS`)."""
    if labels not in LABEL_SETS:
        raise ValueError(f"labels={labels!r}: expected one of {LABEL_SETS}")
    return label_run(run["losses"], run["chance"], recovered=labels != "round1", batch=int(run["spec"]["batch"]),
                     one_step=labels == "session5")


def first_sign(run: dict[str, Any]) -> int | None:
    """First step whose raw loss or total gradient norm is ≥ `SIGN_FACTOR` × its step-0 value (or non-finite):
    the earliest point at which a diverging run shows anything at all, without any detector."""
    records = run["records"]
    g0 = records[0].grad_norm if records else math.nan
    l0 = run["losses"][0]
    for step, loss in enumerate(run["losses"]):
        g = records[step].grad_norm if step < len(records) else math.nan
        if not math.isfinite(loss) or loss >= SIGN_FACTOR * l0 or not math.isfinite(g) or g >= SIGN_FACTOR * g0:
            return step
    return None


def load_runs(cache: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(cache.glob("*.pkl")):
        with open(path, "rb") as fh:
            runs.append(pickle.load(fh))
    return runs


def _percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def evaluate(verdicts: list[dict[str, Any]], *, vanishing_within: int = VANISHING_WITHIN) -> dict[str, Any]:
    """The targets of issue #13 and the per-sign / per-problem figures over `verdicts`."""
    by = {lab: [v for v in verdicts if v["label"] == lab] for lab in LABELS}
    healthy_ambiguous = [v for v in by["healthy"] if v["stuck_at_step_40"]]
    stuck_not_yet = [v for v in by["stuck"] if not v["stuck_at_step_40"]]
    healthy_flat = [v for v in by["healthy"] if v["flat_at_step_40"]]
    stuck_not_flat = [v for v in by["stuck"] if not v["flat_at_step_40"]]
    div = by["diverged"]

    def early(v: dict[str, Any], k: int) -> bool:
        return bool(v["divergence"] >= k and v["sign_step"] is not None and v["sign_step"] <= v["divergence"] - k)

    eligible5 = [v for v in div if early(v, LEAD_WANTED)]
    eligible3 = [v for v in div if early(v, LEAD_LEAST)]
    lasting3 = [v for v in div if v["divergence"] >= LEAD_LEAST]
    leads = [v["lead"] for v in div if v["lead"] is not None]
    stuck = by["stuck"]
    vanish_times = [v["first_vanishing"] for v in stuck if v["first_vanishing"] is not None]
    healthy_steps = sum(v["steps"] for v in by["healthy"])
    false_warn = [v for v in by["healthy"] if v["serious"]]
    signs: dict[str, dict[str, Any]] = {}
    for v in verdicts:
        for sign in v["signs"]:
            signs.setdefault(sign, {lab: 0 for lab in by} | {"false": 0})[v["label"]] += 1
        if v["label"] == "healthy":
            for _, _, sign in v["serious"]:
                signs[sign]["false"] += 1
    return {
        "runs": len(verdicts),
        "labels": {lab: len(vs) for lab, vs in by.items()},
        "diverged_warned": sum(v["lead"] is not None for v in div),
        "lead5": (sum(v["lead"] is not None and v["lead"] >= LEAD_WANTED for v in eligible5), len(eligible5)),
        "lead3": (sum(v["lead"] is not None and v["lead"] >= LEAD_LEAST for v in eligible3), len(eligible3)),
        "lead3_all": (sum(v["lead"] is not None and v["lead"] >= LEAD_LEAST for v in lasting3), len(lasting3)),
        "lead_median": statistics.median(leads) if leads else None,
        "lead_p5": _percentile(leads, 0.05),
        "stuck_vanishing": (sum(t <= vanishing_within for t in vanish_times), len(stuck)),
        "stuck_vanishing_any": len(vanish_times),
        "vanishing_median": statistics.median(vanish_times) if vanish_times else None,
        "vanishing_p95": _percentile(vanish_times, 0.95),
        "healthy_runs_warned": (len(false_warn), len(by["healthy"])),
        "healthy_ambiguous": (len(healthy_ambiguous), len(by["healthy"])),
        "healthy_ambiguous_warned": (sum(bool(v["serious"]) for v in healthy_ambiguous), len(healthy_ambiguous)),
        "stuck_not_yet": (len(stuck_not_yet), len(stuck)),
        "stuck_not_yet_warned": (sum(v["first_vanishing"] is not None and v["first_vanishing"] <= vanishing_within
                                     for v in stuck_not_yet), len(stuck_not_yet)),
        "healthy_warned_bound": healthy_warned_bound(len(stuck), len(stuck_not_yet), len(healthy_ambiguous)),
        "healthy_warned_clear": [v["name"] for v in false_warn if not v["stuck_at_step_40"]],
        "healthy_flat": (len(healthy_flat), len(by["healthy"])),
        "stuck_not_flat": (len(stuck_not_flat), len(stuck)),
        "healthy_warned_bound_flat": healthy_warned_bound(len(stuck), len(stuck_not_flat), len(healthy_flat)),
        "false_per_1000": 1000 * sum(len(v["serious"]) for v in by["healthy"]) / healthy_steps if healthy_steps else 0.0,
        "healthy_steps": healthy_steps,
        "oscillating_warned": (sum(bool(v["serious"]) for v in by["oscillating"]), len(by["oscillating"])),
        "recovered_warned": (sum(any(p == "exploding" for p in v["problems"]) for v in by["recovered"]),
                             len(by["recovered"])),
        "signs": signs,
        "misses": _misses(by, vanishing_within),
    }


def _misses(by: dict[str, list[dict[str, Any]]], within: int) -> list[str]:
    out = []
    for v in by["diverged"]:
        d, sign = v["divergence"], v["sign_step"]
        wanted = min(LEAD_WANTED, d - sign) if sign is not None else 0
        if d >= LEAD_LEAST and (v["lead"] is None or v["lead"] < max(wanted, LEAD_LEAST)):
            out.append(f"diverged at {d} (first raw sign at {sign}), lead {v['lead']}: {v['name']} {v['serious'][:3]}")
    for v in by["stuck"]:
        if v["first_vanishing"] is None or v["first_vanishing"] > within:
            known = "stuck" if v["stuck_at_step_40"] else "not yet stuck"
            out.append(f"stuck, first vanishing warning {v['first_vanishing']} ({known} at step 40): {v['name']} "
                       f"{v['serious'][:3]}")
    for v in by["healthy"]:
        if v["serious"]:
            known = "ambiguous: stuck" if v["stuck_at_step_40"] else "not ambiguous: not stuck"
            out.append(f"healthy, warned ({known} at step 40): {v['name']} {v['serious'][:3]}")
    return out


def _frac(pair: tuple[int, int]) -> str:
    k, n = pair
    return f"{k}/{n} ({100 * k / n:.0f} %)" if n else "0/0"


def markdown(result: dict[str, Any], *, half: str) -> str:
    r = result

    def fmt(x: float | None) -> str:
        return "—" if x is None else f"{x:g}"

    lines = [
        f"Corpus: {r['runs']} runs on the {half} half; labels " + ", ".join(f"{k} {n}" for k, n in r["labels"].items()) + ".",
        "",
        "| problem | target | measured |",
        "|---|---|---|",
        f"| exploding | diverged runs warned (warning/critical, before the divergence) | "
        f"{_frac((r['diverged_warned'], r['labels']['diverged']))} |",
        f"| exploding | lead ≥ {LEAD_WANTED} steps where the run gives a raw sign ≥ {LEAD_WANTED} steps before it "
        f"diverges | {_frac(r['lead5'])} |",
        f"| exploding | lead ≥ {LEAD_LEAST} steps where the run gives a raw sign ≥ {LEAD_LEAST} steps before | "
        f"{_frac(r['lead3'])} |",
        f"| exploding | lead ≥ {LEAD_LEAST} steps on every run that lasts ≥ {LEAD_LEAST} steps | {_frac(r['lead3_all'])} |",
        f"| exploding | lead time, median / 5th percentile (steps) | {fmt(r['lead_median'])} / {fmt(r['lead_p5'])} |",
        f"| vanishing | stuck runs warned as vanishing within 40 steps | {_frac(r['stuck_vanishing'])} |",
        f"| vanishing | steps to the first vanishing warning on stuck runs, median / 95th percentile | "
        f"{fmt(r['vanishing_median'])} / {fmt(r['vanishing_p95'])} |",
        f"| healthy | runs with any warning/critical | {_frac(r['healthy_runs_warned'])} |",
        f"| healthy | false warnings per 1,000 healthy steps | {r['false_per_1000']:.2f} (over {r['healthy_steps']} steps) |",
        f"| ambiguous at step 40 | healthy runs the stuck label rule calls stuck on their losses of steps 0-40 "
        f"(raw losses, no detector; with its 10 % margin / without) | {_frac(r['healthy_ambiguous'])} / "
        f"{r['healthy_flat'][0]} |",
        f"| ambiguous at step 40 | stuck runs not yet stuck by that rule at step 40 (with / without the margin; "
        f"warned by gradwatch within 40 steps) | {_frac(r['stuck_not_yet'])} / {r['stuck_not_flat'][0]} "
        f"({r['stuck_not_yet_warned'][0]}) |",
        f"| ambiguous at step 40 | fewest healthy runs warned by any detector with "
        f"≥ {100 * STUCK_RECALL_WANTED:.0f} % of stuck runs warned within 40 steps, if it cannot tell the "
        f"ambiguous runs apart (with / without the margin) vs gradwatch | {r['healthy_warned_bound']:.1f} / "
        f"{r['healthy_warned_bound_flat']:.1f} vs {r['healthy_runs_warned'][0]} of {r['healthy_runs_warned'][1]} |",
        f"| exploding | oscillating runs warned | {_frac(r['oscillating_warned'])} |",
        f"| exploding | recovered runs (a loss ×{RECOVERED_FACTOR:g} they survived) warned as exploding | "
        f"{_frac(r['recovered_warned'])} |",
        "",
        "Runs in which each sign was raised at warning or critical, by label (recall on the label it "
        "belongs to; on healthy runs every count is a false alarm):",
        "",
        "| sign | " + " | ".join(r["labels"]) + " | false warnings per 1,000 healthy steps |",
        "|---|" + "---|" * (len(r["labels"]) + 1),
    ]
    steps = max(r["healthy_steps"], 1)
    for sign, counts in sorted(r["signs"].items()):
        lines.append(f"| {sign} | " + " | ".join(f"{counts[lab]}/{r['labels'][lab]}" for lab in r["labels"])
                     + f" | {1000 * counts['false'] / steps:.2f} |")
    clear = r["healthy_warned_clear"]
    lines += ["", f"Healthy runs warned that are not ambiguous at step 40 (not stuck by the label rule on steps 0-40): "
              + (", ".join(clear) if clear else "none") + "."]
    if r["misses"]:
        lines += ["", "Misses:", ""] + [f"- {m}" for m in r["misses"]]
    return "\n".join(lines)


def plot(verdicts: list[dict[str, Any]], path: Path, *, half: str) -> None:
    """Lead times of diverged runs and times to the first vanishing warning of stuck runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    div = sorted((v for v in verdicts if v["label"] == "diverged"), key=lambda v: v["divergence"])
    xs = [v["divergence"] for v in div]
    ys = [v["lead"] if v["lead"] is not None else -1 for v in div]
    left.scatter(xs, ys, s=18, c=["tab:red" if y < min(LEAD_WANTED, x) else "tab:blue" for x, y in zip(xs, ys)])
    left.axhline(LEAD_WANTED, color="grey", ls="--", lw=1, label=f"lead {LEAD_WANTED}")
    left.set_xlabel("divergence step (non-finite or ×100 loss)")
    left.set_ylabel("lead time (steps; −1 = no warning)")
    left.set_title(f"diverged runs ({len(div)}), {half} half; red: lead < min(5, divergence step)", fontsize=10)
    left.legend(loc="upper left")
    stuck = [v for v in verdicts if v["label"] == "stuck"]
    times = sorted(v["first_vanishing"] if v["first_vanishing"] is not None else 200 for v in stuck)
    right.step(times, [(i + 1) / len(times) for i in range(len(times))], where="post")
    right.axvline(40, color="grey", ls="--", lw=1, label="40 steps")
    right.set_xlim(0, 130)
    right.set_ylim(0, 1.02)
    right.set_xlabel("step of the first vanishing warning (off-scale = none)")
    right.set_ylabel("share of stuck runs warned")
    right.set_title(f"stuck runs ({len(stuck)}), {half} half")
    right.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- commands
def generate(cache: Path, specs: list[Spec], *, budget_s: float = math.inf, log: Callable[[str], None] = print) -> None:
    """Record every spec not yet in `cache` (one pickle per run), until `budget_s` seconds are spent."""
    torch.set_num_threads(1)
    cache.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    for spec in specs:
        path = cache / f"{spec.name}.pkl"
        if path.exists():
            continue
        if time.perf_counter() - began > budget_s:
            log("budget spent; run `generate` again to continue")
            return
        run = record_run(spec)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(run, fh)
        os.replace(tmp, path)
        log(f"{spec.name}: {run_label(run)[0]} {run['seconds']:.1f} s")


def report(runs: list[dict[str, Any]], *, half: str, options: dict[str, Any] | None = None, labels: str = "session5",
           chance: bool = False, inferred: bool = True,
           out_dir: Path | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Judge the runs of `half` under the label rules `labels` (`LABEL_SETS`); `chance=True` gives each run's chance
    loss to the detectors (`chance_loss=`), as a user who knows their task's input-blind loss would. `inferred`: each
    record carries the chance level gradwatch infers from the targets (`with_chances`), as a user who passes nothing
    gets it (issue #13, session 6); False: none (the records of runs cached before it, as recorded)."""
    chosen = [r for r in runs if half == "all" or Spec(**r["spec"]).half == half]
    verdicts = [judge(r, replay(with_chances(r, inferred),
                                dict(options or {}, **({"chance_loss": r["chance"]} if chance else {}))),
                      labels=labels) for r in chosen]
    result = evaluate(verdicts)
    text = markdown(result, half=half)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "corpus.md").write_text(text + "\n")
        plot(verdicts, out_dir / "corpus.png", half=half)
    return result, verdicts, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("generate", "report", "check-chance"))
    parser.add_argument("--n", type=int, default=330, help=f"runs in the corpus (default 330; fresh split {FRESH_N})")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--budget", type=float, default=math.inf, help="generate: stop after this many seconds")
    parser.add_argument("--reverse", action="store_true", help="generate: last spec first (a second process)")
    parser.add_argument("--split", default="main", choices=("main", *FRESH_SPLITS),
                        help=f"generate: the main corpus (calibration + held-out) or the fresh split ({FRESH_N} runs)")
    parser.add_argument("--half", default="held-out", choices=("held-out", "calibration", *FRESH_SPLITS, "all"),
                        help="report: which runs to judge ('fresh', 'fresh2': a fresh split)")
    parser.add_argument("--out", type=Path, default=None, help="report: write corpus.md and corpus.png here")
    parser.add_argument("--round1-labels", action="store_true",
                        help="report: label as in round 1 (no 'recovered' label), for before/after comparisons")
    parser.add_argument("--session4-labels", action="store_true",
                        help="report: label as in session 4 (no one-step 'recovered' rule), for before/after comparisons")
    parser.add_argument("--chance", action="store_true",
                        help="report: give each run's chance-level loss to the detectors (watch(chance_loss=...))")
    parser.add_argument("--no-inferred-chance", action="store_true",
                        help="report: records without the chance level inferred from the targets (gradwatch before "
                             "session 6); by default each run's records carry it, reconstructed from its batches")
    parser.add_argument("--quick", action="store_true", help="a dozen tiny runs in a temporary cache, for tests")
    args = parser.parse_args(argv)
    if args.quick:
        import tempfile

        specs = make_specs(12, quick=True)
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp), specs, log=lambda line: None)
            _, _, text = report(load_runs(Path(tmp)), half="all", out_dir=args.out)
        print(text)
        return 0
    fresh = args.half if args.command == "report" and args.half in FRESH_SPLITS else (
        args.split if args.split in FRESH_SPLITS else False)
    specs = make_specs(FRESH_N if fresh and args.n == 330 else args.n, fresh=fresh)
    if args.command == "generate":
        generate(args.cache, specs[::-1] if args.reverse else specs, budget_s=args.budget)
        return 0
    if args.command == "check-chance":  # live runs of every task at batch 1 and 32 (short: T <= 30, <= 120 steps)
        picked: dict[tuple[str, int], Spec] = {}
        for spec in specs:
            if spec.batch in (1, 32) and spec.timesteps <= 30 and (spec.task, spec.batch) not in picked:
                picked[(spec.task, spec.batch)] = spec
        worst = check_inferred(list(picked.values()))
        print(f"{len(picked)} live runs: largest relative difference live/rebuilt {worst:.1e}")
        return 0 if worst < 1e-6 else 1
    runs = [r for r in load_runs(args.cache) if Spec(**r["spec"]) in set(specs)]
    labels = "round1" if args.round1_labels else "session4" if args.session4_labels else "session5"
    _, _, text = report(runs, half=args.half, labels=labels, chance=args.chance, inferred=not args.no_inferred_chance,
                        out_dir=args.out or (ROOT / "docs" / "bench"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
