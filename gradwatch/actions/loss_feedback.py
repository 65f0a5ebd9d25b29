"""The loss as feedback for `clip="auto"`'s update bound: tighten while clipped steps make no progress.

    >>> feedback = LossFeedback(window=10, tighten=0.7, loosen=1.5, lowest=1 / 16, highest=4.0, memory=3)
    >>> feedback.observe(loss=0.69, clipped=True)     # once per step, as the losses arrive on the host
    >>> feedback.factor                               # multiplies auto's update bound (1.0 at first)

`monitor.step(loss)` gives gradwatch each step's loss; the monitor reads it back asynchronously
(on CUDA: an event-guarded copy, never a sync) and, once a step's record is complete, passes its
loss and whether the step was clipped to the clipper (`feed_loss`). The losses are grouped in
blocks of `window` consecutive steps; after each block in which the clipper clipped at least half
the steps (the bound is what sets the step size), the block's mean loss is compared with the best
mean of the `memory` blocks before it (the first block only sets it):

- a new best (progress under the bound): factor ← min(factor · loosen, highest);
- no new best (large clipped steps that do not help, or a loss rising after them):
  factor ← max(factor · tighten, lowest).

Why the recent blocks and not the best block ever: progress is a loss falling now. Against an
all-time best, one overshoot that lost it (an IRNN whose momentum carried a few bounded steps past
a stable recurrence, `benchmarks/clipping.py`'s "IRNN T=100 + momentum" seed 4) made every later
block "no progress", whatever the loss did: the factor ratcheted down to `lowest` and the steps
left were too small to climb back (held-out loss 1.25 against 0.71 at the start, where the best
fixed threshold ends at 0.03).

Blocks where the clipper mostly stayed out of the way change nothing: a healthy run is clipped on
almost none of its steps, so the feedback never touches it, and a slow starter takes small steps
that the bound does not reach. A block with a non-finite loss counts as no progress. Without a
loss (a loop that never calls `monitor.step(loss)`, actions used without a monitor) the factor
stays 1: auto behaves as without the feedback.

Everything here is host-side Python arithmetic on floats that have already arrived on the host;
the clipper multiplies its bound by the float `factor` (one scalar multiply, no sync). Under
torch.distributed with several ranks the feedback is off (each rank's loss is its own batch's;
a per-rank factor would clip the all-reduced gradients differently).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from ..distributed import is_distributed

__all__ = ["LossFeedback", "feed_loss", "CLIPPED"]

CLIPPED = 0.999
"""A step counts as clipped when its clip coefficient is below this (as in `benchmarks/clipping.py`)."""


class LossFeedback:
    """A multiplicative factor on the update bound, driven by block means of the loss (module docstring)."""

    def __init__(self, *, window: int, tighten: float, loosen: float, lowest: float, highest: float,
                 memory: int | None = None, binding: float = 0.5) -> None:
        self.window, self.tighten, self.loosen = window, tighten, loosen
        self.lowest, self.highest, self.binding = lowest, highest, binding
        self.factor = 1.0
        self.recent: deque[float] = deque(maxlen=memory)
        """The mean losses of the last `memory` blocks (None: of every block), the yardstick of progress."""
        self._sum = 0.0
        self._finite = True
        self._clipped = 0
        self._count = 0

    @property
    def best(self) -> float:
        """The best mean loss of the remembered blocks (inf before the first block ends)."""
        return min(self.recent, default=math.inf)

    def observe(self, loss: float | None, clipped: bool) -> None:
        """One step's loss (None: none fed, the step is not counted) and whether it was clipped."""
        if loss is None:
            return
        self._count += 1
        self._clipped += bool(clipped)
        if math.isfinite(loss):
            self._sum += loss
        else:
            self._finite = False
        if self._count == self.window:
            self._end_block()

    def _end_block(self) -> None:
        mean = self._sum / self._count if self._finite else math.inf
        if self._clipped >= self.binding * self._count and self.recent:  # the first block only sets `best`
            if mean < self.best:
                self.factor = min(self.factor * self.loosen, self.highest)
            else:
                self.factor = max(self.factor * self.tighten, self.lowest)
        self.recent.append(mean)
        self._sum, self._finite, self._clipped, self._count = 0.0, True, 0, 0


def feed_loss(clipper: Any, loss: float | None, clip_coefficient: float | None) -> None:
    """Give a clipper that takes it (`observe_loss`: "auto") one step's loss, as read back on the host.
    Best effort: a failure here stops the feeding for good, never the clipping or the training."""
    observe = getattr(clipper, "observe_loss", None)
    if observe is None or getattr(clipper, "loss_feedback_failed", False) or is_distributed():
        return
    try:
        observe(loss, clip_coefficient is not None and clip_coefficient < CLIPPED)
    except Exception:
        clipper.loss_feedback_failed = True
