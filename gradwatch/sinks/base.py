"""`Sink`: what `watch(sinks=[...])` accepts, and what every built-in sink is.

    >>> class Printer:
    ...     def on_step(self, stats: StepStats, alerts: list[Alert]) -> None:
    ...         print(stats.step, stats.grad_norm, [a.sign for a in alerts])
    ...     def close(self, summary: AlertSummary | None) -> None:
    ...         print(summary.headline() if summary else "no detectors")
    >>> monitor = gradwatch.watch(model, optimizer, sinks=[Printer()])

A sink sees typed records only: each finished step with the alerts raised on it, then, once, the
run's alert summary. It never receives the monitor, so it cannot reach into its state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..records import Alert, StepStats

if TYPE_CHECKING:
    from ..detectors.suite import AlertSummary

__all__ = ["Sink"]


class Sink(Protocol):
    """Receives every finished step, in order, then the run's summary when the monitor closes.

    A sink that raises is reported once and not called again; training goes on (`strict=True`
    re-raises instead)."""

    def on_step(self, stats: StepStats, alerts: list[Alert]) -> None:
        """One finished step and the alerts raised on it (empty on most steps)."""
        ...

    def close(self, summary: AlertSummary | None) -> None:
        """The monitor closed: `summary` is the detector suite's account of the run's alerts, or
        None when the detectors keep none. Release files and writers here; called once."""
        ...
