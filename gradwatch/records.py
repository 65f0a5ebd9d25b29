"""The stream's data model: one `StepStats` per finished training step, plus `Alert`.

    >>> rec = monitor.history[-1]
    >>> rec.layers[("lstm", 1)].timestep_grad_norms[:3]
    [0.012, 0.011, 0.009]

Every number here is a plain Python float read back from the device once the step's
statistics have arrived; no field holds a tensor. Norms are Euclidean (L2) unless stated.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["DirectionStats", "LayerStats", "NonFinite", "ClipEvent", "StepStats", "Alert", "Severity", "Location", "Escalation", "LayerKey"]

LayerKey = tuple[str, int]
"""`(module_name, layer_index)`: qualified name from `model.named_modules()` ("" = root)."""


@dataclass
class DirectionStats:
    """Statistics of one direction (0 = forward, 1 = reverse) of one recurrent layer."""

    grad_norm: float
    """L2 norm of the gradients of this direction's parameters (`weight_ih`, `weight_hh`, biases, `weight_hr`) at the end of the step, before any clipping."""
    weight_norm: float
    """L2 norm of the same parameters before this step's update."""
    update_ratio: float
    """‖θ_after − θ_before‖₂ / ‖θ_before‖₂ over the same parameters: the real change made by the step (any optimizer, manual updates too). NaN when the weights are all zero."""


@dataclass
class LayerStats:
    """Statistics of one layer of one recurrent module for one step.

    For `*Cell` modules the layer index is 0 and a "timestep" is one call of the cell within the step.
    """

    module: str
    """Qualified module name from `model.named_modules()`."""
    layer: int
    """Layer index inside the module (0 = closest to the input)."""
    kind: str
    """Module class name: RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell."""
    grad_norm: float
    """L2 norm over the gradients of all this layer's parameters (both directions), before clipping. 0 when none has a gradient."""
    weight_norm: float
    """L2 norm over this layer's parameters before this step's update."""
    update_norm: float
    """‖θ_after − θ_before‖₂ over this layer's parameters: how far the step moved them."""
    update_ratio: float
    """update_norm / weight_norm (NaN when weight_norm is 0)."""
    has_grad: bool = True
    """False when no parameter of the layer received a gradient this step (frozen or unused)."""
    timestep_grad_norms: list[float] | None = None
    """Probe steps only: entry t is ‖∂L/∂x_t⁽ˡ⁾‖₂ over batch and features, where x⁽ˡ⁾ is the sequence fed into this layer (the module input for layer 0, the previous layer's output after inter-layer dropout otherwise). Several forward calls in one step (gradient accumulation) add up as squared norms. None on steps without a probe."""
    timestep_activation_norms: list[float] | None = None
    """Probe steps only: entry t is the L2 norm over batch and features of this layer's output at timestep t (both directions concatenated)."""
    dead_fraction: float | None = None
    """Probe steps only: share of output units (features; both directions) whose |h| < `dead_eps` (1e-6) for every sample and timestep of the step's batches."""
    saturated_fraction: float | None = None
    """Probe steps only: share of output units with |h| ≥ 0.99 in at least 90% of (sample, timestep) positions. None for ReLU RNNs, whose outputs are unbounded."""
    directions: list[DirectionStats] = field(default_factory=list)
    """Per-direction detail: one entry, or two for bidirectional layers."""


@dataclass
class NonFinite:
    """Where a NaN/Inf first appeared in a step."""

    where: Literal["input", "forward", "backward", "loss", "weights"]
    """'input': already in the input of a watched module (layer 0); 'forward': born in a module's forward activations; 'backward': only in gradients; 'loss': only the loss; 'weights': the parameters were already non-finite."""
    module: str | None
    """Qualified module name, or None when not attributable to a watched module (loss, other layers)."""
    layer: int | None
    """First layer in which it appears, when known."""
    timestep: int | None
    """First timestep at which it appears (for 'backward', the latest timestep, where backpropagation through time starts), when known."""


@dataclass
class ClipEvent:
    """What gradient clipping did on this step (see `watch(clip=...)`)."""

    policy: str
    """Policy name, e.g. 'norm', 'auto', 'zclip'."""
    norm_before: float
    """Total L2 gradient norm of the clipped parameters before clipping."""
    norm_after: float
    """Total L2 gradient norm after clipping."""
    coefficient: float
    """Factor applied (1.0 = untouched); for per-unit policies, norm_after / norm_before."""
    threshold: float | None = None
    """Threshold the policy used this step, where it has one."""


@dataclass
class StepStats:
    """Everything gradwatch measured in one training step."""

    step: int
    """0-based index of the finished step (an optimizer step, or a `monitor.step()` call without optimizer)."""
    loss: float | None
    """The loss passed to `monitor.step(loss)` for this step, or None."""
    grad_norm: float
    """Total L2 norm over the gradients of every model parameter (watched or not), before clipping, as `clip_grad_norm_` would compute it."""
    layers: dict[LayerKey, LayerStats]
    """Per recurrent layer, keyed by (module_name, layer_index)."""
    probed: bool = False
    """True when the per-timestep probe ran in this step."""
    nonfinite: NonFinite | None = None
    """First NaN/Inf of the step, or None when everything was finite."""
    clip: ClipEvent | None = None
    """What clipping did, when a clip policy is active."""
    skipped: bool = False
    """True when `skip_nonfinite=True` skipped this step's update."""
    timestep_output_grad_norms: dict[str, list[float]] = field(default_factory=dict)
    """Every step, per module: entry t is ‖∂L/∂y_t‖₂ over batch and features of the module's output y (top layer)."""
    chance_loss: float | None = None
    """The chance-level loss inferred from the targets the criterion saw so far (the loss of the best input-blind
    constant predictor: the Miller–Madow entropy of the class frequencies for cross-entropy/NLL, the mean per-element
    target variance for MSE, the binary entropy of the mean target for BCE-with-logits; `gradwatch.stats.chance`), computed every 10 steps and carried in between; None when the
    fed loss is not the very output of a watched criterion call (a sum of terms, a scaled loss, a float), the targets
    are still too few (classes seen once hold > 1 % of them), or with `watch(infer_chance=False)`."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; layer keys become "module:layer" strings."""
        d = asdict(self)
        d["layers"] = {f"{k[0]}:{k[1]}": asdict(v) for k, v in self.layers.items()}
        return d


