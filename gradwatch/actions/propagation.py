"""How far the gradient travels back in time in this backward pass, for `clip="auto"`.

    >>> pairs = accumulator.gradient_profiles()   # probe steps: per-timestep gradient norms (u_t, v_t)
    >>> propagation_on_device(pairs)              # P, a 0-d tensor (propagation_on_host: a float)

On probe steps gradwatch measures, per timestep t of each watched recurrent module, the norm
u_t = ‖∂L/∂y_t‖ of the gradient the loss sends into the module's output (where the loss injects
gradient) and the norm v_t = ‖∂L/∂x_t‖ of the gradient that leaves through the module's input
(what the recurrence carried back to each timestep). From the two profiles,

    P = Σ_t v_t · max_t u_t / Σ_t v_t · u_t

is how many timesteps' worth of gradient leave through the input per timestep where gradient
came in, counted in units of the input gradient at the injection points: 1 when the loss is
spread over the sequence as much as the input gradient is (a language model, a sequence
labeller: a loss at every timestep, whatever T), Σ_t v_t / v_T for a loss on the last state
only. A default-initialised tanh RNN, an LSTM or a GRU forgets within a few steps (P ≈ 1-4);
an identity-initialised ReLU RNN (IRNN) classifying from its last state carries the gradient
back over the whole sequence (P ≈ 100-200 at T = 150-300 on step 0, before any update), and
more once its recurrence amplifies (a profile growing back in time counts above T). P does not
depend on the scale of either gradient (they live in different spaces). A relative change δ of
the recurrent weights is compounded over those P steps (≈ e^{δP} through an identity W_hh),
so auto's update bound ‖lr_eff · g‖ ≤ max_update · ‖θ‖ gets the factor min(1, 3 / P)
(`Auto.free_propagation` = 3, chosen on the IRNN T = 150 calibration task of
`benchmarks/clipping.py`).

For CPU gradients P is a Python float computed with numpy views of the probe's per-timestep
norms; on any other device a 0-d tensor computed with a few kernels and no host-device sync.
Steps without the probe have no profiles; the clipper keeps the last value.
With several watched modules the largest P counts; a module whose output gradient is zero
everywhere, or a non-finite P, counts as 1. Under torch.distributed with several ranks P is not
used (each rank would measure its own batch and clip differently): `auto` keeps its plain bound.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..distributed import is_distributed

__all__ = ["Profiles", "propagation_on_host", "propagation_on_device", "feed_propagation", "takes_profiles"]

Profiles = Sequence[tuple[Tensor, Tensor]]
"""(‖∂L/∂y_t‖, ‖∂L/∂x_t‖) per timestep (equal lengths), one pair per watched module
(`stream.accumulator.StepAccumulator.gradient_profiles`)."""


def propagation_on_host(pairs: Profiles) -> float | None:
    """P from CPU tensors, as a Python float (numpy views: a few µs, where ~15 tensor ops cost ~15×
    more in dispatch); None without profiles. The largest over modules; 1 where undefined."""
    found = []
    for out_norms, in_norms in pairs:
        u = out_norms.detach().numpy().astype(np.float64)  # norms: ≥ 0, or non-finite (then P counts as 1)
        v = in_norms.detach().numpy().astype(np.float64)
        overlap = float(v @ u)
        p = float(v.sum()) * float(u.max(initial=0.0)) / overlap if overlap > 0 else math.nan
        found.append(p if math.isfinite(p) else 1.0)
    return max(found) if found else None


def propagation_on_device(pairs: Profiles) -> Tensor | None:
    """The same P as a 0-d float32 tensor on the profiles' device, without a host-device sync."""
    found: list[Tensor] = []
    for out_norms, in_norms in pairs:
        u, v = out_norms.float(), in_norms.float()
        overlap = torch.dot(v, u)
        p = v.sum() * u.max() / torch.where(overlap > 0, overlap, torch.ones_like(overlap))
        found.append(torch.where((overlap > 0) & torch.isfinite(p), p, torch.ones_like(p)))
    if not found:
        return None
    return torch.stack(found).max() if len(found) > 1 else found[0]


def feed_propagation(clipper: Any, pairs: Profiles) -> None:
    """Give a clipper that takes them (`observe_profiles`: "auto") this probe step's profiles.
    Best effort: a failure here stops the feeding for good, never the clipping or the training."""
    observe = getattr(clipper, "observe_profiles", None)
    if not pairs or observe is None or getattr(clipper, "propagation_failed", False):
        return
    if is_distributed():
        return  # each rank's profiles come from its own batch: a per-rank P would clip ranks differently
    try:
        observe(pairs)
    except Exception:
        clipper.propagation_failed = True


def takes_profiles(clipper: Any) -> bool:
    """Whether `clipper` uses the profiles (so that the monitor measures them for it)."""
    return callable(getattr(clipper, "observe_profiles", None)) and not getattr(clipper, "propagation_failed", False)
