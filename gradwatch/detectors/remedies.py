"""Remedy texts: what to do, chosen from the case (module kind, where, how bad).

    >>> temporal_decay("RNN")
    'switch the vanilla RNN to nn.LSTM or nn.GRU ...'

Each function returns one or two sentences without a trailing period, so that detectors can
append case numbers. Kinds are `LayerStats.kind` names: RNN, LSTM, GRU, RNNCell, LSTMCell,
GRUCell ('' when unknown).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

from .base import fmt

__all__ = [
    "temporal_decay",
    "temporal_growth",
    "slow_progress",
    "stuck_at_start",
    "tiny_updates",
    "dead_units",
    "saturated_units",
    "large_updates",
    "norm_spike",
    "norm_absolute",
    "norm_growth",
    "oscillation",
    "non_finite",
    "spelled_for_cli",
    "auto_clip_option",
    "chance_loss_hint",
]

_FOR_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("gradwatch_remedies_for_cli", default=False)
"""True while `gradwatch run` runs a script: remedies then name its flags (`--clip norm:1`), not
watch()'s keywords. A context variable, set and reset by `spelled_for_cli`, not a module flag."""


@contextlib.contextmanager
def spelled_for_cli() -> Iterator[None]:
    """Meanwhile (in this thread/context), remedies name `gradwatch run`'s flags instead of watch()'s keywords."""
    token = _FOR_CLI.set(True)
    try:
        yield
    finally:
        _FOR_CLI.reset(token)


def _clip_example(max_norm: str) -> str:
    """How to ask for a max-norm clip of `max_norm`: `clip=1.0`, or `--clip norm:1.0` under `gradwatch run`."""
    return f"--clip norm:{max_norm}" if _FOR_CLI.get() else f"clip={max_norm}"


def auto_clip_option() -> str:
    """How to ask for clip="auto" where the remedy will be read: `clip='auto'`, or `--clip auto`."""
    return "--clip auto" if _FOR_CLI.get() else "clip='auto'"


def chance_loss_hint() -> str:
    """How to tell gradwatch the chance level: `chance_loss=<...>`, or `--chance-loss LOSS` under `gradwatch run`."""
    option = "gradwatch run --chance-loss LOSS" if _FOR_CLI.get() else "gradwatch.watch(..., chance_loss=LOSS)"
    inferred = ("backward() is called once per step on the output of" if _FOR_CLI.get() else
                "monitor.step(loss) gets the very tensor returned by")
    return (f"if you know the loss of a model that ignores its inputs (ln K for K balanced classes with "
            f"cross-entropy, the target's variance for MSE), {option} makes slow_progress warn when the loss "
            f"stops there (gradwatch infers it itself when {inferred} nn.CrossEntropyLoss, NLLLoss, MSELoss or "
            "BCEWithLogitsLoss)")


def _clip() -> str:
    if _FOR_CLI.get():
        return ("clip the gradient norm (gradwatch run --clip norm:<max norm>, or --clip auto; in the script, "
                "torch.nn.utils.clip_grad_norm_ before the update)")
    return "clip the gradient norm (gradwatch.watch(..., clip=<max norm>), or torch.nn.utils.clip_grad_norm_ before optimizer.step())"


def _skip_nonfinite() -> str:
    if _FOR_CLI.get():
        return "gradwatch.watch(..., skip_nonfinite=True) in the script (gradwatch run has no flag for it)"
    return "gradwatch.watch(..., skip_nonfinite=True)"


def _vanilla(kind: str) -> bool:
    return kind in ("RNN", "RNNCell")


def _lstm(kind: str) -> bool:
    return kind in ("LSTM", "LSTMCell")


def temporal_decay(kind: str) -> str:
    if _vanilla(kind):
        return (
            "switch the vanilla RNN to nn.LSTM or nn.GRU, whose gated additive state carries the gradient across "
            "many steps; if it must stay an RNN, initialise weight_hh orthogonally (nn.init.orthogonal_) so its "
            "gain starts at 1, and add LayerNorm to the recurrent input"
        )
    if _lstm(kind):
        return (
            "initialise the forget-gate bias to 1 (the second quarter of bias_ih/bias_hh) so the cell keeps its "
            "state (Jozefowicz et al. 2015), initialise weight_hh orthogonally, and add LayerNorm; if the "
            "dependency is very long, give the model a shorter path to it (attention, skip connections)"
        )
    return (
        "initialise weight_hh orthogonally (nn.init.orthogonal_), add LayerNorm to the recurrent input, and if "
        "the dependency is very long give the model a shorter path to it (attention, skip connections)"
    )


def temporal_growth(kind: str, relu: bool) -> str:
    text = (
        f"the recurrent gain is above one: {_clip()} (Pascanu et al. 2013 clip at about the average norm), and "
        "initialise weight_hh orthogonally or rescale it to a spectral radius of at most 1"
    )
    if relu:
        text += "; a ReLU RNN is unbounded, so use nonlinearity='tanh' or a gated cell (LSTM/GRU) instead"
    elif _vanilla(kind):
        text += "; an LSTM or GRU with LayerNorm keeps its gain near one"
    else:
        text += "; LayerNorm on the recurrent input keeps the gain near one"
    return text


