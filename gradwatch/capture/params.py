"""Which parameter belongs to which (module, layer, direction), and the per-step reads of them.

    >>> pmap = ParameterMap(model, watched)
    >>> grad_sq, has_grad, total_sq = pmap.grad_sumsq()        # per group and over the whole model
    >>> weight_sq, update_sq = pmap.weight_and_update_sumsq()  # ‖θ_before‖², ‖θ_now − θ_before‖² per group
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..stats.tensor_stats import group_sumsq, stack_scalars
from .modules import WatchedModule, layer_of_parameter

__all__ = ["GroupKey", "ParameterMap"]


@dataclass(frozen=True)
class GroupKey:
    """One direction of one layer of one watched module."""

    module: str
    layer: int
    direction: int


class ParameterMap:
    """Groups the watched parameters by (module, layer, direction) and keeps the update snapshot."""

    def __init__(self, model: nn.Module, watched: list[WatchedModule]) -> None:
        self.model = model
        keys: dict[GroupKey, int] = {}
        self.params: list[nn.Parameter] = []
        group_of: list[int] = []
        seen: dict[int, str] = {}
        self.unattributed: list[str] = []
        """Parameters of watched modules that belong to no layer: only in the model's total norm."""
        self.shared: list[tuple[str, str]] = []
        """(parameter, first owner) for parameters shared between watched modules: counted in the first only."""
        self._identity = [(w.module, [id(p) for p in w.module.parameters()]) for w in watched]
        for w in watched:
            for pname, p in w.module.named_parameters():
                qualified = f"{w.name}.{pname}" if w.name else pname
                if id(p) in seen:
                    self.shared.append((qualified, seen[id(p)]))
                    continue
                seen[id(p)] = qualified
                place = layer_of_parameter(w, pname)
                if place is None:
                    self.unattributed.append(qualified)
                    continue
                key = GroupKey(w.name, *place)
                group_of.append(keys.setdefault(key, len(keys)))
                self.params.append(p)
        self.groups = list(keys)
        self.group_of = tuple(group_of)
        """The group of each parameter in `params`, as a tuple: also the key of its cached index tensor."""
        self._group_by_id = {id(p): g for p, g in zip(self.params, group_of)}
        self._index_cache: dict[tuple, torch.Tensor] = {}
        self.snapshot: list[torch.Tensor] | None = None

    def is_current(self) -> bool:
        """False once a watched module's parameters were replaced (`load_state_dict(..., assign=True)`,
        a parametrisation registered or removed, a Parameter re-assigned): then build a new map."""
        return all([id(p) for p in module.parameters()] == ids for module, ids in self._identity)

    def _index(self, slots: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """`slots` (a group per tensor) as an index tensor, cached per device (copied without a sync)."""
        key = (device, slots)
        if key not in self._index_cache:
            if len(self._index_cache) > 64:  # the set of parameters with a gradient keeps changing
                self._index_cache.clear()
            cpu = torch.tensor(slots, dtype=torch.long)
            self._index_cache[key] = cpu.to(device, non_blocking=True) if device.type != "cpu" else cpu
        return self._index_cache[key]

    def outside_weight_sumsq(self) -> tuple[list[str], torch.Tensor | None]:
        """Names and per-tensor Σθ² of the model's parameters outside the watched modules (an
        embedding, a head): a NaN/Inf in them reaches a watched module as a non-finite input,
        which must not be mistaken for bad data. One foreach norm kernel, no sync."""
        names, tensors = [], []
        for name, p in self.model.named_parameters():
            if id(p) not in self._group_by_id:
                names.append(name)
                tensors.append(p.detach())
        if not tensors:
            return names, None
        return names, stack_scalars(torch._foreach_norm(tensors), dtype=torch.float64).square()

    def grad_sumsq(self) -> tuple[torch.Tensor | None, list[bool], torch.Tensor | None]:
        """Per-group Σ grad² (None when no watched parameter has a gradient), which groups received
        any gradient (known on the host), and Σ grad² over every parameter of the model that has
        one (clip_grad_norm_'s total, squared; None when none has). One norm kernel serves both:
        the gradients outside the watched groups go to one extra slot."""
        groups = len(self.groups)
        grads: list[torch.Tensor] = []
        slots: list[int] = []
        has_grad = [False] * groups
        for p in self.model.parameters():
            if p.grad is None:
                continue
            group = self._group_by_id.get(id(p), groups)
            if group < groups:
                has_grad[group] = True
            grads.append(p.grad)
            slots.append(group)
        if not grads:
            return None, has_grad, None
        sums = group_sumsq(grads, self._index(tuple(slots), grads[0].device), groups + 1)
        return (sums[:groups] if any(has_grad) else None), has_grad, sums.sum()

    def take_snapshot(self) -> None:
        """Copy the current parameters; the next update is measured against this copy."""
        with torch.no_grad():
            if self.snapshot is None or any(s.shape != p.shape or s.device != p.device or s.dtype != p.dtype
                                            for s, p in zip(self.snapshot, self.params)):
                self.snapshot = [p.detach().clone() for p in self.params]
            else:
                torch._foreach_copy_(self.snapshot, [p.detach() for p in self.params])

    def weight_and_update_sumsq(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group Σθ² of the snapshot (weights before the update) and Σ(θ − snapshot)²; then re-snapshot."""
        if self.snapshot is None:
            self.take_snapshot()
        assert self.snapshot is not None
        with torch.no_grad():
            current = [p.detach() for p in self.params]
            if any(s.shape != c.shape for s, c in zip(self.snapshot, current)):
                self.snapshot = None  # parameters resized: start over
                return self.weight_and_update_sumsq()
            if any(s.device != c.device or s.dtype != c.dtype for s, c in zip(self.snapshot, current)):
                self.snapshot = [s.to(device=c.device, dtype=c.dtype) for s, c in zip(self.snapshot, current)]
            if not current:
                empty = torch.zeros(len(self.groups), dtype=torch.float64)
                return empty, empty
            index = self._index(self.group_of, current[0].device)
            weight = group_sumsq(self.snapshot, index, len(self.groups))
            # θ_before − θ_now in place: no parameter-sized temporary (its norm is the update's)
            torch._foreach_sub_(self.snapshot, current)
            update = group_sumsq(self.snapshot, index, len(self.groups))
            torch._foreach_copy_(self.snapshot, current)
        return weight, update
