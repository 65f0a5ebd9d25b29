"""Turn one step's read-back numbers into a `StepStats` record (pure Python, no tensors).

    >>> stats = build_step_stats(pending, flat_values, loss=0.7)

Each field is read from its channel's slot (`stream.schema`); nothing here spells a key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from ..records import ClipEvent, DirectionStats, LayerStats, NonFinite, StepStats
from .groups import GroupKey
from .schema import CHANCE, CLIP, GRAD_SQ, OUTSIDE_WEIGHT_SQ, TOTAL_SQ, UPDATE_SQ, WEIGHT_SQ, Segments, StepLayout

__all__ = ["ModuleInfo", "PendingStep", "split_values", "build_step_stats", "locate_nonfinite"]


@dataclass
class ModuleInfo:
    """What the record builder needs to know about a watched module."""

    name: str
    kind: str
    num_layers: int
    relu: bool = False


@dataclass
class PendingStep:
    """A finished step whose numbers may still be on their way from the device."""

    step: int
    layout: StepLayout
    segments: Segments
    """(slot, length) of each segment of the read-back buffer, in order (`StepAccumulator.pack`)."""
    groups: list[GroupKey]
    has_grad: list[bool]
    probed: bool
    modules: list[ModuleInfo]
    readback: object | None = None
    loss_readback: object | None = None
    loss: float | None = None
    loss_fed: bool = False
    """`monitor.step(loss)` (or `end_step`) came for this step, with or without a loss: it may be published."""
    clip_policy: str | None = None
    skipped: bool = False
    host_values: list[float] = field(default_factory=list)
    """The values of the first segments, already on the host (CPU parameter reads); the read-back
    buffer holds the rest."""
    outside_params: tuple[str, ...] = ()
    """Names of the model's parameters outside the watched modules, in the order of `OUTSIDE_WEIGHT_SQ`."""
    chance_source: object | None = None
    """A weak reference to the criterion output whose inferred chance level was packed (`CHANCE`), or None."""
    chance_measured: bool = False
    """The chance level was computed and packed this step (`CHANCE`); otherwise the record carries the latest."""
    chance_claimed: bool = False
    """The loss fed for this step is that output: the record keeps the chance level."""


Values = Sequence["list[float] | None"]
"""A step's read-back values by slot (None: not measured this step)."""


def split_values(layout: StepLayout, segments: Segments, flat: list[float]) -> list[list[float] | None]:
    """Cut the flat read-back list into its segments, by slot."""
    out: list[list[float] | None] = [None] * layout.size
    pos = 0
    for slot, n in segments:
        out[slot] = flat[pos : pos + n]
        pos += n
    return out


def _sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _first_bad(values: list[float] | None, *, last: bool = False) -> int | None:
    if not values or math.isfinite(sum(values)):
        return None  # norms are >= 0: a finite sum means every entry is finite (one C loop, the usual case)
    bad = [t for t, v in enumerate(values) if not math.isfinite(v)]
    if not bad:
        return None
    return bad[-1] if last else bad[0]


def _layers(p: PendingStep, v: Values) -> dict[tuple[str, int], LayerStats]:
    lay = p.layout
    gsq, wsq, usq = v[lay.slot(GRAD_SQ)], v[lay.slot(WEIGHT_SQ)], v[lay.slot(UPDATE_SQ)]
    by_layer: dict[tuple[str, int], list[int]] = {}
    for g, key in enumerate(p.groups):
        gs = by_layer.get((key.module, key.layer))
        if gs is None:
            by_layer[(key.module, key.layer)] = [g]
        else:
            gs.append(g)
    modules, has_grad, probed = lay.modules, p.has_grad, p.probed
    kinds = {m.name: m for m in p.modules}
    sqrt, nan = math.sqrt, math.nan
    layers = {}
    for (name, layer), gs in by_layer.items():
        g2 = [gsq[g] for g in gs] if gsq else [0.0] * len(gs)
        w2 = [wsq[g] for g in gs] if wsq else [nan] * len(gs)
        u2 = [usq[g] for g in gs] if usq else [nan] * len(gs)
        dirs = [DirectionStats(_sqrt(a), _sqrt(b), _ratio(_sqrt(c), _sqrt(b))) for a, b, c in zip(g2, w2, u2)]
        w, u, gn = sum(w2), sum(u2), sum(g2)
        wn = sqrt(w) if w >= 0 else nan  # _sqrt, inline: this runs for every layer of every step
        un = sqrt(u) if u >= 0 else nan
        slots = modules.get(name)
        info = kinds.get(name)
        activity = v[slots.activity[layer]] if slots else None
        xgrad = v[slots.xgrad[layer]] if (slots and probed) else None
        act = v[slots.act[layer]] if (slots and probed) else None
        layers[(name, layer)] = LayerStats(
            module=name,
            layer=layer,
            kind=info.kind if info else "",
            grad_norm=sqrt(gn) if gn >= 0 else nan,
            weight_norm=wn,
            update_norm=un,
            update_ratio=un / wn if wn > 0 else nan,
            has_grad=any(has_grad[g] for g in gs),
            timestep_grad_norms=xgrad,  # a slice of the read-back values (`split_values`): the record's own list
            timestep_activation_norms=act,
            dead_fraction=activity[0] if activity else None,
            saturated_fraction=(None if (info and info.relu) else activity[1]) if activity else None,
            directions=dirs,
        )
    return layers


