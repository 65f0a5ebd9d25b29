"""`Reducer`: combines one step's packed statistics across processes (`gradwatch.distributed.StepReducer`).

    >>> readback, layout = reducer.start(flat, layout, modules)    # launched, not waited for
    >>> loss_readback = reducer.start_loss(loss.reshape(1))

`watch()` gives the monitor one when a process group of more than one rank is initialised;
otherwise the monitor reads its buffer back as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

import torch

if TYPE_CHECKING:
    from .accumulator import Layout
    from .build import ModuleInfo
    from .readback import PendingReadback

__all__ = ["Reducer"]


class Reducer(Protocol):
    """Every rank calls `start` and `start_loss` at the same points of its step."""

    def start(self, flat: torch.Tensor, layout: Layout,
              modules: Sequence[ModuleInfo]) -> tuple[PendingReadback, Layout]:
        """Launch the reduction of one step's packed buffer; its read-back and the combined layout."""
        ...

    def start_loss(self, value: torch.Tensor) -> PendingReadback:
        """Launch the reduction of a one-element loss tensor."""
        ...
