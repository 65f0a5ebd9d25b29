"""Collects one step's device tensors as hooks produce them, then packs them into one buffer.

    >>> acc = StepAccumulator(layout)                          # one per step; slots from `schema`
    >>> acc.add_timesteps(slots.xgrad[0], norms, offset=0)     # from a backward probe
    >>> flat, segments = acc.pack([(WEIGHT_SQ_SLOT, wsq)])     # one float64 tensor, read back once

Everything stays on the device. A hook stores what it measured (a vector of per-timestep L2
norms, one kernel) as a piece of its slot; nothing is combined while the step runs. `pack`
combines each slot's pieces once (a decoding loop's 20 one-token calls: one `cat`, not 20
appends) and concatenates all slots so that a single asynchronous copy brings the whole
step to the host.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Sequence, Union, cast

import torch

from ..stats.tensor_stats import DEAD_EPS, SATURATION_SHARE, host_all_finite, host_overflowed as _host_overflowed
from ..stats.timestep import timestep_norms
from .schema import Segments, StepLayout

__all__ = ["StepAccumulator", "Piece"]

Scalars = Union[torch.Tensor, list[float], float]
"""A step channel's values: a device tensor, or numbers already on the host (CPU parameters)."""

Remeasure = Callable[[torch.Tensor, "int | None"], torch.Tensor]
"""(source tensor, time dim) -> per-timestep norms in float64 (the overflow-safe measurement)."""


class Piece:
    """What one call measured for one per-timestep slot: norms at timesteps offset.. of the step."""

    __slots__ = ("offset", "values", "squared", "source", "version", "time_dim")

    def __init__(self, offset: int, values: torch.Tensor | None, squared: bool, source: torch.Tensor | None,
                 time_dim: int | None) -> None:
        self.offset = offset
        self.values = values
        """L2 norms per timestep (a 0-d tensor for one timestep), or their squares when `squared`; None
        while the measurement is deferred to `pack` (`StepAccumulator.add_tensor`)."""
        self.squared = squared
        self.source = source
        """The measured tensor (detached), kept on the CPU only: re-measured in float64 at `pack` when
        a norm came out non-finite (a float32 overflow, see `stats.tensor_stats.sumsq_over`)."""
        self.version = source._version if source is not None else 0
        self.time_dim = time_dim

    @property
    def length(self) -> int:
        return self.values.shape[0] if self.values is not None and self.values.dim() else 1


