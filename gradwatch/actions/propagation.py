"""How far the gradient travels back in time in this backward pass, for `clip="auto"`.

    >>> p = propagation(monitor.session.accumulator)   # 0-d tensor on the gradients' device, or None
    >>> clipper.observe_propagation(p)                   # auto's update bound shrinks by 3/p when p > 3

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

The value is computed on the device from the probe's per-timestep sums (a few scalar kernels,
no host-device sync) and is None on steps without the probe; the clipper keeps the last value.
With several watched modules the largest P counts; a module whose output gradient is zero
everywhere, or a non-finite P, counts as 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["propagation", "feed_propagation"]


def propagation(accumulator: Any) -> Tensor | None:
    """P (module docstring), the largest over the watched modules whose two profiles this step's
    accumulator holds (probe steps); None when there are none."""
    vectors = getattr(accumulator, "vectors", None)
    if not isinstance(vectors, dict):
        return None
    found: list[Tensor] = []
    for key, out_sumsq in vectors.items():
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == "out_grad"):
            continue
        in_sumsq = vectors.get(("xgrad", key[1], 0))
        if in_sumsq is None:
            continue
        n = min(out_sumsq.shape[0], in_sumsq.shape[0])
        u = out_sumsq[:n].detach().float().clamp(min=0).sqrt()
        v = in_sumsq[:n].detach().float().clamp(min=0).sqrt()
        overlap = (v * u).sum()
        p = v.sum() * u.max() / torch.where(overlap > 0, overlap, torch.ones_like(overlap))
        found.append(torch.where((overlap > 0) & torch.isfinite(p), p, torch.ones_like(p)))
    if not found:
        return None
    return torch.stack(found).max() if len(found) > 1 else found[0]


def feed_propagation(clipper: Any, monitor: Any) -> None:
    """Give a clipper that takes it (`observe_propagation`, "auto") this step's P from the monitor's
    capture session. Best effort: a monitor without a session (a bare `Actions` call) gives nothing,
    and a failure here stops the feeding, never the clipping or the training."""
    observe = getattr(clipper, "observe_propagation", None)
    if observe is None or getattr(clipper, "propagation_failed", False):
        return
    try:
        observe(propagation(getattr(getattr(monitor, "session", None), "accumulator", None)))
    except Exception:
        clipper.propagation_failed = True
