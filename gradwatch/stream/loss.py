"""What `monitor.step(loss)` accepts as a step's loss: one number, as a tensor or a Python number.

    >>> checked_loss(loss)                       # a one-element tensor or a float: kept as it is
    >>> checked_loss(torch.zeros(4))             # raises GradwatchError: not one number

A one-element tensor stays on its device (it is read back with the step, never synchronised);
checking its size reads only metadata. A tensor of several elements (a per-sample loss
vector) or none is refused rather than recorded as its first element or its mean: gradwatch
cannot know which reduction the update used.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import GradwatchError

__all__ = ["checked_loss"]


def checked_loss(loss: Any) -> torch.Tensor | float | None:
    """`loss` as a one-element tensor or a float (None stays None); a GradwatchError otherwise."""
    if loss is None or (isinstance(loss, torch.Tensor) and loss.numel() == 1):
        return loss
    if isinstance(loss, torch.Tensor):
        given = f"an empty tensor of shape {tuple(loss.shape)}" if loss.numel() == 0 else \
            f"a tensor of shape {tuple(loss.shape)} ({loss.numel()} elements)"
    elif isinstance(loss, (bool, str, bytes)):
        given = f"{type(loss).__name__} {loss!r}"[:120]
    else:
        try:
            return float(loss)
        except (TypeError, ValueError):
            given = f"{type(loss).__name__} {loss!r}"[:120]
    raise GradwatchError(
        f"monitor.step(loss) got {given}; the loss must be one number (a one-element tensor or a float). "
        "Pass the scalar that backward() was called on (e.g. loss.mean() for a per-sample loss vector). "
        "Such steps are recorded without a loss (StepStats.loss is None)."
    )
