"""Which parameter belongs to which (module, layer, direction), and the per-step reads of them.

    >>> pmap = ParameterMap(model, watched)
    >>> read = pmap.read_before_update()     # Σ grad² per group and in all, Σθ² before the update: one pass
    >>> weight_sq, update_sq = pmap.weight_and_update_sumsq(read.weight_sumsq)  # ‖θ_now − θ_before‖² per group
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..stats.tensor_stats import group_sumsq, host_group_sumsq, host_total
from ..stream.groups import GroupKey
from ..torch_compat import foreach_copy_, foreach_sub_, parameters_in_order
from .modules import WatchedModule, layer_of_parameter

__all__ = ["BeforeUpdate", "ParameterMap", "Sums"]

Sums = torch.Tensor | list[float]
"""Per-group sums of squares: a float64 device tensor, or Python floats for CPU tensors."""


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
        self._identity = [(w.module, _parameter_ids(w.module)) for w in watched]
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
        self._index_cache: dict[tuple[torch.device, tuple[int, ...]], torch.Tensor] = {}
        self.snapshot: list[torch.Tensor] | None = None

    def is_current(self) -> bool:
        """False once a watched module's parameters were replaced (`load_state_dict(..., assign=True)`,
        a parametrisation registered or removed, a Parameter re-assigned): then build a new map."""
        return all(_parameter_ids(module) == ids for module, ids in self._identity)

    def _index(self, slots: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """`slots` (a group per tensor) as an index tensor, cached per device (copied without a sync)."""
        key = (device, slots)
        if key not in self._index_cache:
            if len(self._index_cache) > 64:  # the set of parameters with a gradient keeps changing
                self._index_cache.clear()
            cpu = torch.tensor(slots, dtype=torch.long)
            self._index_cache[key] = cpu.to(device, non_blocking=True) if device.type != "cpu" else cpu
        return self._index_cache[key]

    def read_before_update(self) -> "BeforeUpdate":
        """Everything measured before the update, in one norm pass: per-group Σ grad², Σ grad² over the
        whole model, Σθ² of each parameter outside the watched modules and per-group Σθ² of the
        snapshot (the weights before this update). One foreach norm kernel and one scatter over
        gradients, outside weights and snapshot together, no sync; see `BeforeUpdate`."""
        groups = len(self.groups)
        self._check_snapshot()
        assert self.snapshot is not None
        tensors: list[torch.Tensor] = []
        slots: list[int] = []
        has_grad = [False] * groups
        outside_names: list[str] = []
        outside: list[torch.Tensor] = []
        group_by_id = self._group_by_id
        for name, p in self.model.named_parameters():
            group = group_by_id.get(id(p), groups)
            if group == groups:
                outside_names.append(name)
                outside.append(p.detach())
            if p.grad is None:
                continue
            if group < groups:
                has_grad[group] = True
            tensors.append(p.grad)
            slots.append(group)
        n_grads, n_out = len(tensors), len(outside)
        first_outside = groups + 1
        first_weight = first_outside + n_out
        slots.extend(range(first_outside, first_weight))
        slots.extend(first_weight + g for g in self.group_of)
        tensors.extend(outside)
        tensors.extend(self.snapshot)
        if not tensors:
            return BeforeUpdate(None, has_grad, None, outside_names, None, None)
        if _on_cpu(tensors):
            host = host_group_sumsq(tensors, slots, first_weight + groups)
            return BeforeUpdate(
                grad_sumsq=host[:groups] if any(has_grad) else None,
                has_grad=has_grad,
                total=host_total(host[:first_outside]) if n_grads else None,
                outside_names=outside_names,
                outside_weight_sumsq=host[first_outside:first_weight] if n_out else None,
                weight_sumsq=host[first_weight:] if self.params else None,
            )
        sums = group_sumsq(tensors, self._index(tuple(slots), tensors[0].device), first_weight + groups)
        return BeforeUpdate(
            grad_sumsq=sums[:groups] if any(has_grad) else None,
            has_grad=has_grad,
            total=sums[:first_outside].sum() if n_grads else None,
            outside_names=outside_names,
            outside_weight_sumsq=sums[first_outside:first_weight] if n_out else None,
            weight_sumsq=sums[first_weight:] if self.params else None,
        )

    def take_snapshot(self) -> None:
        """Copy the current parameters; the next update is measured against this copy."""
        with torch.no_grad():
            if self.snapshot is None or any(s.shape != p.shape or s.device != p.device or s.dtype != p.dtype
                                            for s, p in zip(self.snapshot, self.params)):
                self.snapshot = [p.detach().clone() for p in self.params]
            else:
                foreach_copy_(self.snapshot, [p.detach() for p in self.params])

    def changed_since_snapshot(self) -> bool:
        """Whether a parameter differs from the snapshot (True when there is none). Compares every
        tensor: one host-device sync per parameter, for the end of a run only."""
        if self.snapshot is None:
            return True
        with torch.no_grad():
            return any(s.shape != p.shape or not torch.equal(s.to(device=p.device, dtype=p.dtype), p)
                       for s, p in zip(self.snapshot, self.params))

    def _check_snapshot(self) -> None:
        """Make the snapshot match the parameters: taken when missing, taken again when a parameter
        was resized, moved when one changed device or dtype."""
        snapshot = self.snapshot
        if snapshot is not None and _matching(snapshot, self.params):
            return  # the usual case: one pass over the parameters
        if snapshot is None or any(s.shape != p.shape for s, p in zip(snapshot, self.params)):
            self.snapshot = None  # parameters resized: start over
            self.take_snapshot()
            return
        self.snapshot = [s.to(device=p.device, dtype=p.dtype) for s, p in zip(snapshot, self.params)]

    def weight_and_update_sumsq(self, weight: Sums | None = None) -> tuple[Sums, Sums]:
        """Per-group Σθ² of the snapshot (weights before the update) and Σ(θ − snapshot)²; then re-snapshot.

        `weight`: the snapshot's Σθ² already measured by `read_before_update` this step (reused when the
        snapshot still matches the parameters; measured again otherwise). Python floats for CPU
        parameters, float64 device tensors otherwise (see `BeforeUpdate`)."""
        snapshot = self.snapshot
        self._check_snapshot()
        if self.snapshot is not snapshot:
            weight = None  # taken again or moved since the read
        assert self.snapshot is not None
        with torch.no_grad():
            current = self.params  # under no_grad: the foreach ops read them as they are
            if not current:
                empty = torch.zeros(len(self.groups), dtype=torch.float64)
                return empty, empty
            host = _on_cpu(current) and _on_cpu(self.snapshot)
            index = None if host else self._index(self.group_of, current[0].device)

            def sumsq(tensors: list[torch.Tensor]) -> Sums:
                if index is None:
                    return host_group_sumsq(tensors, self.group_of, len(self.groups))
                return group_sumsq(tensors, index, len(self.groups))

            if weight is None or isinstance(weight, list) != host:
                weight = sumsq(self.snapshot)
            # θ_before − θ_now in place: no parameter-sized temporary (its norm is the update's)
            foreach_sub_(self.snapshot, current)
            update = sumsq(self.snapshot)
            foreach_copy_(self.snapshot, current)
        return weight, update


def _matching(snapshot: list[torch.Tensor], params: list[nn.Parameter]) -> bool:
    """Whether every snapshot tensor has its parameter's shape, dtype and device."""
    for s, p in zip(snapshot, params):
        if s.shape != p.shape or s.dtype != p.dtype or s.device != p.device:
            return False
    return True


