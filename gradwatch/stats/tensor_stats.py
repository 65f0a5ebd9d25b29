"""Pure tensor functions behind the stream's statistics; no hooks, no state, no host sync.

    >>> group_norms([g1, g2, g3], index=torch.tensor([0, 0, 1]), groups=2)   # per-layer L2 norms
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["group_sumsq", "float64_vector", "unit_activity", "DEAD_EPS", "SATURATION_LEVEL", "SATURATION_SHARE"]

DEAD_EPS = 1e-6
"""A unit is dead when |h| stays below this for every sample and timestep."""
SATURATION_LEVEL = 0.99
"""|h| at or above this counts as pinned at the end of tanh's range."""
SATURATION_SHARE = 0.9
"""A unit is saturated when pinned in at least this share of (sample, timestep) positions."""


def float64_vector(scalars: Sequence[torch.Tensor]) -> torch.Tensor:
    """0-d tensors as one float64 vector on the first one's device: one stack and one cast when
    they share a device (the usual case), not one cast per tensor."""
    device = scalars[0].device
    if all(x.device == device for x in scalars):
        return torch.stack(list(scalars)).double()
    return torch.stack([x.to(device=device, dtype=torch.float64) for x in scalars])


def group_sumsq(tensors: list[torch.Tensor], index: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-group Σ of squares of `tensors`, where `index[i]` is the group of `tensors[i]`.

    One foreach norm kernel over all tensors, then one scatter: cost stays flat as the number
    of parameters grows. Returns a float64 vector of length `groups` on the tensors' device:
    squares of float32 norms above ~1.8e19 would overflow to inf in float32 and report a
    finite (if huge) gradient as non-finite.
    """
    if not tensors:
        return torch.zeros(groups, device=index.device, dtype=torch.float64)
    norms = float64_vector(torch._foreach_norm(tensors))
    zeros = torch.zeros(groups, device=norms.device, dtype=torch.float64)
    return zeros.index_add_(0, index.to(norms.device), norms.square())


def unit_activity(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-unit (last dimension) max |h|, count of saturated positions, and position count.

    These add up across several forward calls; `dead`/`saturated` fractions follow from them.
    """
    a = h.detach().abs().float().reshape(-1, h.shape[-1])
    positions = torch.full((), a.shape[0], dtype=torch.float32, device=a.device)
    return a.amax(dim=0), (a >= SATURATION_LEVEL).float().sum(dim=0), positions
