"""Plain `logging` lines under the `gradwatch` logger: one record per alert, no escape codes.

    >>> logging.basicConfig(level=logging.INFO, format="%(message)s")
    >>> monitor = gradwatch.watch(model, opt, console="logging")
    WARNING exploding/norm_spike at step 12 ('lstm' layer 0): total gradient norm 51.2 is 26.1×
        its median 1.96 and 4.1× its maximum over the last 20 steps (thresholds 10× and 2×).
        Remedy: clip the gradient norm ... at about its usual size, e.g. clip=3.92 ...

What `console="auto"` uses outside a terminal (CI, log files, `| tee`, notebooks without a TTY).
Each alert is one record: the evidence, then the remedy on its own line, both wrapped at the
terminal width (`COLUMNS`; 100 away from a terminal) with a hanging indent. The lines carry no
timestamp of their own; the logging configuration decides the prefix. Warnings map to
`logging.WARNING`, critical alerts to `logging.CRITICAL`, info alerts to `logging.INFO` (hidden
by logging's default level). `close()` logs the closing summary (`summary_lines`: two lines per
sign, at most 22 lines in all), at WARNING when anything of warning level or worse was seen,
else at INFO. The full text of every alert stays in `monitor.alerts` and the JSONL stream.

The rich console sink prints the same alert lines and the same summary.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import textwrap
from typing import TYPE_CHECKING, Any, Literal, Mapping, NamedTuple

from ..detectors.suite import plural as _plural, severity_counts
from ..records import REMEDY, Alert, Severity, StepStats

if TYPE_CHECKING:
    from ..detectors.suite import AlertSummary, SummaryEntry

__all__ = ["LoggingSink", "alert_head", "alert_line", "alert_lines", "summary_lines", "summary_parts", "SummaryLine",
           "plain_width"]

LEVELS = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING, Severity.CRITICAL: logging.CRITICAL}
INDENT = "    "
SUMMARY_LINES = 22
"""Closing summary: headline and body together, so that it fits one 80×24 screen with the prompt."""


def location(alert: Alert) -> str:
    """'lstm' layer 0, timestep 13 — where an alert is, in words (`Location.words`)."""
    return alert.location.words()


def alert_head(alert: Alert) -> str:
    """"WARNING exploding/norm_spike at step 30 ('lstm' layer 0; escalated from info at step 19)"."""
    up = alert.escalated_from
    escalated = f"; escalated from {up.severity} at step {up.step}" if up is not None else ""
    return f"{alert.severity.upper()} {alert.problem}/{alert.sign} at step {alert.step} ({location(alert)}{escalated})"


def alert_line(alert: Alert) -> str:
    """One plain line per alert: `alert_head`, then the evidence and " Remedy: " with the remedy."""
    return f"{alert_head(alert)}: {alert.evidence}" + (f"{REMEDY}{alert.remedy}" if alert.remedy else "")


def alert_lines(alert: Alert, width: int | None = None) -> list[str]:
    """The alert as the evidence line and the remedy line, each wrapped at `width` (None: not
    wrapped) with continuation lines indented, so that the severity word starts every alert."""
    evidence = f"{alert_head(alert)}: {alert.evidence}".rstrip()
    paragraphs = [evidence, f"{INDENT}Remedy: {alert.remedy}"] if alert.remedy else [evidence]
    if width is None:
        return paragraphs
    out: list[str] = []
    for text in paragraphs:
        out += textwrap.wrap(text, width=max(width, 40), subsequent_indent=INDENT, break_on_hyphens=False,
                             break_long_words=False) or [text]
    return out


def plain_width(stream: Any = None) -> int:
    """Columns for plain lines: `COLUMNS` when set, else the terminal's width, else 100."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    return 100


def summary_headline(summary: AlertSummary, counts: Mapping[str, int]) -> str:
    """The verdict (`AlertSummary.headline`) with the alerts this sink counted."""
    return summary.headline(counts)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class SummaryLine(NamedTuple):
    """One line of the closing summary and what it is, so that a renderer can style it."""

    kind: Literal["headline", "sign", "remedy", "evidence", "more"]
    text: str
    severity: str | None = None
    """For a "sign" line: the sign's worst severity."""


