"""Plain `logging` lines under the `gradwatch` logger: one line per alert, no escape codes.

    >>> logging.basicConfig(level=logging.INFO, format="%(message)s")
    >>> monitor = gradwatch.watch(model, opt, console="logging")
    WARNING exploding/norm_spike at step 12 ('lstm' layer 0): total gradient norm 51.2 is 26.1× ...

What `console="auto"` uses outside a terminal (CI, log files, notebooks without a TTY). The
lines carry no timestamp of their own; the logging configuration decides the prefix.
Warnings map to `logging.WARNING`, critical alerts to `logging.CRITICAL`, info alerts to
`logging.INFO` (hidden by logging's default level). `close()` logs the one-screen summary,
at WARNING when anything of warning level or worse was seen, else at INFO.
"""

from __future__ import annotations

import logging
from typing import Any

from ..records import Alert, StepStats

__all__ = ["LoggingSink", "alert_line", "run_summary"]

LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


def location(alert: Alert) -> str:
    """'lstm' layer 0, timestep 13 — where an alert is, in words."""
    if alert.module is None:
        text = "whole model"
    else:
        text = f"'{alert.module}'" if alert.module else "root module"
        if alert.layer is not None:
            text += f" layer {alert.layer}"
    if alert.timestep is not None:
        text += f", timestep {alert.timestep}"
    return text


def alert_line(alert: Alert) -> str:
    """One plain line per alert: severity, problem/sign, step, where, message."""
    return f"{alert.severity.upper()} {alert.problem}/{alert.sign} at step {alert.step} ({location(alert)}): {alert.message}"


def run_summary(monitor: Any) -> Any:
    """The detector suite's `summary()` for a monitor, or None when its detectors have none."""
    detectors = getattr(monitor, "detectors", None)
    summary = getattr(detectors, "summary", None)
    return summary() if callable(summary) else None


class LoggingSink:
    """Alerts and the closing summary as plain log lines on the `gradwatch` logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("gradwatch")

    def on_step(self, stats: StepStats, alerts: list[Alert]) -> None:
        for a in alerts:
            self.logger.log(LEVELS[a.severity], "%s", alert_line(a))

    def close(self, monitor: Any) -> None:
        summary = run_summary(monitor)
        if summary is None:
            return
        level = logging.WARNING if summary.worst in ("warning", "critical") else logging.INFO
        for line in summary.lines():
            self.logger.log(level, "%s", line)
