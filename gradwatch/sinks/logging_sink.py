"""Plain `logging` lines under the `gradwatch` logger: one line per alert, no escape codes.

    >>> logging.basicConfig(level=logging.INFO)
    >>> gradwatch.watch(model, opt, console="logging")
"""

from __future__ import annotations

import logging

from ..records import Alert, StepStats

__all__ = ["LoggingSink"]


class LoggingSink:
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("gradwatch")

    def on_step(self, stats: StepStats, alerts: list[Alert]) -> None:
        for a in alerts:
            level = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}[a.severity]
            self.logger.log(level, "[%s/%s] step %d: %s", a.problem, a.sign, a.step, a.message)

    def close(self, monitor: object) -> None:
        pass
