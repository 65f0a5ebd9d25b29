"""When a training step ends: one small state machine whose mode is fixed at construction.

    >>> steps = StepBoundaries(Mode.OPTIMIZERS)
    >>> steps.update_ended(id(opt), watched=[id(opt)])   # after optimizer.step(): the step ends now
    True
    >>> steps.step_ended(); steps.loss_fed()             # then monitor.step(loss): that step's loss
    <LossRoute.TO_LAST_STEP: 'give it to the step that just ended'>

The rule, per mode:

* `Mode.MANUAL` (no optimizer): each `monitor.step(loss)` ends a step.
* `Mode.OPTIMIZERS`: a step ends at the end of an outermost `optimizer.step()` once every watched
  optimizer has stepped since the previous step ended; a `monitor.step(loss)` right after gives
  that step its loss; one that comes when some but not all optimizers have stepped ends the
  step; one that comes with no update since the previous loss is dropped (GradScaler skipped
  `optimizer.step()`: the loss belongs to an update that never happened).
* `Mode.DRIVER`: a driver (the Lightning callback) ends each step with `monitor.end_step()`; the
  optimizers' step hooks end nothing and a `monitor.step(loss)` only gives the last step a loss.

The one change of mode: a MANUAL monitor given an optimizer (`add_optimizer`, as `gradwatch
run` does for an optimizer created after the model's first forward) becomes OPTIMIZERS. The
machine decides; the monitor reads gradients, ends steps and attaches losses.
"""

from __future__ import annotations

import enum
from typing import Iterable

__all__ = ["Mode", "LossRoute", "StepBoundaries"]


class Mode(enum.Enum):
    """Who ends the steps."""

    MANUAL = "manual"
    """No optimizer: `monitor.step(loss)` (or `end_step()`) ends each step."""
    OPTIMIZERS = "optimizers"
    """The watched optimizers' `step()` hooks end the steps."""
    DRIVER = "driver"
    """A driver calls `before_update()` and `end_step()`; the optimizers' hooks stay silent."""


class LossRoute(enum.Enum):
    """What `monitor.step(loss)` does with its loss."""

    END_STEP = "end the step with it"
    TO_LAST_STEP = "give it to the step that just ended"
    DROP = "drop it: it belongs to an update that never happened"


class StepBoundaries:
    """Tracks, between two step ends, which optimizers stepped and whether a loss is due."""

    def __init__(self, mode: Mode) -> None:
        self._mode = mode
        self._stepped: set[int] = set()
        """ids of the optimizers that finished an update in the step in progress."""
        self._updated_since_loss = False
        """A step ended by the optimizers since the last `monitor.step(loss)`."""
        self.calls_without_update = 0
        """`monitor.step()` calls in a row that found no update (OPTIMIZERS mode): a large count means
        the loop steps an optimizer that is not watched."""

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def hooks_end_steps(self) -> bool:
        """Whether the optimizers' step hooks read gradients and end steps (OPTIMIZERS mode)."""
        return self._mode is Mode.OPTIMIZERS

    def optimizer_added(self, replaced: Iterable[int] = ()) -> None:
        """An optimizer is watched from now on, in place of the optimizers whose ids are `replaced`:
        steps no longer wait for those; a MANUAL machine becomes OPTIMIZERS."""
        self._stepped.difference_update(replaced)
        if self._mode is Mode.MANUAL:
            self._mode = Mode.OPTIMIZERS

    def update_ended(self, optimizer: int, watched: Iterable[int]) -> bool:
        """An outermost `step()` of the optimizer with id `optimizer` returned; `watched` are the ids
        of every watched optimizer. True when the step ends now."""
        if self._mode is not Mode.OPTIMIZERS:
            return False
        self._stepped.add(optimizer)
        self.calls_without_update = 0
        if all(o in self._stepped for o in watched):
            self._updated_since_loss = True
            return True
        return False

    def loss_fed(self) -> LossRoute:
        """`monitor.step(loss)` was called: what to do with the loss."""
        if self._mode is Mode.MANUAL or (self._mode is Mode.OPTIMIZERS and self._stepped):
            self._updated_since_loss = False
            return LossRoute.END_STEP
        if self._mode is Mode.DRIVER or self._updated_since_loss:
            self._updated_since_loss = False
            return LossRoute.TO_LAST_STEP
        self.calls_without_update += 1
        return LossRoute.DROP

    def step_ended(self) -> None:
        """A step ended (whoever ended it): the next one starts with no optimizer stepped."""
        self._stepped.clear()

    def holds_last_step(self, loss_fed: bool) -> bool:
        """Whether the newest finished step waits before it is published: with optimizers its loss
        usually comes through `monitor.step(loss)` right after (the next step end releases it)."""
        return self._mode is Mode.OPTIMIZERS and not loss_fed