def _on_cpu(tensors: Sequence[torch.Tensor]) -> bool:
    for t in tensors:
        if t.device.type != "cpu":
            return False
    return True


def _parameter_ids(module: nn.Module) -> list[int]:
    """ids of `module.parameters()`, in order (see `torch_compat.parameters_in_order`)."""
    return [id(p) for p in parameters_in_order(module)]


class BeforeUpdate:
    """What `ParameterMap.read_before_update` measured: float64 device tensors (nothing read back),
    or Python floats when every tensor read is on the CPU (no device to wait for; same bits)."""

    __slots__ = ("grad_sumsq", "has_grad", "total", "outside_names", "outside_weight_sumsq", "weight_sumsq")

    def __init__(self, grad_sumsq: torch.Tensor | list[float] | None, has_grad: list[bool],
                 total: torch.Tensor | float | None, outside_names: list[str],
                 outside_weight_sumsq: torch.Tensor | list[float] | None,
                 weight_sumsq: torch.Tensor | list[float] | None) -> None:
        self.grad_sumsq = grad_sumsq
        """Per-group Σ grad² (None when no watched parameter has a gradient)."""
        self.has_grad = has_grad
        """Per group: whether any of its parameters received a gradient (known on the host)."""
        self.total = total
        """Σ grad² over every parameter of the model that has one (clip_grad_norm_'s total, squared), or None."""
        self.outside_names = outside_names
        """Names of the model's parameters outside the watched modules, in model order."""
        self.outside_weight_sumsq = outside_weight_sumsq
        """Σθ² of each of them (a NaN/Inf there reaches a watched module as a non-finite input), or None."""
        self.weight_sumsq = weight_sumsq
        """Per-group Σθ² of the snapshot: the weights before this update (None without watched parameters)."""
