"""`DetectorSuite`: runs every detector on each record, de-duplicates, escalates, summarises.

    >>> suite = build_detectors({"cooldown": 50})
    >>> for stats in records:
    ...     for alert in suite.update(stats): print(alert.severity, alert.sign)
    >>> print(suite.summary().headline())        # the sinks render the rest (`sinks.logging_sink.summary_lines`)

No spam: an alert with the same (problem, sign, module, layer) as one reported less than
`cooldown` steps earlier is held back (and counted), unless its severity is higher, in which
case it is reported as an escalation. `summary()` is the one-screen account of everything
seen, which the console and logging sinks print on `monitor.close()`.

Consequences are not reported as causes: once an exploding sign has been raised at warning or
above (step N), a later vanishing alert (saturated or dead units, tiny updates, a stalled loss)
is most likely what the explosion left behind, so it says "after the explosion at step N", is
capped at `warning`, and its remedy points at the explosion first.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ..records import Alert, Escalation, Severity, StepStats, message_text
from .activity import DeadNeuronsDetector
from .base import Detector, LossProgress
from .clipping import ConstantClippingDetector
from .config import SIGNS, DetectorConfig
from .loss import OscillationDetector, SlowProgressDetector
from .nonfinite import NonFiniteDetector
from .norms import NormSpikeDetector
from .temporal import LatestProfiles, TemporalDecayDetector, TemporalGrowthDetector
from .updates import LargeUpdatesDetector, TinyUpdatesDetector

__all__ = ["DetectorSuite", "AlertSummary", "SummaryEntry", "build_detectors", "default_detectors"]

AlertKey = tuple[str, str, "str | None", "int | None"]


def default_detectors(config: DetectorConfig, progress: LossProgress | None = None) -> list[Detector]:
    """One detector per family, most urgent first (that is the order alerts come out in).

    `progress`: one loss tracker for every loss-aware detector, which the caller feeds once per record
    (`DetectorSuite` does); None: each of them keeps its own. The detectors that read the layers'
    temporal profiles share one `LatestProfiles` (computed once per probe step)."""
    profiles = LatestProfiles()
    return [
        NonFiniteDetector(),
        NormSpikeDetector(config),
        LargeUpdatesDetector(config),
        TemporalGrowthDetector(config, progress, profiles),
        OscillationDetector(config, progress),
        ConstantClippingDetector(config),  # silent when clipping is off
        TemporalDecayDetector(config, progress, profiles),
        DeadNeuronsDetector(config, progress),
        TinyUpdatesDetector(config, progress),
        SlowProgressDetector(config, progress, profiles),
    ]


@dataclass
class SummaryEntry:
    """Everything seen of one (problem, sign)."""

    problem: str
    sign: str
    severity: str
    """Worst severity reported."""
    reported: int
    """Alerts reported (shown)."""
    repeats: int
    """Alerts held back by the cooldown."""
    first_step: int
    last_step: int
    """Last step at which it was seen, reported or held back."""
    locations: list[str] = field(default_factory=list)
    """Where: 'module:layer', 'module' or 'model' (`Location.key`), in order of first appearance."""
    evidence: str = ""
    """The evidence of the most severe (latest among equals) reported alert."""
    remedy: str = ""
    """Its remedy."""
    escalated_from: Escalation | None = None
    """What that alert escalated, if it did."""
    alerts: dict[str, int] = field(default_factory=dict)
    """Reported alerts by their own severity (a sign that escalated has some of each)."""

    @property
    def level(self) -> Severity:
        return Severity.of(self.severity)

    @property
    def message(self) -> str:
        """That alert's `Alert.message`."""
        return message_text(self.evidence, self.remedy, self.escalated_from)


@dataclass
class AlertSummary:
    """One-screen account of a run's alerts, most severe first."""

    steps: int
    """Records the suite has seen."""
    entries: list[SummaryEntry]

    def count(self, severity: str) -> int:
        """Reported alerts of a severity."""
        return sum(e.reported for e in self.entries if e.severity == severity)

    @property
    def worst(self) -> str | None:
        worst = max((e.level for e in self.entries), default=None)
        return None if worst is None else str(worst)

    def alert_counts(self) -> dict[str, int]:
        """Reported alerts by their own severity, over every sign."""
        counts: dict[str, int] = {}
        for e in self.entries:
            for severity, n in e.alerts.items():
                counts[severity] = counts.get(severity, 0) + n
        return counts

    def headline(self, counts: Mapping[str, int] | None = None) -> str:
        """The verdict: steps watched, then the alerts reported (by severity, `counts` when a sink
        counted them itself, else `alert_counts()`) and the signs they show."""
        steps = plural(self.steps, "step")
        if not self.entries:
            return f"gradwatch: {steps} watched, no vanishing or exploding gradients seen."
        if not counts or not any(counts.values()):
            counts = self.alert_counts()
        total = sum(counts.values())
        return (f"gradwatch: {steps} watched; {plural(total, 'alert')} ({severity_counts(counts)}) "
                f"on {plural(len(self.entries), 'sign')}.")


