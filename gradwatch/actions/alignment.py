"""Whether `clip="auto"`'s bounded steps overshoot: the gradient against the previous update.

    >>> feedback = AlignmentFeedback(window=10, every=10, below=-0.3, tighten=0.7, lowest=1 / 16)
    >>> feedback.use(recurrent_weights)          # the hidden-to-hidden matrices of the watched modules
    >>> feedback.step(batch, clipped)            # once per clipping call, after the coefficient is known
    >>> feedback.factor                          # multiplies auto's update bound (None: 1)

The derivative of the loss after a step with respect to that step's size is ∝ −g_t · u_{t−1}, with
u_{t−1} the direction the previous step moved the weights (the hypergradient of Baydin et al. 2018,
"Online learning rate adaptation with hypergradient descent"; the sign agreement of Jacobs 1988's
delta-bar-delta and of Rprop). With Δθ = θ_t − θ_{t−1} the previous parameter change (momentum
included), a = cos(g_t, −Δθ) > 0 says the new gradient still points where the last step went, a < 0
that it points back: the step overshot. In the stationary phase of SGD on a quadratic with step size
× curvature h, consecutive gradients have a correlation of −h/2 (Pflug 1990; Chee & Toulis 2018
decay the learning rate on its sign), so the more negative, the larger the step against the valley.

Measured on the recurrent (hidden-to-hidden) weights only, and on one step in `every`: on a step
t ≡ −1 (mod every) those weights are copied; on the next step the copy becomes −Δθ and a is computed
with a few dot products (on the gradients' device, no host-device sync; for CPU gradients as
floats). After each block of `window` steps that the clipper mostly clipped (the bound sets the step
size), a block mean below `below` multiplies the factor by `tighten` (not below `lowest`); other
blocks change nothing, so a healthy run that is not clipped is untouched. A second factor,
`strong_factor`, is tightened the same way but only by blocks below `strong_below` (strong
anti-alignment, a period-2 bounce across a valley: cos ≈ −1); auto applies it where its propagation
factor P already tightens the bound (IRNNs), where the ordinary −0.3 cut would undo what the loss
feedback gave long-memory tasks. The factor only tightens,
as a learning-rate decay on a detected stationary phase does (Chee & Toulis): giving it back ×1.5
after blocks with a mean above 0.3 (up to 1) was tried and did worse on every task it was meant for. Without recurrent weights to watch (`use` never called: actions without a
monitor) the factor stays None (1).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..stats.tensor_stats import stack_scalars
from ..torch_compat import foreach_copy_, foreach_sub_
from .batch import GradBatch

__all__ = ["AlignmentFeedback"]


class AlignmentFeedback:
    """A multiplicative factor on the update bound, driven by cos(g_t, −Δθ_{t−1}) (module docstring)."""

    def __init__(self, *, window: int, every: int, below: float, tighten: float, lowest: float,
                 binding: float = 0.5, strong_below: float | None = None) -> None:
        self.window, self.every, self.below = window, every, below
        self.strong_below = strong_below
        self.strong_factor: Tensor | float | None = None
        """The same as `factor`, tightened only by the blocks below `strong_below` (never when None);
        auto uses it where P tightens the bound (an IRNN), `factor` elsewhere."""
        self.tighten, self.lowest, self.binding = tighten, lowest, binding
        self.factor: Tensor | float | None = None
        """A float for CPU gradients, a 0-d float32 tensor on the gradients' device otherwise; None: 1."""
        self.last: Tensor | float | None = None
        """The last measured alignment (diagnostics, tests)."""
        self._ids: frozenset[int] = frozenset()
        self._key: tuple[object, ...] = (-1, None, None)
        self._chosen: list[int] = []
        self._copy: list[Tensor] = []
        self._views: list[np.ndarray] = []
        """Numpy views of `_copy` (CPU float32/float64 weights; `_numpy_views`)."""
        self._weight_views: list[np.ndarray] = []
        self._view_key: list[tuple[int, torch.Size, tuple[int, ...], torch.dtype]] = []
        self._taken = False
        self.t = 0
        self._sum: Tensor | float = 0.0
        self._samples: Tensor | float = 0.0
        self._clipped: Tensor | float = 0.0

    def use(self, weights: Sequence[Tensor]) -> None:
        """The parameters to measure on (the watched modules' hidden-to-hidden matrices)."""
        ids = frozenset(id(w) for w in weights)
        if ids != self._ids:
            self._ids, self._key, self._copy, self._taken, self._views = ids, (-1, None, None), [], False, []

    def step(self, batch: GradBatch, clipped: Tensor | bool) -> None:
        """One clipping call; `clipped`: whether it clipped (a host bool, or a 0-d device tensor).
        Only the calls of a sample (a copy on t ≡ −1, the measure on t ≡ 0 (mod every)) touch the
        weights; the others count and return (a few attribute reads: part of every call's cost)."""
        if not self._ids:
            return
        params = batch.params
        if len(params) != self._key[0] or id(params[0]) != self._key[1] or id(params[-1]) != self._key[2]:
            self._key, self._copy, self._taken, self._views = (len(params), id(params[0]), id(params[-1])), [], False, []
            self._chosen = [i for i, p in enumerate(params) if id(p) in self._ids and not p.grad.is_sparse]  # type: ignore[union-attr]
        if not self._chosen:
            return
        t = self.t
        if isinstance(clipped, Tensor):
            if not isinstance(self.factor, Tensor):
                self._start(False, clipped.device)
            self._clipped = self._clipped + clipped.to(torch.float32)
            on_host = False
        else:
            if not isinstance(self.factor, float):
                self._start(True, None)
            self._clipped = self._clipped + clipped
            on_host = True
        phase = t % self.every
        if phase == 0 and self._taken:
            self._measure([params[i] for i in self._chosen], [batch.grads[i] for i in self._chosen], on_host)
        if phase == self.every - 1:
            self._take([params[i] for i in self._chosen], on_host)
        self.t = t = t + 1
        if t % self.window == 0:
            self._end_block(on_host)

    def _take(self, params: list[Tensor], on_host: bool) -> None:
        """Copy the weights before this step's update (θ_{t−1} for the next call's measure)."""
        if not self._copy:
            self._copy = [p.detach().clone() for p in params]
            self._views = []
        elif on_host and self._numpy_views(params):  # numpy: no torch dispatch (~1 µs a call)
            for c, w in zip(self._views, self._weight_views):
                np.copyto(c, w)
        else:
            foreach_copy_(self._copy, [p.detach() for p in params])
        self._taken = True

    def _numpy_views(self, params: list[Tensor]) -> bool:
        """Numpy views of the copy (kept) and of the weights (kept while each weight's storage, shape
        and strides stay: `p.data = ...` gives new ones) in `_views` and `_weight_views`; False where
        a dtype has no numpy twin (torch ops then)."""
        key = [(p.data_ptr(), p.shape, p.stride(), p.dtype) for p in params]
        if self._views and key == self._view_key:
            return True
        if not all(p.dtype in _NUMPY and c.dtype == p.dtype for p, c in zip(params, self._copy)):
            return False
        self._views = [c.numpy() for c in self._copy]
        self._weight_views = [p.detach().numpy() for p in params]
        self._view_key = key
        return True

    def _start(self, on_host: bool, device: torch.device | None) -> None:
        if on_host:
            self.factor, self._sum, self._samples, self._clipped = 1.0, 0.0, 0.0, 0.0
            self.strong_factor = 1.0
        else:
            zero = torch.zeros((), dtype=torch.float32, device=device)
            self.factor, self._sum, self._samples, self._clipped = zero + 1.0, zero, zero, zero
            self.strong_factor = zero + 1.0

    def _measure(self, weights: list[Tensor], grads: list[Tensor], on_host: bool) -> None:
        minus_delta = self._copy  # becomes θ_{t−1} − θ_t = −Δθ_{t−1}, in place
        self._taken = False
        if on_host and self._numpy_views(weights):  # CPU tensors: memory loads, not a sync
            for c, w in zip(self._views, self._weight_views):
                np.subtract(c, w, out=c)
            self._accumulate(_host_cosine(grads, minus_delta, self._views))
            return
        foreach_sub_(minus_delta, [w.detach() for w in weights])
        if on_host:
            self._accumulate(_host_cosine(grads, minus_delta))
            return
        pairs = [(g.reshape(-1), d.reshape(-1)) for g, d in zip(grads, minus_delta)]
        dot = [torch.dot(g, d.to(g.dtype)) for g, d in pairs]
        gg = [torch.dot(g, g) for g, _ in pairs]
        dd = [torch.dot(d, d) for _, d in pairs]
        device = self._sum.device if isinstance(self._sum, Tensor) else None
        num_t = stack_scalars(dot, dtype=torch.float32, device=device).sum()
        den_t = (stack_scalars(gg, dtype=torch.float32, device=device).sum()
                 * stack_scalars(dd, dtype=torch.float32, device=device).sum()).sqrt()
        ok = (den_t > 0) & torch.isfinite(num_t) & torch.isfinite(den_t)
        cos_t = torch.where(ok, num_t / torch.where(ok, den_t, 1.0), 0.0).clamp(-1.0, 1.0)
        self.last = cos_t
        self._sum = self._sum + cos_t
        self._samples = self._samples + ok.to(torch.float32)

    def _accumulate(self, cos: float) -> None:
        self.last = cos
        if math.isfinite(cos):
            self._sum = self._sum + max(-1.0, min(1.0, cos))
            self._samples = self._samples + 1.0

    def _end_block(self, on_host: bool) -> None:
        if on_host:
            assert isinstance(self.factor, float) and isinstance(self._sum, float) and isinstance(self._samples, float)
            if self._samples > 0 and self._clipped >= self.binding * self.window:
                mean = self._sum / self._samples
                if mean < self.below:
                    self.factor = max(self.factor * self.tighten, self.lowest)
                if self.strong_below is not None and mean < self.strong_below:
                    assert isinstance(self.strong_factor, float)
                    self.strong_factor = max(self.strong_factor * self.tighten, self.lowest)
            self._sum = self._samples = self._clipped = 0.0
            return
        assert isinstance(self.factor, Tensor) and isinstance(self._sum, Tensor) and isinstance(self._samples, Tensor)
        mean_t = self._sum / self._samples.clamp(min=1.0)
        binding = (self._samples > 0) & (self._clipped >= self.binding * self.window)
        tightened = (self.factor * self.tighten).clamp(min=self.lowest)
        self.factor = torch.where(binding & (mean_t < self.below), tightened, self.factor)
        if self.strong_below is not None:
            assert isinstance(self.strong_factor, Tensor)
            strong = (self.strong_factor * self.tighten).clamp(min=self.lowest)
            self.strong_factor = torch.where(binding & (mean_t < self.strong_below), strong, self.strong_factor)
        self._sum, self._samples, self._clipped = self._sum * 0.0, self._samples * 0.0, self._clipped * 0.0


def _host_cosine(grads: list[Tensor], others: list[Tensor], views: list[np.ndarray] | None = None) -> float:
    """cos(g, d) over all the tensors together, from CPU tensors, as a float (numpy views where the
    dtype allows: ~1 µs a dot product, where a torch op costs a few µs of dispatch); NaN if undefined.
    `views`: numpy views of `others`, when the caller keeps them."""
    num = gg = dd = 0.0
    for i, (g, d) in enumerate(zip(grads, others)):
        if g.dtype in _NUMPY and d.dtype == g.dtype:
            # numpy's reshape: a view where torch's would be (contiguous), else the same C-order copy
            a, b = g.detach().numpy().reshape(-1), (d.numpy() if views is None else views[i]).reshape(-1)
            num, gg, dd = num + float(np.dot(a, b)), gg + float(np.dot(a, a)), dd + float(np.dot(b, b))
        else:
            a_t, b_t = g.detach().reshape(-1).double(), d.reshape(-1).double()
            num, gg, dd = num + float(a_t @ b_t), gg + float(a_t @ a_t), dd + float(b_t @ b_t)
    den = math.sqrt(gg * dd)
    return num / den if den > 0 and math.isfinite(num / den) else math.nan


_NUMPY = (torch.float32, torch.float64)
