"""The one error type gradwatch raises for bad input.

    >>> import gradwatch, torch
    >>> gradwatch.watch(torch.nn.Linear(2, 2))
    Traceback (most recent call last):
    gradwatch.errors.GradwatchError: ...
"""

from __future__ import annotations

__all__ = ["GradwatchError"]


class GradwatchError(ValueError):
    """Bad input to gradwatch: the message says what was given and what is supported."""
