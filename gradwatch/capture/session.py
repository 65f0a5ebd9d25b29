"""State shared by one monitor's forward adapters: where this step's measurements go.

    >>> session = CaptureSession(report_error=print)
    >>> session.begin_step(probe=True)        # the monitor decides; adapters only read it
"""

from __future__ import annotations

import logging
from typing import Callable

from ..stream.accumulator import StepAccumulator
from ..stream.schema import StepLayout

__all__ = ["CaptureSession"]

log = logging.getLogger("gradwatch")


class CaptureSession:
    """Owned by one `Monitor`; adapters read `accumulator` and `probing`, never decide anything."""

    def __init__(self, report_error: Callable[[str, BaseException], None], *, finite_checks: bool = False) -> None:
        self.layout = StepLayout([])
        """Slots of the watched modules' channels (`stream.schema`); set by the monitor with `set_layout`."""
        self.finite_checks = finite_checks
        """Passed to every step's accumulator (`StepAccumulator.finite_checks`): True for one process."""
        self.accumulator = self._new_accumulator()
        self.probing = False
        self.enabled = True
        self.report_error = report_error
        self.forwards = 0
        self.eval_forwards = 0
        """Forwards of watched modules in eval mode with gradients on, this step (not measured)."""
        self._told: set[str] = set()
        self._restart_at_next_forward = False

    def begin_step(self, *, probe: bool) -> StepAccumulator:
        """Start collecting a new step; returns the finished step's accumulator."""
        done, self.accumulator = self.accumulator, self._new_accumulator()
        self.probing = probe
        self.forwards = 0
        self.eval_forwards = 0
        self._restart_at_next_forward = False
        return done

    def set_layout(self, layout: StepLayout) -> None:
        """The watched modules changed (at a step's end): measure by `layout` from now on."""
        self.layout = layout
        if self.accumulator.layout is not layout and self.forwards == 0:
            self.accumulator = self._new_accumulator()  # nothing measured into the old one yet

    def _new_accumulator(self) -> StepAccumulator:
        return StepAccumulator(self.layout, finite_checks=self.finite_checks)

    def new_evaluation(self) -> None:
        """An optimizer re-evaluates the model within one step (LBFGS's closure): the next measured
        forward restarts the measurements, so that the step's record holds the last evaluation's,
        not all of them added up or concatenated. (At the next forward, not now: a closure that
        only returns a loss computed before `step()` keeps that forward's measurements.)"""
        self._restart_at_next_forward = True

    def forward_started(self) -> None:
        """A watched module's forward is about to be measured into `accumulator`."""
        if self._restart_at_next_forward:
            self._restart_at_next_forward = False
            self.accumulator = self._new_accumulator()
        self.forwards += 1

    def tell_once(self, topic: str, message: str) -> None:
        """Log `message` as a warning the first time `topic` comes up for this monitor."""
        if topic not in self._told:
            self._told.add(topic)
            log.warning("gradwatch: %s", message)
