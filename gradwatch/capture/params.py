"""Which parameter belongs to which (module, layer, direction), and the per-step reads of them.

    >>> pmap = ParameterMap(model, watched)
    >>> grad_sq, has_grad = pmap.grad_sumsq()          # per group, on the device
    >>> update_sq = pmap.update_sumsq_and_snapshot()   # ‖θ_now − θ_snapshot‖² per group
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..stats.tensor_stats import group_sumsq
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
        seen: set[int] = set()
        for w in watched:
            for pname, p in w.module.named_parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                layer, direction = layer_of_parameter(w, pname)
                key = GroupKey(w.name, layer, direction)
                group_of.append(keys.setdefault(key, len(keys)))
                self.params.append(p)
        self.groups = list(keys)
        self.group_of = group_of
        self._index_cache: dict[tuple, torch.Tensor] = {}
        self.snapshot: list[torch.Tensor] | None = None

    def _index(self, positions: list[int], device: torch.device) -> torch.Tensor:
        """Group index of the parameters at `positions`, cached per device (copied without a sync)."""
        key = (device, tuple(positions) if len(positions) != len(self.params) else None)
        if key not in self._index_cache:
            cpu = torch.tensor([self.group_of[i] for i in positions])
            self._index_cache[key] = cpu.to(device, non_blocking=True) if device.type != "cpu" else cpu
        return self._index_cache[key]

    def grad_sumsq(self) -> tuple[torch.Tensor | None, list[bool]]:
        """Per-group Σ grad², and which groups received any gradient (known on the host)."""
        positions = [i for i, p in enumerate(self.params) if p.grad is not None]
        has_grad = [False] * len(self.groups)
        for i in positions:
            has_grad[self.group_of[i]] = True
        if not positions:
            return None, has_grad
        grads = [self.params[i].grad for i in positions]
        return group_sumsq(grads, self._index(positions, grads[0].device), len(self.groups)), has_grad  # type: ignore[arg-type]

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
            device = current[0].device
            index = self._index(list(range(len(self.params))), device)
            weight = group_sumsq(self.snapshot, index, len(self.groups))
            delta = torch._foreach_sub(current, self.snapshot)
            update = group_sumsq(delta, index, len(self.groups))
            torch._foreach_copy_(self.snapshot, current)
        return weight, update


def total_grad_sumsq(model: nn.Module) -> torch.Tensor | None:
    """Σ grad² over every parameter of the model that has a gradient (clip_grad_norm_'s total, squared)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    device = grads[0].device
    norms = torch._foreach_norm(grads)
    return torch.stack([n.to(device=device, dtype=torch.float64) for n in norms]).square().sum()
