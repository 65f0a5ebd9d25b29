"""Detectors: pure state machines over `StepStats` records that return `Alert`s.

(Placeholder wiring until the detectors land: no detector, unknown options rejected.)
"""

from __future__ import annotations

from typing import Any

from ..errors import GradwatchError
from ..records import Alert, StepStats

__all__ = ["DetectorSuite", "build_detectors"]


class DetectorSuite:
    def update(self, stats: StepStats) -> list[Alert]:
        return []

    def reset(self) -> None:
        pass


def build_detectors(options: dict[str, Any]) -> DetectorSuite:
    if options:
        raise GradwatchError(f"unknown gradwatch.watch option(s): {', '.join(sorted(options))}")
    return DetectorSuite()
