"""The measurement schema: every channel a step records, declared once.

    >>> layout = StepLayout([ModuleInfo("rnn", "LSTM", num_layers=2)])
    >>> slots = layout.modules["rnn"]          # precomputed once per module layout
    >>> acc.add_timesteps(slots.xgrad[1], norms)   # capture writes by slot number, no key built
    >>> layout.slot(XGRAD, "rnn", 1) == slots.xgrad[1]
    True

A channel says what it measures (its name), where it lives (`Scope`: once per step, per
watched module, per layer of a module), the shape of its values (`Shape`), how several
processes combine it (`Reduce`) and which record field it fills. Everybody else works from
these declarations: the capture adapters and the monitor write into slots, the accumulator
packs the slots into one buffer in slot order, `distributed.StepReducer` picks each segment's
reduction from its channel, and `stream.build` reads each field's values by slot.

Adding a channel is one declaration here (plus adding it to `CHANNELS`) and its producer;
the record builder reads it by `layout.slot(CHANNEL, ...)` where it fills a field.

Slots are small integers fixed for one module layout (the list of watched modules): step
channels first, then each module's channels, then each of its layers' channels, in the
order of `CHANNELS`. Every rank running the same model has the same slots.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, Sequence

__all__ = ["Scope", "Shape", "Reduce", "Channel", "CHANNELS", "ModuleShape", "ModuleSlots", "StepLayout", "Segments",
           "GRAD_SQ", "WEIGHT_SQ", "UPDATE_SQ", "TOTAL_SQ", "OUTSIDE_WEIGHT_SQ", "CLIP", "CHANCE",
           "IN_ACT", "OUT_ACT", "OUT_GRAD", "FINAL_STATE", "XGRAD", "ACT", "ACTIVITY"]


class Scope(enum.Enum):
    """How many instances of a channel one step has."""

    STEP = "once per step"
    MODULE = "once per watched module"
    LAYER = "once per layer of a watched module"


class Shape(enum.Enum):
    """What one instance of a channel holds (float64 values in the packed buffer)."""

    SCALAR = "one value"
    PER_GROUP = "one value per parameter group (module, layer, direction)"
    PER_OUTSIDE = "one value per model parameter outside the watched modules"
    PER_TIMESTEP = "one L2 norm per timestep (length varies from step to step)"
    PER_LAYER = "one value per layer of the module"
    UNIT_SHARES = "two shares of the layer's units: dead, saturated"
    CLIP = "four clip figures: norm before, norm after, coefficient, threshold (NaN: none)"


class Reduce(enum.Enum):
    """How `distributed.StepReducer` combines a channel's values over processes."""

    MEAN = "the mean over ranks (equal values stay equal)"
    ROOT_SUM_SQUARE = "root of the sum of squares over ranks: a norm over the global batch"


@dataclass(frozen=True)
class Channel:
    """One measurement a step records."""

    name: str
    """Short name (used in signatures and error messages)."""
    scope: Scope
    shape: Shape
    reduce: Reduce
    fills: str
    """The record field(s) built from it."""
    locates_only: bool = False
    """Its values feed nothing but `StepStats.nonfinite` (where a NaN/Inf appeared): a step whose
    measured tensor is all finite gives the same record without them (`StepAccumulator` may then
    skip the measurement; see `StepAccumulator.finite_checks`)."""


GRAD_SQ = Channel("gsq", Scope.STEP, Shape.PER_GROUP, Reduce.MEAN,
                  "LayerStats.grad_norm, DirectionStats.grad_norm (Σ grad² per group)")
WEIGHT_SQ = Channel("wsq", Scope.STEP, Shape.PER_GROUP, Reduce.MEAN,
                    "LayerStats.weight_norm, DirectionStats.weight_norm (Σθ² before the update)")
UPDATE_SQ = Channel("usq", Scope.STEP, Shape.PER_GROUP, Reduce.MEAN,
                    "LayerStats.update_norm/update_ratio, DirectionStats.update_ratio (Σ(Δθ)²)")
TOTAL_SQ = Channel("total", Scope.STEP, Shape.SCALAR, Reduce.MEAN,
                   "StepStats.grad_norm (Σ grad² over the whole model)")
OUTSIDE_WEIGHT_SQ = Channel("outside_wsq", Scope.STEP, Shape.PER_OUTSIDE, Reduce.MEAN,
                            "StepStats.nonfinite (where='weights' outside the watched modules)", locates_only=True)
CLIP = Channel("clip", Scope.STEP, Shape.CLIP, Reduce.MEAN, "StepStats.clip")
CHANCE = Channel("chance", Scope.STEP, Shape.SCALAR, Reduce.MEAN,
                 "StepStats.chance_loss (inferred from the criterion's targets; NaN: no estimate)")
IN_ACT = Channel("in_act", Scope.MODULE, Shape.PER_TIMESTEP, Reduce.ROOT_SUM_SQUARE,
                 "StepStats.nonfinite (where='input')", locates_only=True)
