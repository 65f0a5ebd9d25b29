"""`Reducer`: combines one step's packed statistics across processes (`gradwatch.distributed.StepReducer`).

    >>> readback, segments = reducer.start(flat, segments, layout)    # launched, not waited for
    >>> loss_readback = reducer.start_loss(loss.reshape(1))

`watch()` gives the monitor one when a process group of more than one rank is initialised;
otherwise the monitor reads its buffer back as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from .readback import PendingReadback
    from .schema import Segments, StepLayout

__all__ = ["Reducer"]


class Reducer(Protocol):
    """Every rank calls `start` and `start_loss` at the same points of its step."""

    def start(self, flat: torch.Tensor, segments: Segments,
              layout: StepLayout) -> tuple[PendingReadback, Segments]:
        """Launch the reduction of one step's packed buffer (its `(slot, n)` segments in `layout`);
        its read-back and the combined segments."""
        ...

    def start_loss(self, value: torch.Tensor) -> PendingReadback:
        """Launch the reduction of a one-element loss tensor."""
        ...