def _sign_lines(entry: SummaryEntry, width: int, action_lines: int) -> list[SummaryLine]:
    steps = f"step {entry.first_step}" if entry.first_step == entry.last_step else \
        f"steps {entry.first_step}-{entry.last_step}"
    where = ", ".join(entry.locations[:3]) + (" …" if len(entry.locations) > 3 else "")
    start = f"  {entry.severity.upper()} {entry.problem}/{entry.sign} at {where}; {steps}; "
    head = start + _plural(entry.reported, "alert") + (f", {entry.repeats} held back" if entry.repeats else "")
    if len(head) > width and entry.repeats:  # "4+126 alerts": reported + held back, before cutting words
        head = start + f"{entry.reported}+{entry.repeats} alerts"
    kind: Literal["remedy", "evidence"] = "remedy" if entry.remedy else "evidence"
    action = f"remedy: {entry.remedy}" if entry.remedy else entry.evidence
    wrapped = textwrap.wrap(action.strip(), width=max(width, 40), initial_indent=INDENT,
                            subsequent_indent=INDENT + "  ", max_lines=action_lines, placeholder=" …")
    return [SummaryLine("sign", _cut(head, width), entry.severity)] + \
        [SummaryLine(kind, _cut(line, width)) for line in wrapped]


def summary_lines(summary: AlertSummary, counts: Mapping[str, int], *, width: int = 80,
                  max_lines: int = SUMMARY_LINES, headline: bool = True) -> list[str]:
    """The closing summary: the headline, then per sign (most severe first) where and when it was
    seen and its remedy, each line cut at `width`; at most `max_lines` lines in all (the rest of
    the signs are named on the last line). `headline=False` leaves the headline out. The evidence of each alert was printed when it was
    raised and is kept in `monitor.alerts` and the JSONL stream."""
    return [line.text for line in summary_parts(summary, counts, width=width, max_lines=max_lines,
                                                headline=headline)]


def summary_parts(summary: AlertSummary, counts: Mapping[str, int], *, width: int = 80,
                  max_lines: int = SUMMARY_LINES, headline: bool = True) -> list[SummaryLine]:
    """`summary_lines`, each line with its kind (and a sign line with its severity)."""
    out = [SummaryLine("headline", line) for line in
           textwrap.wrap(summary_headline(summary, counts), width=max(width, 40), subsequent_indent=INDENT)
           ] if headline else []
    entries = list(summary.entries)
    room = max_lines - len(out)
    if 2 * len(entries) > room:
        shown = entries[: max(0, (room - 1) // 2)]
        rest = entries[len(shown):]
    else:
        shown, rest = entries, []
    spare = room - 2 * len(shown) - (1 if rest else 0)
    for entry in shown:
        lines = _sign_lines(entry, width, 2 if spare > 0 else 1)
        spare -= len(lines) - 2
        out += lines
    if rest:
        out.append(SummaryLine("more", _cut(f"  … and {_plural(len(rest), 'more sign')}: "
                                            + ", ".join(f"{e.problem}/{e.sign}" for e in rest), width)))
    return out


class LoggingSink:
    """Alerts and the closing summary as plain log lines on the `gradwatch` logger."""

    def __init__(self, logger: logging.Logger | None = None, *, width: int | None = None) -> None:
        self.logger = logger or logging.getLogger("gradwatch")
        self.width = width
        """Wrap lines at this many columns; None: `plain_width()` when each line is written."""
        self.counts: collections.Counter[str] = collections.Counter()

    def on_step(self, stats: StepStats, alerts: list[Alert]) -> None:
        if not alerts:
            return  # most steps: nothing to write (and no look at the terminal's width)
        width = self.width or plain_width()
        for a in alerts:
            self.counts[a.severity] += 1
            self.logger.log(LEVELS[a.level], "%s", "\n".join(alert_lines(a, width)))

    def close(self, summary: AlertSummary | None) -> None:
        if summary is None:
            return
        worst = summary.worst
        level = logging.WARNING if worst is not None and Severity.of(worst) >= Severity.WARNING else logging.INFO
        for line in summary_lines(summary, self.counts, width=self.width or plain_width()):
            self.logger.log(level, "%s", line)
