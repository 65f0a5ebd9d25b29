"""`gradwatch demo`: a self-contained synthetic run that shows what gradwatch sees.

    $ gradwatch demo                         # vanishing gradients in a plain tanh RNN
    $ gradwatch demo --scenario exploding --jsonl demo.jsonl && gradwatch plot demo.jsonl -o demo.png

Every scenario trains a small recurrent network on the "adding problem" (the target is the sum
of the two marked numbers of a long random sequence, so the early timesteps matter) with
random data made on the spot: no download, 10-20 seconds of one CPU core.

* healthy: an LSTM (Adam) that predicts, at every timestep, the sum of the current and the
  previous value: a short-memory task it learns in a few dozen steps; no warning. (The running
  sum of the marked values, used before, stays at chance level for 150 steps whatever the
  optimiser: gradwatch now rightly calls that stuck.)
* vanishing (the default): a tanh RNN whose recurrent weights shrink the signal at each timestep,
  over 80 timesteps: the gradient reaching the first timesteps is exactly 0, the loss stays at
  chance, and by step 30 gradwatch warns (slow_progress, then temporal_decay) with the remedy;
* exploding: a ReLU RNN whose recurrent weights amplify the signal at each timestep, without
  clipping: gradients grow backwards through time, spike, and end in NaN;
* nan: the healthy LSTM until one corrupted batch (a NaN at timestep 17) arrives.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..sinks.logging_sink import plain_width
from .arguments import non_negative_float, positive_int
from .run import plain_log_lines, plain_output

__all__ = ["add_arguments", "main", "SCENARIOS", "Scenario", "run_demo"]


@dataclass(frozen=True)
class Scenario:
    """One demo run: the network, its initialisation, the optimiser and the data."""

    cell: str
    """'LSTM', 'RNN_TANH' or 'RNN_RELU'."""
    timesteps: int
    recurrent_gain: float
    """The recurrent weights are a random orthogonal matrix times this gain (1 keeps norms)."""
    lr: float
    layers: int = 2
    nan_at_step: int | None = None
    """Step at which one input value becomes NaN (timestep 17 of sample 0)."""
    batch: int = 128
    dense_target: bool = False
    """Predict the running sum at every timestep (every timestep gets a direct gradient) instead
    of only the final sum at the last timestep."""
    short_memory: bool = False
    """Target at every timestep: the sum of the current and previous values (a task an LSTM learns in
    a few dozen steps), instead of the adding problem's running sum of the two marked values."""
    adam: bool = False
    """Train with Adam instead of SGD with momentum 0.9."""
    mean_start: bool = False
    """Start the read-out at the target's mean (bias 1, the mean of the sum of two U(0, 1); weights
    ×0.01), as careful practitioners do: the loss starts at chance level (0.167, the target's
    variance) instead of dropping to it, so a model that cannot learn shows it from the first steps."""
    blurb: str = ""
    tell_chance: bool = True
    """Pass the task's `chance_loss` to watch() (as a user who knows it would). Off for `exploding`: the mean
    of its last 30 losses stays above chance after the step-3 spike, so slow_progress would add a warning
    about the explosion's aftermath to a demo meant to show the explosion; for the same reason that demo
    also turns off the inference of the chance level from the targets (`watch(infer_chance=False)`)."""

    @property
    def chance_loss(self) -> float | None:
        """The MSE of the best prediction that ignores the inputs (the target's mean): the target's variance.

        A sum of two independent U(0, 1) values has variance 2/12; the short-memory target at timestep 0 is
        one value (1/12). Averaged over the timesteps a dense target is scored on. None for the dense running
        sum, whose variance changes along the sequence (no scenario uses it)."""
        if self.short_memory:
            return (1 / 12 + (self.timesteps - 1) / 6) / self.timesteps
        return None if self.dense_target else 1 / 6


