"""`Detectors`: what the monitor runs on each finished step (`gradwatch.detectors.DetectorSuite`).

    >>> class Loud:
    ...     def update(self, stats: StepStats) -> list[Alert]:
    ...         return []                                   # the alerts this step raises
    ...     def summary(self) -> AlertSummary | None:
    ...         return None                                 # None: the sinks print no summary

The suite gets typed records (`StepStats`) in step order and returns typed `Alert`s; it never
sees a module, a hook or the monitor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

if TYPE_CHECKING:
    from ..records import Alert, StepStats
    from .suite import AlertSummary

__all__ = ["Detectors"]


class Detectors(Protocol):
    """One `update` per finished step, then one `summary` when the monitor closes.

    A suite whose `update` raises is reported once and not called again; training goes on
    (`strict=True` re-raises instead)."""

    def update(self, stats: StepStats) -> Sequence[Alert]:
        """The alerts raised on this step (most steps: none)."""
        ...

    def summary(self) -> AlertSummary | None:
        """The run's alerts so far, for the sinks' closing summary; None if the suite keeps none."""
        ...
