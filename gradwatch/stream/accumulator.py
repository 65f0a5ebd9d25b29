"""Collects one step's device tensors as hooks produce them, then packs them into one buffer.

    >>> acc = StepAccumulator()
    >>> acc.add_timesteps(("xgrad", "lstm", 0), sumsq)      # from a backward probe
    >>> flat, layout = acc.pack({"loss": loss})              # one tensor, read back once

Everything stays on the device; `pack` concatenates it so that a single asynchronous copy
brings the whole step to the host.
"""

from __future__ import annotations

import weakref
from typing import Hashable

import torch

from ..stats.tensor_stats import DEAD_EPS, SATURATION_SHARE

__all__ = ["StepAccumulator", "Layout"]

Layout = list[tuple[Hashable, int]]
"""(key, number of values) for each segment of a packed buffer, in order."""


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape[0] < b.shape[0]:
        a, b = b, a
    if a.shape[0] == b.shape[0]:
        return a + b
    return torch.cat([a[: b.shape[0]] + b, a[b.shape[0]:]])


class StepAccumulator:
    """Per-step store of device tensors, keyed by tuples such as ("xgrad", module, layer)."""

    def __init__(self) -> None:
        self.vectors: dict[Hashable, torch.Tensor] = {}
        self.indexed: dict[Hashable, dict[int, torch.Tensor]] = {}
        self.activity: dict[Hashable, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.calls: dict[str, int] = {}
        self.chains: dict[str, tuple[tuple[weakref.ref, ...], int]] = {}
        self._owned: set[Hashable] = set()
        """Keys of `vectors` whose tensor this accumulator made (may be added to in place)."""

    def add_timesteps(self, key: Hashable, sumsq: torch.Tensor, offset: int = 0) -> None:
        """Add a per-timestep vector of squared norms starting at timestep `offset` (several calls
        add up, aligned at t=0 unless a call continues the previous one; see `continuation`).

        Two shapes of call cost one kernel, not a padded copy and a sum: a call that continues the
        vector right where it ends (a decoding loop's forwards) appends; a call that lands inside a
        vector this accumulator made (the same loop's backward, last token first) adds in place.
        Both give the bits the padded sum gives: squared norms are never -0.0, and x + 0.0 == x."""
        old = self.vectors.get(key)
        if old is not None and offset and sumsq.dim() == 1 and old.dtype == sumsq.dtype:
            length, n = old.shape[0], sumsq.shape[0]
            if length == offset:
                self.vectors[key] = torch.cat([old, sumsq])
                self._owned.add(key)
                return
            if offset + n <= length and key in self._owned:
                old[offset : offset + n].add_(sumsq)
                return
        if offset:
            sumsq = torch.cat([sumsq.new_zeros(offset), sumsq])
        if old is None:
            self.vectors[key] = sumsq
            if offset:
                self._owned.add(key)
        else:
            self.vectors[key] = _add_padded(old, sumsq)
            self._owned.add(key)

    def set_timestep(self, key: Hashable, t: int, sumsq: torch.Tensor) -> None:
        """Add a squared norm for timestep `t` (cells, where each call is one timestep)."""
        slots = self.indexed.setdefault(key, {})
        slots[t] = sumsq if t not in slots else slots[t] + sumsq

    def add_activity(self, key: Hashable, stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Combine per-unit (max |h|, saturated count, positions) across forward calls."""
        old = self.activity.get(key)
        if old is None or old[0].shape != stats[0].shape:
            self.activity[key] = stats
        else:
            self.activity[key] = (torch.maximum(old[0], stats[0]), old[1] + stats[1], old[2] + stats[2])

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
        """
        states = final_state if isinstance(final_state, tuple) else (final_state,)
        self.chains[module] = (tuple(weakref.ref(s) for s in states), end)  # type: ignore[arg-type]

    def next_call(self, module: str) -> int:
        """Index of the next call of a cell module within this step."""
        t = self.calls.get(module, 0)
        self.calls[module] = t + 1
        return t

    def timesteps(self) -> dict[Hashable, torch.Tensor]:
        """All per-timestep vectors, cells' indexed entries stacked in timestep order."""
        out = dict(self.vectors)
        for key, slots in self.indexed.items():
            if slots:
                n = max(slots) + 1
                ref = next(iter(slots.values()))
                out[key] = torch.stack([slots.get(t, torch.zeros_like(ref)) for t in range(n)])
        return out

    def pack(self, scalars: dict[Hashable, torch.Tensor]) -> tuple[torch.Tensor | None, Layout]:
        """Concatenate `scalars` and everything accumulated into one float64 vector.

        Per-timestep squared norms become norms (sqrt) here, on the device.
        """
        parts: list[torch.Tensor] = []
        layout: Layout = []
        for key, t in scalars.items():
            part = _flat64(t.detach() if t.requires_grad else t)
            parts.append(part)
            layout.append((key, part.shape[0]))
        first_timestep = sum(n for _, n in layout)
        for key, v in self.timesteps().items():
            part = _flat64(v)
            parts.append(part)
            layout.append((key, part.shape[0]))
        timestep_values = sum(n for _, n in layout) - first_timestep
        for key, (maxabs, satcount, positions) in self.activity.items():
            dead = (maxabs < DEAD_EPS).float().mean()
            sat = (satcount >= SATURATION_SHARE * positions).float().mean()
            parts.append(torch.stack([dead, sat]).double())
            layout.append((key, 2))
        if not parts:
            return None, layout
        device = parts[0].device
        flat = torch.cat([p if p.device == device else p.to(device) for p in parts])
        if timestep_values:
            # squared norms -> norms: one in-place sqrt over all the per-timestep segments (same bits as one per segment)
            flat[first_timestep : first_timestep + timestep_values].sqrt_()
        return flat, layout


def _flat64(t: torch.Tensor) -> torch.Tensor:
    """`t` as a float64 vector; no operation at all for one already (the usual case)."""
    if t.dtype != torch.float64:
        t = t.double()
    return t if t.dim() == 1 else t.reshape(-1)

