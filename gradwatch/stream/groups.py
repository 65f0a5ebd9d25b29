"""The identity of one parameter group, shared by capture (which fills it) and stream (which reads it).

    >>> GroupKey("rnn", layer=1, direction=0)   # the forward direction of layer 1 of model.rnn

It lives below both so that neither imports the other's modules for it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GroupKey"]


@dataclass(frozen=True)
class GroupKey:
    """One direction of one layer of one watched module."""

    module: str
    """The watched module's name in the model (as `model.named_modules()` spells it)."""
    layer: int
    """The layer index, from 0."""
    direction: int
    """0 forward, 1 reverse (bidirectional modules only)."""