_SEVERITIES = tuple(str(s) for s in sorted(Severity, reverse=True))
"""Severity names, most severe first."""


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def severity_counts(counts: Mapping[str, int]) -> str:
    """'1 critical, 4 warning, 2 info': alerts by severity, the words the live panel uses too."""
    return ", ".join(f"{counts[s]} {s}" for s in _SEVERITIES if counts.get(s))


def _after_explosion(alert: Alert, step: int) -> Alert:
    """A vanishing alert raised after an explosion, said to be its likely consequence."""
    if alert.problem != "vanishing":
        return alert
    return replace(
        alert,
        severity="warning" if alert.severity == "critical" else alert.severity,
        evidence=(f"After the explosion at step {step} (likely its consequence, not a separate vanishing problem): "
                  f"{alert.evidence}"),
        remedy=(f"first prevent the explosion (see its alert: lower the learning rate, clip the gradient norm); "
                f"then, if it persists: {alert.remedy}"),
    )


class DetectorSuite:
    """Every detector, behind one `update(stats) -> list[Alert]` with cooldown and escalation."""

    def __init__(self, config: DetectorConfig | None = None, detectors: list[Detector] | None = None) -> None:
        self.config = config or DetectorConfig()
        self._progress = LossProgress.from_config(self.config) if detectors is None else None
        """The loss tracker the default detectors share, fed here once per record."""
        chosen = detectors if detectors is not None else default_detectors(self.config, self._progress)
        self.detectors = [d for d in chosen if not set(d.signs) <= set(self.config.disable)]
        self.reset()

    def reset(self) -> None:
        """Forget every detector's state, the cooldowns and the summary."""
        for d in self.detectors:
            d.reset()
        if self._progress is not None:
            self._progress.reset()
        self._last: dict[AlertKey, Escalation] = {}
        """The latest reported alert of each key: its severity and step."""
        self._entries: dict[tuple[str, str], SummaryEntry] = {}
        self._steps = 0
        self._explosion: tuple[int, int] | None = None
        """(first, latest) step of the latest exploding episode raised at warning or above."""

    def update(self, stats: StepStats) -> list[Alert]:
        self._steps += 1
        if self._progress is not None:
            self._progress.update(stats.loss, stats.chance_loss)
        found: dict[AlertKey, Alert] = {}
        for detector in self.detectors:
            for alert in detector.update(stats):
                if alert.sign in self.config.disable:
                    continue
                key = (alert.problem, alert.sign, alert.module, alert.layer)
                old = found.get(key)
                if old is None or alert.level > old.level:
                    found[key] = alert
        if not found:
            return []  # most steps
        if self._explosion is not None:
            found = {k: _after_explosion(a, self._explosion[0]) for k, a in found.items()}
        self._note_explosion(list(found.values()))
        return [a for a in (self._filter(k, a) for k, a in found.items()) if a is not None]

    def _note_explosion(self, alerts: list[Alert]) -> None:
        steps = [a.step for a in alerts if a.problem == "exploding" and a.level > Severity.INFO]
        if not steps:
            return
        step = min(steps)
        if self._explosion is None or step - self._explosion[1] > self.config.cooldown:
            self._explosion = (step, step)  # a new episode
        else:
            self._explosion = (self._explosion[0], step)

    def _filter(self, key: AlertKey, alert: Alert) -> Alert | None:
        last = self._last.get(key)
        escalates = last is not None and alert.level > Severity.of(last.severity)
        if last is not None and alert.step - last.step < self.config.cooldown and not escalates:
            self._record(alert, reported=False)
            return None
        if escalates:
            alert = replace(alert, escalated_from=last)
        self._last[key] = Escalation(alert.severity, alert.step)
        self._record(alert, reported=True)
        return alert

    def _record(self, alert: Alert, *, reported: bool) -> None:
        entry = self._entries.get((alert.problem, alert.sign))
        if entry is None:
            entry = SummaryEntry(alert.problem, alert.sign, alert.severity, 0, 0, alert.step, alert.step)
            self._entries[(alert.problem, alert.sign)] = entry
        entry.last_step = alert.step
        if not reported:
            entry.repeats += 1
            return
        entry.reported += 1
        entry.alerts[alert.severity] = entry.alerts.get(alert.severity, 0) + 1
        where = alert.location.key()
        if where not in entry.locations:
            entry.locations.append(where)
        if alert.level >= entry.level or not entry.evidence:
            entry.severity = alert.severity
            entry.evidence, entry.remedy, entry.escalated_from = alert.evidence, alert.remedy, alert.escalated_from

    def summary(self) -> AlertSummary:
        """Everything reported and held back so far, most severe sign first."""
        order: dict[str, int] = {}
        for sign in [s for d in self.detectors for s in d.signs] + list(SIGNS):  # detectors come most urgent first
            order.setdefault(sign, len(order))
        entries = sorted(
            self._entries.values(), key=lambda e: (-e.level, e.first_step, order[e.sign])
        )
        return AlertSummary(self._steps, [replace(e, locations=list(e.locations), alerts=dict(e.alerts)) for e in entries])


def build_detectors(options: dict[str, Any]) -> DetectorSuite:
    """The suite for `gradwatch.watch(**options)`; unknown options raise GradwatchError."""
    return DetectorSuite(DetectorConfig.from_options(options))