class Severity(enum.IntEnum):
    """How sure and how urgent an alert is, ordered: `INFO < WARNING < CRITICAL`.

        >>> Severity.of("warning") > Severity.INFO
        True
        >>> str(Severity.CRITICAL)
        'critical'

    `Alert.severity` keeps the lower-case name (what the JSONL stream writes and what callers
    compare with); every place that ranks severities ranks `Severity` values.
    """

    INFO = 0
    WARNING = 1
    CRITICAL = 2

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def of(cls, name: "str | Severity") -> "Severity":
        """The member for 'info', 'warning' or 'critical' (a member is returned as it is)."""
        return name if isinstance(name, Severity) else cls[name.upper()]


@dataclass(frozen=True)
class Location:
    """Where an alert points: a module, one of its layers, a timestep; all None for the whole model."""

    module: str | None = None
    """Qualified module name ("" = the root module), or None for the whole model."""
    layer: int | None = None
    """Layer index inside the module, when known."""
    timestep: int | None = None
    """Timestep involved, when known."""

    def words(self, *, article: bool = False) -> str:
        """Where, in words: "'lstm' layer 0, timestep 13", "root module", "whole model".

        `article=True` gives the form that fits inside a sentence: "the root module", "the model".
        """
        if self.module is None:
            text = "the model" if article else "whole model"
        else:
            text = f"'{self.module}'" if self.module else ("the root module" if article else "root module")
            if self.layer is not None:
                text += f" layer {self.layer}"
        if self.timestep is not None:
            text += f", timestep {self.timestep}"
        return text

    def key(self) -> str:
        """Compact form for lists: 'lstm:0', 'lstm', or 'model'."""
        if self.module is None:
            return "model"
        return self.module if self.layer is None else f"{self.module}:{self.layer}"


@dataclass(frozen=True)
class Escalation:
    """The earlier report of the same (problem, sign, module, layer) that an alert escalates."""

    severity: Literal["info", "warning", "critical"]
    """Severity of that earlier report (lower than the alert's)."""
    step: int
    """Step of that earlier report."""


REMEDY = " Remedy: "
"""Between the evidence and the remedy in `Alert.message`."""


def message_text(evidence: str, remedy: str, escalated_from: "Escalation | None" = None) -> str:
    """The one-string form: "Escalated from info (step 19). " when escalated, the evidence, then
    " Remedy: " and the remedy when there is one (`Alert.message`, the JSONL `message` key)."""
    text = evidence + (REMEDY + remedy if remedy else "")
    if escalated_from is not None:
        text = f"Escalated from {escalated_from.severity} (step {escalated_from.step}). {text}"
    return text


@dataclass
class Alert:
    """A diagnosed problem: which one, which sign, where, how bad, and what to do.

    The text parts are kept apart (`evidence`, `remedy`, `escalated_from`); sinks render them.
    `message` is the one-string form the JSONL stream has always carried.
    """

    problem: Literal["vanishing", "exploding"]
    """The gradient pathology."""
    sign: str
    """The symptom practitioners know it by, e.g. 'norm_spike', 'temporal_decay', 'non_finite'."""
    severity: Literal["info", "warning", "critical"]
    """How sure and how urgent: the name of a `Severity` (`level` gives the ordered value)."""
    step: int
    """Step at which it was detected."""
    module: str | None
    """Qualified module name, or None for the whole model."""
    layer: int | None
    """Layer index, when the sign is located in one layer."""
    timestep: int | None
    """Timestep involved, when located in time."""
    value: float
    """The measured value that triggered the alert."""
    threshold: float
    """The threshold it was compared with."""
    evidence: str
    """What was measured and why it is a problem, in words (one or more sentences)."""
    remedy: str = ""
    """What to do in this case, in words ("" when there is nothing specific to do)."""
    escalated_from: Escalation | None = None
    """The earlier, less severe report of the same sign at the same place, when this one escalates it."""

    @property
    def level(self) -> Severity:
        """`severity` as an ordered `Severity`."""
        return Severity.of(self.severity)

    @property
    def location(self) -> Location:
        """`module`, `layer` and `timestep` together."""
        return Location(self.module, self.layer, self.timestep)

    @property
    def message(self) -> str:
        """Evidence, then " Remedy: " and the remedy; an escalation is named first, as
        "Escalated from info (step 19). " (the text of the JSONL `message` key)."""
        return message_text(self.evidence, self.remedy, self.escalated_from)

    def to_dict(self) -> dict[str, Any]:
        """The JSONL form: every field above (`escalated_from` as {severity, step} or None) plus `message`."""
        d = asdict(self)
        head = {k: d.pop(k) for k in ("problem", "sign", "severity", "step", "module", "layer", "timestep",
                                      "value", "threshold")}
        return {**head, "message": self.message, **d}  # the v1 keys first, in their v1 order