def slow_progress(kind: str, cause: str) -> str:
    if cause == "decay":
        return "the early timesteps get no learning signal: " + temporal_decay(kind)
    if cause == "tiny_updates":
        return tiny_updates(kind)
    if cause == "dead":
        return dead_units()
    if cause == "saturated":
        return saturated_units()
    if cause == "unexplained":
        return stuck_at_start(kind)
    return temporal_decay(kind)


def stuck_at_start(kind: str) -> str:
    text = (
        "check that the target can be predicted from the inputs the model sees (labels aligned with the "
        "sequences, padding masked), then try a learning rate 10× higher for a few dozen steps (Adam 1e-3 to 1e-2 "
        "is a safe start)"
    )
    if _vanilla(kind):
        return text + "; if the answer depends on distant timesteps, switch the vanilla RNN to nn.LSTM or nn.GRU"
    return text + (
        "; if the answer depends on distant timesteps, initialise weight_hh orthogonally and give the model a "
        "shorter path to them (a shorter sequence, attention, skip connections)"
    )


def tiny_updates(kind: str) -> str:
    text = (
        "raise the learning rate (a plain-SGD step is lr × gradient, so vanishing gradients give vanishing steps) "
        "or use Adam, whose step size does not shrink with the gradient"
    )
    if _vanilla(kind):
        text += "; for a vanilla RNN switch to nn.LSTM/nn.GRU and initialise weight_hh orthogonally"
    else:
        text += "; check for a too-small initialisation (weights scaled down) or a loss scaled by a tiny factor"
    return text


def dead_units() -> str:
    return (
        "ReLU units that output 0 for every input receive no gradient and never recover: lower the learning "
        "rate that pushed them there, initialise biases at 0 (not negative), put LayerNorm before the "
        "nonlinearity, or use nonlinearity='tanh' / a gated cell (LSTM/GRU)"
    )


def saturated_units() -> str:
    return (
        "tanh units pinned at ±1 pass at most tanh'(h) ≤ 0.02 of the gradient: the pre-activations are too "
        "large, so normalise the inputs, keep weight_ih at PyTorch's default scale U(±1/√hidden) or smaller, add "
        "LayerNorm (a LayerNorm-LSTM/GRU), or lower the learning rate"
    )


def large_updates() -> str:
    return (
        f"lower the learning rate (at least 10×) or add a warm-up, and {_clip()}; with Adam, a larger eps "
        "(e.g. 1e-6) also damps steps on parameters whose gradients are tiny"
    )


def norm_spike(typical: float, clipping: str | None = None) -> str:
    """`clipping`: the policy already clipping this run ('auto', 'norm', ...), or None."""
    if clipping is not None:
        return (
            f"gradient clipping ({clipping}) is already on and bounded this step's update; if spikes recur, lower the "
            f"learning rate or add a warm-up, or clip at a fixed size near the usual norm, e.g. "
            f"{_clip_example(fmt(2 * typical))} (twice its typical norm {fmt(typical)})"
        )
    return (
        f"{_clip()} at about its usual size, e.g. {_clip_example(fmt(2 * typical))} (twice its typical norm {fmt(typical)}; "
        "Pascanu et al. 2013 clip near the average norm); if spikes recur, lower the learning rate or add a warm-up"
    )


def norm_absolute(kind: str, first: bool) -> str:
    text = f"{_clip()}, e.g. {_clip_example('1.0')}, so that no single step can blow the weights up"
    if first:
        text += (
            "; at initialisation this points at the recurrent weights' scale: initialise weight_hh orthogonally "
            "(spectral radius 1) rather than with a larger gain"
        )
        if _vanilla(kind):
            text += ", or use an LSTM/GRU"
    else:
        text += "; lower the learning rate"
    return text


def norm_growth() -> str:
    return (
        f"the run is heading for divergence: lower the learning rate (or stop the warm-up at a lower peak) and "
        f"{_clip()}"
    )


def oscillation(momentum_hint: bool = True) -> str:
    text = "lower the learning rate (÷3 to ÷10) or add a decay schedule"
    if momentum_hint:
        text += "; with momentum, reduce it (e.g. 0.9 → 0.5); a larger batch also smooths the loss"
    return text


def non_finite(where: str, module: str | None, layer: int | None, timestep: int | None) -> str:
    if where == "input" and module is not None:
        t = f" at timestep {timestep}" if timestep is not None else ""
        return (
            f"the input sequence of '{module}' already holds NaN/Inf{t}: check the data pipeline for missing "
            "values, division by zero in feature scaling or padding filled with NaN "
            "(torch.isfinite(batch).all() before the forward pass)"
        )
    if where == "forward":
        return (
            "the recurrent activations overflowed: lower the learning rate, add LayerNorm, and "
            f"{_clip()} so that weights cannot grow that far"
        )
    if where == "loss":
        return (
            "only the loss is non-finite: look for log(0), division by zero or an exp() in the loss; use "
            "F.cross_entropy / log_softmax on raw logits instead of log(softmax), and add an epsilon"
        )
    if where == "weights":
        return (
            "an earlier update already wrote NaN/Inf into the weights: reload the last good checkpoint, and enable "
            f"{_skip_nonfinite()} so that a non-finite step is skipped instead of applied"
        )
    return (
        f"the gradients overflowed during backpropagation through time: {_clip()}, lower the learning rate, and "
        f"use {_skip_nonfinite()} so that such a step is skipped"
    )
