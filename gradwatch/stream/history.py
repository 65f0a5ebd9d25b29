"""`monitor.history`: the most recent step records, safe to read from another thread.

    >>> monitor.history[-1].grad_norm              # the last finished step
    >>> for record in monitor.history: ...          # walks a snapshot: training may go on meanwhile
    >>> records = monitor.history.snapshot()         # a tuple that never changes

The training thread appends while a dashboard or logging thread reads: every read takes a
lock, and iteration walks a snapshot taken when it starts, so it never sees the sequence change
under it ("deque mutated during iteration") and never blocks training for longer than a copy.
"""

from __future__ import annotations

import collections
import threading
from typing import Iterator, Sequence, overload

from ..records import StepStats

__all__ = ["History"]


class History(Sequence[StepStats]):
    """A bounded, thread-safe sequence of `StepStats`, oldest first; older records are dropped."""

    def __init__(self, maxlen: int) -> None:
        self._records: collections.deque[StepStats] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()

    @property
    def maxlen(self) -> int:
        """How many records are kept."""
        return self._records.maxlen or 0

    def append(self, record: StepStats) -> None:
        """Add the newest record (the monitor's, on the training thread)."""
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> tuple[StepStats, ...]:
        """The records as they are now, as a tuple that later steps do not change."""
        with self._lock:
            return tuple(self._records)

    @overload
    def __getitem__(self, index: int) -> StepStats: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[StepStats, ...]: ...
    def __getitem__(self, index: int | slice) -> StepStats | tuple[StepStats, ...]:
        if isinstance(index, slice):
            return self.snapshot()[index]
        with self._lock:
            return self._records[index]

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __iter__(self) -> Iterator[StepStats]:
        return iter(self.snapshot())

    def __reversed__(self) -> Iterator[StepStats]:
        return reversed(self.snapshot())

    def __repr__(self) -> str:
        return f"History({len(self)} of at most {self.maxlen} records)"