SCENARIOS: dict[str, Scenario] = {
    "healthy": Scenario("LSTM", 40, 1.0, 1e-2, dense_target=True, batch=32, adam=True, short_memory=True,
                        blurb="an LSTM (Adam) predicting the sum of the last two values at every timestep: it learns"),
    "vanishing": Scenario("RNN_TANH", 80, 0.5, 3e-4, mean_start=True,
                          blurb="a tanh RNN whose recurrent weights halve the signal each timestep, 80 timesteps: "
                                "its loss stays at chance"),
    "exploding": Scenario("RNN_RELU", 40, 1.6, 5e-4, batch=32,
                          blurb="a ReLU RNN whose recurrent weights amplify 1.6x per timestep, no clipping",
                          tell_chance=False),
    "nan": Scenario("LSTM", 40, 1.0, 1e-2, dense_target=True, nan_at_step=60, adam=True, short_memory=True,
                    blurb="an LSTM that meets one corrupted batch (NaN at timestep 17) at step 60"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="vanishing",
                        help="what to show (default: vanishing)")
    parser.add_argument("--steps", type=positive_int, default=150, help="training steps (default: 150)")
    parser.add_argument("--every", type=positive_int, default=5, metavar="N",
                        help="measure per-timestep gradient norms every N steps (default: 5)")
    parser.add_argument("--jsonl", default=None, metavar="PATH", help="also write the JSONL stream (then: gradwatch plot)")
    parser.add_argument("--tensorboard", default=None, metavar="DIR", help="also write TensorBoard events to DIR")
    parser.add_argument("--no-live", action="store_true", help="plain log lines instead of the live console")
    parser.add_argument("--delay", type=non_negative_float, default=None, metavar="SECONDS",
                        help="pause after each step so the live console can be followed "
                             "(default: 0.05 in a terminal, 0 otherwise)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


class AddingModel(nn.Module):
    """Recurrent stack -> linear read-out of the last timestep."""

    def __init__(self, scenario: Scenario, hidden: int = 48) -> None:
        super().__init__()
        if scenario.cell == "LSTM":
            self.rnn: nn.Module = nn.LSTM(2, hidden, num_layers=scenario.layers)
        else:
            nonlinearity = "relu" if scenario.cell == "RNN_RELU" else "tanh"
            self.rnn = nn.RNN(2, hidden, num_layers=scenario.layers, nonlinearity=nonlinearity)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            if scenario.mean_start:
                self.head.weight.mul_(0.01)
                self.head.bias.fill_(1.0)
            for name, p in self.rnn.named_parameters():
                if name.startswith("weight_hh") and scenario.cell != "LSTM":
                    nn.init.orthogonal_(p, gain=scenario.recurrent_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        prediction: torch.Tensor = self.head(out).squeeze(-1)  # (T, B): a prediction at every timestep
        return prediction


def adding_batch(timesteps: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (T, B, 2): a random value and a 0/1 marker per timestep, one marker in the first
    quarter of the sequence and one in its second half. Target (T, B): the running sum of the
    marked values (its last row is the classic adding-problem target)."""
    values = torch.rand(timesteps, batch, generator=generator)
    marks = torch.zeros(timesteps, batch)
    first = torch.randint(0, max(1, timesteps // 4), (batch,), generator=generator)
    second = torch.randint(timesteps // 2, timesteps, (batch,), generator=generator)
    cols = torch.arange(batch)
    marks[first, cols] = 1.0
    marks[second, cols] = 1.0
    target = (values * marks).cumsum(0)  # (T, B): running sum of the marked values
    return torch.stack([values, marks], dim=-1), target


def run_demo(name: str, *, steps: int = 150, every: int = 5, console: Any = "auto", delay: float = 0.0,
             jsonl: str | None = None, tensorboard: str | None = None, seed: int = 0) -> Any:
    """Train the scenario `name` under gradwatch; returns the closed `Monitor`."""
    import gradwatch

    scenario = SCENARIOS[name]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = AddingModel(scenario)
    optimizer = (torch.optim.Adam(model.parameters(), lr=scenario.lr) if scenario.adam
                 else torch.optim.SGD(model.parameters(), lr=scenario.lr, momentum=0.9))
    monitor = gradwatch.watch(model, optimizer, every=every, console=console, jsonl=jsonl, tensorboard=tensorboard,
                              chance_loss=scenario.chance_loss if scenario.tell_chance else None,
                              infer_chance=scenario.tell_chance)
    with monitor:
        for step in range(steps):
            x, y = adding_batch(scenario.timesteps, scenario.batch, generator)
            if scenario.short_memory:
                y = x[..., 0] + torch.cat([torch.zeros_like(x[:1, :, 0]), x[:-1, :, 0]])
            if scenario.nan_at_step is not None and step == scenario.nan_at_step:
                x[17, 0, 0] = math.nan
            prediction = model(x)
            if not scenario.dense_target:
                prediction, y = prediction[-1], y[-1]
            loss = nn.functional.mse_loss(prediction, y)
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            optimizer.step()
            monitor.step(loss)
            if delay:
                time.sleep(delay)
    return monitor


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # a tiny network: extra threads only add overhead
    delay = args.delay if args.delay is not None else (0.05 if sys.stderr.isatty() and not args.no_live else 0.0)
    scenario = SCENARIOS[args.scenario]
    chance = (f"; chance_loss={scenario.chance_loss:.3g}, the target's variance"
              if scenario.tell_chance and scenario.chance_loss is not None else "")
    intro = f"gradwatch demo ({args.scenario}): {scenario.blurb}; {args.steps} steps{chance}."
    print(textwrap.fill(intro, width=plain_width(), subsequent_indent="    "), file=sys.stderr)
    # away from a terminal the alerts go through `logging`: show them (INFO included) as plain lines
    plain = plain_output(args.no_live)
    with plain_log_lines() if plain else contextlib.nullcontext():
        run_demo(args.scenario, steps=args.steps, every=args.every, console="logging" if plain else "auto",
                 delay=delay, jsonl=args.jsonl, tensorboard=args.tensorboard, seed=args.seed)
    # the closing summary (printed by the monitor) is the verdict; only say what to do next
    if args.jsonl:
        print(f"Wrote {args.jsonl}; draw it with: gradwatch plot {args.jsonl} -o report.png", file=sys.stderr)
    return 0
