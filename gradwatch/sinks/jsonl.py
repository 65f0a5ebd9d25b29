"""JSON Lines stream: one JSON object per line, one line per finished step, flushed as it is written.

    >>> monitor = gradwatch.watch(model, optimizer, jsonl="run.jsonl")
    >>> for line in open("run.jsonl"): record = json.loads(line)

The first line describes the run (`"type": "run"`), then one `"type": "step"` line per step
(a `StepStats` plus the alerts raised on it), and `"type": "end"` when the monitor closes; a
crashed run lacks only that last line and keeps every step already written. Every line carries
`"schema": SCHEMA_VERSION`. Non-finite floats are written as the strings "nan", "inf" and
"-inf" so that every line is strict JSON. Every field is documented in docs/jsonl.md.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import sys
from typing import IO, Any

import torch

from ..errors import GradwatchError
from ..records import Alert, StepStats

__all__ = ["JsonlSink", "SCHEMA_VERSION", "encode_floats", "step_record"]

SCHEMA_VERSION = 1
"""Bumped whenever a field changes meaning or disappears (adding fields does not bump it)."""


def encode_floats(value: Any) -> Any:
    """Replace NaN/±Inf floats (at any depth) by "nan"/"inf"/"-inf" so the value is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: encode_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_floats(v) for v in value]
    return value


def step_record(stats: StepStats, alerts: list[Alert]) -> dict[str, Any]:
    """The JSON-ready line for one step (also what `gradwatch plot` reads)."""
    record: dict[str, Any] = {"schema": SCHEMA_VERSION, "type": "step", **stats.to_dict()}
    record["alerts"] = [a.to_dict() for a in alerts]
    return {k: encode_floats(v) for k, v in record.items()}


class JsonlSink:
    """Writes one line per step to `path` (truncated when opened) and flushes it at once."""

    def __init__(self, path: str | os.PathLike[str], *, meta: dict[str, Any] | None = None) -> None:
        self.path = os.fspath(path)
        try:
            self._file: IO[str] | None = open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise GradwatchError(
                f"gradwatch cannot write the JSONL stream to {self.path!r} ({exc.strerror}). "
                "Pass jsonl= a path in an existing, writable directory."
            ) from exc
        self._steps = 0
        self._alerts = 0
        from .. import __version__  # imported late: no import cycle with the package __init__

        header = {
            "schema": SCHEMA_VERSION,
            "type": "run",
            "gradwatch": __version__,
            "torch": torch.__version__,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": list(sys.argv),
            **(meta or {}),
        }
        try:
            self._write(header)
        except OSError as exc:
            raise GradwatchError(
                f"gradwatch cannot write the JSONL stream to {self.path!r} ({exc.strerror}). "
                "Free some space or pass jsonl= a path on another disk."
            ) from exc

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n")
            self._file.flush()  # a crash later loses nothing already measured
        except OSError:
            # Full disk, lost mount: stop writing and close now, so that no half-written buffer is
            # flushed later (or fails again when the file is collected). The monitor reports it once.
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()
            raise

    def on_step(self, stats: StepStats, alerts: list[Alert]) -> None:
        self._write(step_record(stats, alerts))
        self._steps += 1
        self._alerts += len(alerts)

    def close(self, summary: object) -> None:
        if self._file is None:
            return
        self._write({"schema": SCHEMA_VERSION, "type": "end", "steps": self._steps, "alerts": self._alerts})
        self._file.close()
        self._file = None