OUT_ACT = Channel("out_act", Scope.MODULE, Shape.PER_TIMESTEP, Reduce.ROOT_SUM_SQUARE,
                  "StepStats.nonfinite (where='forward', the timestep)", locates_only=True)
OUT_GRAD = Channel("out_grad", Scope.MODULE, Shape.PER_TIMESTEP, Reduce.ROOT_SUM_SQUARE,
                   "StepStats.timestep_output_grad_norms, StepStats.nonfinite (where='backward')")
FINAL_STATE = Channel("final", Scope.MODULE, Shape.PER_LAYER, Reduce.MEAN,
                      "StepStats.nonfinite (the layer, on steps without the probe)", locates_only=True)
XGRAD = Channel("xgrad", Scope.LAYER, Shape.PER_TIMESTEP, Reduce.ROOT_SUM_SQUARE,
                "LayerStats.timestep_grad_norms (probe steps), StepStats.nonfinite")
ACT = Channel("act", Scope.LAYER, Shape.PER_TIMESTEP, Reduce.ROOT_SUM_SQUARE,
              "LayerStats.timestep_activation_norms (probe steps), StepStats.nonfinite")
ACTIVITY = Channel("activity", Scope.LAYER, Shape.UNIT_SHARES, Reduce.MEAN,
                   "LayerStats.dead_fraction, LayerStats.saturated_fraction (probe steps)")

CHANNELS: tuple[Channel, ...] = (GRAD_SQ, WEIGHT_SQ, UPDATE_SQ, TOTAL_SQ, OUTSIDE_WEIGHT_SQ, CLIP, CHANCE,
                                 IN_ACT, OUT_ACT, OUT_GRAD, FINAL_STATE, XGRAD, ACT, ACTIVITY)
"""Every channel, in slot order within its scope."""


class ModuleShape(Protocol):
    """What the layout needs to know of a watched module (`stream.build.ModuleInfo` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def num_layers(self) -> int: ...


@dataclass(frozen=True)
class ModuleSlots:
    """One watched module's slots, looked up once per call by the capture adapters."""

    in_act: int
    out_act: int
    out_grad: int
    final: int
    xgrad: tuple[int, ...]
    """Per layer."""
    act: tuple[int, ...]
    activity: tuple[int, ...]


class StepLayout:
    """Slot numbers of every channel instance for one list of watched modules (built once per list)."""

    def __init__(self, modules: Sequence[ModuleShape]) -> None:
        self.channels: list[Channel] = []
        """The channel of each slot."""
        self.owners: list[tuple[str | None, int | None]] = []
        """(module, layer) of each slot (None where the scope has none)."""
        self._slots: dict[tuple[str, str | None, int | None], int] = {}
        for channel in CHANNELS:
            if channel.scope is Scope.STEP:
                self._add(channel, None, None)
        self.modules: dict[str, ModuleSlots] = {}
        for m in modules:
            for channel in CHANNELS:
                if channel.scope is Scope.MODULE:
                    self._add(channel, m.name, None)
            for layer in range(m.num_layers):
                for channel in CHANNELS:
                    if channel.scope is Scope.LAYER:
                        self._add(channel, m.name, layer)
            per_layer = range(m.num_layers)
            self.modules[m.name] = ModuleSlots(
                in_act=self.slot(IN_ACT, m.name), out_act=self.slot(OUT_ACT, m.name),
                out_grad=self.slot(OUT_GRAD, m.name), final=self.slot(FINAL_STATE, m.name),
                xgrad=tuple(self.slot(XGRAD, m.name, k) for k in per_layer),
                act=tuple(self.slot(ACT, m.name, k) for k in per_layer),
                activity=tuple(self.slot(ACTIVITY, m.name, k) for k in per_layer))
        self.size = len(self.channels)
        self.locating = tuple(c.locates_only for c in self.channels)
        """Per slot: its channel only locates NaN/Inf (`Channel.locates_only`)."""
        self.summed_slots = tuple(s for s, c in enumerate(self.channels) if c.reduce is Reduce.ROOT_SUM_SQUARE)
        """Slots combined by root-sum-square over ranks; their lengths may differ between ranks (per-timestep
        norms of sequences of different lengths), so `distributed` agrees on them first."""

    def _add(self, channel: Channel, module: str | None, layer: int | None) -> None:
        self._slots[(channel.name, module, layer)] = len(self.channels)
        self.channels.append(channel)
        self.owners.append((module, layer))

    def slot(self, channel: Channel, module: str | None = None, layer: int | None = None) -> int:
        """The slot of `channel` (for `module`, and `layer`, by its scope)."""
        return self._slots[(channel.name, module, layer)]

    def describe(self, slot: int) -> str:
        """A slot in words, e.g. "xgrad[rnn, layer 1]" (for signatures and messages)."""
        module, layer = self.owners[slot]
        where = "" if module is None else f"[{module}" + ("" if layer is None else f", layer {layer}") + "]"
        return self.channels[slot].name + where


Segments = list[tuple[int, int]]
"""(slot, number of values) for each segment of a packed buffer, in buffer order."""