class StepAccumulator:
    """Per-step store of device tensors, by slot of a `schema.StepLayout`."""

    def __init__(self, layout: StepLayout, *, finite_checks: bool = False) -> None:
        self.layout = layout
        self.finite_checks = finite_checks
        """Skip measuring a CPU tensor for a slot whose channel only locates NaN/Inf
        (`schema.Channel.locates_only`: a module's input and output) when one sum proves it all
        finite; measure it in full otherwise. The record is the same: a finite tensor's norms are
        finite and name no timestep. One sum instead of a per-timestep reduction, and nothing to
        pack, read back or search. Off under several processes (every rank must pack the same
        slots) and on devices, where reading the sum would wait for the device."""
        self.pieces: dict[int, list[Piece]] = {}
        """Per-timestep slots: the pieces in the order the calls measured them."""
        self._combined: dict[int, torch.Tensor] = {}
        """Per-timestep slots already combined this step (`timestep_profile`: auto's profiles on probe
        steps), reused by `pack`; a slot's entry goes when it gets a piece or a piece is measured again."""
        self.finals: dict[int, torch.Tensor] = {}
        """Per-layer Σ of squares of a module's final state, added over its calls."""
        self.activity: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.calls: dict[str, int] = {}
        self.chains: dict[str, tuple[tuple[weakref.ref[Any], ...], int]] = {}

    def add_timesteps(self, slot: int, values: torch.Tensor, offset: int = 0, *, squared: bool = False,
                      source: torch.Tensor | None = None, time_dim: int | None = None) -> None:
        """Add per-timestep norms (`values`, a vector, or a 0-d tensor for one timestep) starting at
        timestep `offset`. Several calls add up per timestep (aligned at t=0 unless a call
        continues the previous one; see `continuation`) when the step is packed.

        `squared`: `values` are squared norms (float64). `source`: the measured tensor, on the CPU,
        for re-measuring in float64 should a norm come out non-finite (see `Piece.source`)."""
        if source is not None and (squared or values.dtype == torch.float64 or values.device.type != "cpu"):
            source = None  # nothing to measure again: float64 already, or CUDA (accumulated in float64)
        self._add(slot, Piece(offset, values, squared, None if source is None else source.detach(), time_dim))

    def add_tensor(self, slot: int, x: torch.Tensor, offset: int = 0, *, time_dim: int | None,
                   batch_sizes: torch.Tensor | None = None) -> int:
        """Measure `x`'s per-timestep norms into `slot` from timestep `offset`; returns its number of timesteps.

        A call of several timesteps is measured now (`add_measured`: one reduction, or, for a slot
        that only locates NaN/Inf under `finite_checks`, one sum and nothing more when it is finite;
        `x` is not kept). A call of one timestep (a decoding loop's token, a cell's call) is kept and
        measured at `pack`, together with the slot's other such calls: one kernel for the whole loop
        instead of one per call (under `finite_checks`, a slot that only locates NaN/Inf is first
        summed once there, and dropped when that proves it finite). Use it for tensors nobody
        modifies in place before the step ends (a module's input, which autograd saves; an output
        gradient); a module's output is measured at once (`add_measured`).
        """
        length = batch_sizes.numel() if batch_sizes is not None else (1 if time_dim is None else x.shape[time_dim])
        if batch_sizes is None and length == 1:  # (kept as is: one check at pack would cost as much as this)
            piece = Piece(offset, None, False, None, time_dim)
            piece.source = x.detach()
            self._add(slot, piece)
            return 1
        self.add_measured(slot, x, offset, time_dim=time_dim, batch_sizes=batch_sizes)
        return length

    def add_measured(self, slot: int, x: torch.Tensor, offset: int = 0, *, time_dim: int | None,
                     batch_sizes: torch.Tensor | None = None) -> bool:
        """Measure `x`'s per-timestep norms into `slot` from timestep `offset` now (a module's output,
        which the user may change in place once it is returned). Returns False when nothing was
        recorded because `x` was proven all finite (`finite_checks`), True otherwise."""
        if self.finite_checks and self.layout.locating[slot] and _host_checkable(x) and host_all_finite(x):
            return False
        norms, squared = timestep_norms(x, time_dim, batch_sizes)
        self.add_timesteps(slot, norms, offset, squared=squared, source=x, time_dim=time_dim)
        return True

    def _add(self, slot: int, piece: Piece) -> None:
        self._combined.pop(slot, None)
        pieces = self.pieces.get(slot)
        if pieces is None:
            self.pieces[slot] = [piece]
        else:
            pieces.append(piece)

    def add_final(self, slot: int, sumsq: torch.Tensor) -> None:
        """Add a module's per-layer Σ of squares of its final state (summed over calls)."""
        old = self.finals.get(slot)
        self.finals[slot] = sumsq if old is None or old.shape != sumsq.shape else old + sumsq

    def add_activity(self, slot: int, stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Combine per-unit (max |h|, saturated count, positions) across forward calls."""
        old = self.activity.get(slot)
        if old is None or old[0].shape != stats[0].shape:
            self.activity[slot] = stats
        else:
            self.activity[slot] = (torch.maximum(old[0], stats[0]), old[1] + stats[1], old[2] + stats[2])

    def continuation(self, module: str, initial_state: object) -> int:
        """First timestep of a fused module's call: where the module's previous call this step
        ended when `initial_state` is the very final state that call returned (a decoding loop
        feeding one token at a time), else 0 (independent sequences, e.g. accumulated micro-batches)."""
        chain = self.chains.get(module)
        if chain is None or initial_state is None:
            return 0
        finals, end = chain
        states = initial_state if isinstance(initial_state, tuple) else (initial_state,)
        same = len(states) == len(finals) and all(ref() is state for ref, state in zip(finals, states))
        return end if same else 0

    def end_call(self, module: str, final_state: object, end: int) -> None:
        """Remember a fused module's returned final state and the timestep after its last one.

        By weak reference: the state's graph holds the output-gradient hooks, which hold this
        accumulator; a strong reference would close a cycle through autograd that gc cannot see.
        (For the same reason a `Piece.source` is a detached tensor: it has no graph.)
        """
        states = final_state if isinstance(final_state, tuple) else (final_state,)
        self.chains[module] = (tuple(weakref.ref(s) for s in states), end)

    def next_call(self, module: str) -> int:
        """Index of the next call of a cell module within this step."""
        t = self.calls.get(module, 0)
        self.calls[module] = t + 1
        return t

    def timestep_profile(self, slot: int) -> torch.Tensor | None:
        """One per-timestep slot's norms measured so far this step, as `pack` will put them in the
        buffer (measured and combined now, once: `pack` reuses it); None when nothing was measured."""
        pieces = self.pieces.get(slot)
        if not pieces:
            return None
        combined = self._combined.get(slot)
        if combined is None:
            self.pieces[slot] = pieces = _measured(pieces)
            combined = self._combined[slot] = combine(pieces)
        return combined

    def gradient_profiles(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per watched module, (‖∂L/∂y_t‖ into its output, ‖∂L/∂x_t‖ out through its input) per
        timestep, cut to a common length: for modules that have both this step (probe steps).
        Clipping's "auto" reads how far the gradient travels back in time from them."""
        pairs = []
        for slots in self.layout.modules.values():
            out_grad = self.timestep_profile(slots.out_grad)
            in_grad = self.timestep_profile(slots.xgrad[0]) if slots.xgrad else None
            if out_grad is not None and in_grad is not None:
                n = min(out_grad.shape[0], in_grad.shape[0])
                pairs.append((out_grad[:n], in_grad[:n]))
        return pairs

    def pack(self, scalars: Sequence[tuple[int, Scalars]], *, remeasure: Remeasure | None = None,
             host_prefix: list[float] | None = None) -> tuple[torch.Tensor | None, Segments]:
        """Concatenate `scalars` ((slot, values)) and everything accumulated into one vector: the
        scalars (those given as Python floats first), then per-timestep norms, then final states,
        then activity shares. Float64, or float32 when it holds nothing wider and is read back on
        the CPU as is (the same Python floats).

        `remeasure`: how to measure a source again in float64 when a CPU piece's norm came out
        non-finite (None: keep it as measured). `host_prefix`: a list that receives the numbers
        given as Python floats instead of the buffer (the read-back then starts after them): no
        tensor made of numbers that are on the host already.
        """
        parts: list[torch.Tensor] = []
        segments: Segments = []
        host: list[float] = []
        for slot, t in scalars:  # numbers already on the host first, in one tensor
            if isinstance(t, (list, float)):
                values = t if isinstance(t, list) else [t]
                host.extend(values)
                segments.append((slot, len(values)))
        if host_prefix is not None:
            host_prefix[:] = host
        elif host:
            parts.append(torch.tensor(host, dtype=torch.float64))
        for slot, t in scalars:
            if isinstance(t, (list, float)):
                continue
            part = t.detach() if t.requires_grad else t
            part = part if part.dim() == 1 else part.reshape(-1)
            parts.append(part)
            segments.append((slot, part.shape[0]))
        first_timestep = len(parts)
        if self.finite_checks:
            self._drop_finite_deferred()
        for slot in sorted(self.pieces):
            norms = self.timestep_profile(slot)  # combined once: reused when the profiles asked for it
            assert norms is not None  # a slot's list holds its first piece from the start
            parts.append(norms)
            segments.append((slot, norms.shape[0]))
        timestep_parts = len(parts) - first_timestep
        for slot, sumsq in self.finals.items():
            parts.append(sumsq)
            segments.append((slot, sumsq.shape[0]))
        for slot, (maxabs, satcount, positions) in self.activity.items():
            dead = (maxabs < DEAD_EPS).float().mean()
            sat = (satcount >= SATURATION_SHARE * positions).float().mean()
            parts.append(torch.stack([dead, sat]))
            segments.append((slot, 2))
        if not parts:
            return None, segments
        device = parts[0].device
        flat = torch.cat([p if p.device == device else p.to(device) for p in parts])
        if host_prefix is None or device.type != "cpu":
            # float64 for the reducer's sums of squares and the device's read-back; a CPU buffer read
            # back as is gives the same Python floats in float32 (every float32 is a float64)
            flat = flat.to(dtype=torch.float64)
        if remeasure is not None and timestep_parts and device.type == "cpu":
            start = sum(p.shape[0] for p in parts[:first_timestep])
            end = start + sum(p.shape[0] for p in parts[first_timestep : first_timestep + timestep_parts])
            region = flat if start == 0 and end == flat.shape[0] else flat[start:end]
            if _host_overflowed(region) and self._remeasured(remeasure):
                return self.pack(scalars, host_prefix=host_prefix)  # rare: a non-finite norm, measured again in float64
        return flat, segments

    def _drop_finite_deferred(self) -> None:
        """Under `finite_checks`: drop each slot that only locates NaN/Inf (a module's input) whose
        pieces are all deferred one-timestep calls (a decoding loop's tokens, a cell's calls) when
        one sum proves them all finite, as `add_measured` does for a call of several timesteps:
        one sum instead of a per-timestep norm, and nothing to pack, read back or search."""
        locating = self.layout.locating
        for slot, pieces in list(self.pieces.items()):
            if not locating[slot]:
                continue
            sources = [p.source for p in pieces if p.values is None]
            if len(sources) == len(pieces) and _sources_finite(sources):
                del self.pieces[slot]
                self._combined.pop(slot, None)

    def _remeasured(self, remeasure: Remeasure) -> bool:
        """Measure again in float64 every CPU piece whose norm is non-finite and whose source is
        unchanged since; True when one was."""
        changed = False
        for pieces in self.pieces.values():
            for p in pieces:
                values = p.values
                if p.source is None or p.squared or p.version != p.source._version or values is None:
                    continue
                if values.dtype != torch.float64 and _host_overflowed(values.double()):
                    p.values, p.source = remeasure(p.source, p.time_dim), None
                    changed = True
        if changed:
            self._combined.clear()
        return changed


def _host_checkable(x: torch.Tensor) -> bool:
    """Whether a finite sum of `x` proves its recorded norms finite, read at no cost: a CPU tensor
    below float64. (A float64 norm of finite values can overflow and is never measured again, so
    float64 data is always measured; float32 norms that overflow are measured again in float64.)"""
    return x.device.type == "cpu" and x.dtype != torch.float64


def _sources_finite(sources: list[torch.Tensor | None]) -> bool:
    """Whether one sum proves every entry of `sources` finite: CPU tensors below float64 (see
    `_host_checkable`) of one shape, dtype and device, summed once joined along their first
    dimension (`cat`: no view per tensor, unlike `stack`). False ("not proven") otherwise."""
    first = sources[0]
    if first is None or not first.dim() or not _host_checkable(first):
        return False
    shape, dtype = first.shape, first.dtype
    for s in sources:
        if s is None or s.shape != shape or s.dtype != dtype or not s.is_cpu:
            return False
    return host_all_finite(torch.cat(cast(list[torch.Tensor], sources)))  # no None: checked above


def _measured(pieces: list[Piece]) -> list[Piece]:
    """`pieces` with every deferred one measured: one kernel for all of them when they tile the step
    from t=0 (a decoding loop, a cell's calls), else one each."""
    deferred = [p for p in pieces if p.values is None]
    if not deferred:
        return pieces
    if len(deferred) == len(pieces) and len(pieces) > 1:
        ordered = sorted(pieces, key=_offset)
        first = ordered[0].source
        assert first is not None
        tdim = ordered[0].time_dim
        if (all(p.offset == t and p.time_dim == tdim and p.source is not None and p.source.shape == first.shape
                for t, p in enumerate(ordered))):
            sources = [p.source for p in ordered if p.source is not None]
            data = torch.stack(sources) if tdim is None else torch.cat(sources, dim=tdim)
            whole = 0 if tdim is None else tdim
            return [Piece(0, timestep_norms(data, whole)[0], False, _keep(data), whole)]
    for p in deferred:
        assert p.source is not None
        p.values = timestep_norms(p.source, p.time_dim)[0]
        p.version, p.source = (p.source._version, p.source) if _keep(p.source) is not None else (0, None)
    return pieces


def _keep(data: torch.Tensor) -> torch.Tensor | None:
    """`data` when a float32 norm of it may need measuring again (a CPU tensor below float64)."""
    return data if data.device.type == "cpu" and data.dtype != torch.float64 else None


def combine(pieces: list[Piece]) -> torch.Tensor:
    """One slot's per-timestep norms from its pieces: Σ over pieces of squared norms per timestep
    (zero-padded, added in the order the pieces came), then the square root, in float64.

    The usual shapes cost one kernel or none and give the same bits: a lone piece at t=0 is its
    own norms; pieces that tile 0..T without overlap (a decoding loop, forward in order or
    backward last token first; a cell's calls) are concatenated in timestep order. (A float32
    norm n squared in float64 is exact, and 0 + n² = n², sqrt(n²) = n.)"""
    if len(pieces) == 1 and pieces[0].offset == 0 and not pieces[0].squared:
        values = _values(pieces[0])
        return values if values.dim() == 1 else values.reshape(1)
    if not any(p.squared for p in pieces):
        ordered = sorted(pieces, key=_offset)
        end = 0
        for p in ordered:
            if p.offset != end:
                break
            end += p.length
        else:
            measured = [_values(p) for p in ordered]
            if all(v.dim() == 0 for v in measured):
                return torch.stack(measured)
            return torch.cat([v if v.dim() == 1 else v.reshape(1) for v in measured])
    return _padded_root_sum_square(pieces)


def _offset(piece: Piece) -> int:
    return piece.offset


def _values(piece: Piece) -> torch.Tensor:
    """A measured piece's values (`_measured` ran before any combining)."""
    assert piece.values is not None
    return piece.values


def _padded_root_sum_square(pieces: list[Piece]) -> torch.Tensor:
    length = max(p.offset + p.length for p in pieces)
    total: torch.Tensor | None = None
    for p in pieces:
        sq = _values(p).reshape(-1).double()
        if not p.squared:
            sq = sq.square()
        if p.offset or p.length < length:
            sq = torch.cat([sq.new_zeros(p.offset), sq, sq.new_zeros(length - p.offset - p.length)])
        total = sq if total is None else total + sq
    assert total is not None
    return total.sqrt()