def _all_finite(flat: list[float], layers: dict[tuple[str, int], LayerStats], loss: float | None) -> bool:
    """Every read-back value, every layer's weight and gradient norm and the loss are finite: nothing for
    `locate_nonfinite` to find (one C loop over the values, the usual case)."""
    if loss is not None and not math.isfinite(loss):
        return False
    if not math.isfinite(sum(flat)):  # a NaN/Inf anywhere makes the sum non-finite (an overflow too: then searched)
        return False
    isfinite = math.isfinite
    return all(isfinite(ls.weight_norm) and isfinite(ls.grad_norm) for ls in layers.values())


def locate_nonfinite(
    p: PendingStep, v: Values, layers: dict[tuple[str, int], LayerStats], loss: float | None
) -> NonFinite | None:
    """Where a NaN/Inf first appeared: weights, then forward, then loss, then backward."""
    for (name, layer), ls in layers.items():
        if not math.isfinite(ls.weight_norm):
            return NonFinite("weights", name, layer, None)
    lay = p.layout
    bad = _first_bad(v[lay.slot(OUTSIDE_WEIGHT_SQ)])
    if bad is not None and bad < len(p.outside_params):  # an embedding/head weight: its module, no layer
        return NonFinite("weights", p.outside_params[bad].rpartition(".")[0] or None, None, None)
    for m in p.modules:
        slots = lay.modules.get(m.name)
        if slots is None:
            continue
        t = _first_bad(v[slots.in_act])
        if t is not None:
            return NonFinite("input", m.name, 0, t)
        t_out = _first_bad(v[slots.out_act])
        if t_out is None:
            continue
        for layer in range(m.num_layers):
            t = _first_bad(v[slots.act[layer]])
            if t is not None:
                return NonFinite("forward", m.name, layer, t)
        # no per-layer activations (not a probe step): the lowest layer whose final state is
        # non-finite is where it appeared (see capture.stack.final_state_sumsq); else the top layer,
        # whose output showed it
        first_layer = _first_bad(v[slots.final])
        layer = first_layer if first_layer is not None else m.num_layers - 1
        return NonFinite("forward", m.name, layer, t_out)
    if loss is not None and not math.isfinite(loss):
        return NonFinite("loss", None, None, None)
    for m in p.modules:
        slots = lay.modules.get(m.name)
        if slots is None:
            continue
        t_out = _first_bad(v[slots.out_grad], last=True)
        if t_out is not None:
            return NonFinite("backward", m.name, m.num_layers - 1, t_out)
        for layer in reversed(range(m.num_layers)):
            t = _first_bad(v[slots.xgrad[layer]], last=True)
            if t is not None:
                return NonFinite("backward", m.name, layer, t)
        for layer in reversed(range(m.num_layers)):
            found = layers.get((m.name, layer))
            if found is not None and not math.isfinite(found.grad_norm):
                return NonFinite("backward", m.name, layer, None)
    total = v[lay.slot(TOTAL_SQ)]
    if total and not math.isfinite(total[0]):
        return NonFinite("backward", None, None, None)
    return None


def build_step_stats(p: PendingStep, flat: list[float], loss: float | None, *,
                     chance: float | None = None) -> StepStats:
    """The record for one step from its read-back values; `chance`: the latest inferred chance level read back,
    for a step that did not compute it."""
    lay = p.layout
    v = split_values(lay, p.segments, flat)
    layers = _layers(p, v)
    total = v[lay.slot(TOTAL_SQ)]
    clip = None
    clip_values = v[lay.slot(CLIP)]
    if p.clip_policy is not None and clip_values is not None:
        before, after, coef, threshold = clip_values
        clip = ClipEvent(p.clip_policy, before, after, coef, threshold if math.isfinite(threshold) else None)
    return StepStats(
        step=p.step,
        loss=loss,
        grad_norm=_sqrt(total[0]) if total else 0.0,
        layers=layers,
        probed=p.probed,
        nonfinite=None if _all_finite(flat, layers, loss) else locate_nonfinite(p, v, layers, loss),
        clip=clip,
        skipped=p.skipped,
        timestep_output_grad_norms=_output_grad_norms(p, v),
        chance_loss=_chance(p, v, chance),
    )


def _chance(p: PendingStep, v: Values, carried: float | None) -> float | None:
    """The inferred chance level when the fed loss is its criterion's output: measured this step (an estimate > 0,
    else None), or `carried` from an earlier step."""
    if not p.chance_claimed:
        return None
    if not p.chance_measured:
        return carried
    values = v[p.layout.slot(CHANCE)]
    if not values or not (values[0] > 0 and math.isfinite(values[0])):
        return None
    return values[0]


def _output_grad_norms(p: PendingStep, v: Values) -> dict[str, list[float]]:
    out = {}
    modules = p.layout.modules
    for m in p.modules:
        slots = modules.get(m.name)
        values = v[slots.out_grad] if slots else None
        if values is not None:
            out[m.name] = values  # a slice of the read-back values (`split_values`): the record's own list
    return out
