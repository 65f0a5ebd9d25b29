"""Detectors: pure state machines over `StepStats` records that return `Alert`s.

    >>> suite = build_detectors({"spike_factor": 20.0})       # what gradwatch.watch(..., spike_factor=20.0) does
    >>> alerts = suite.update(stats)                          # one record in, the new alerts out
    >>> suite.summary().headline()                            # what was seen, on close

One module per family of signs:

| problem   | sign            | module         |
|-----------|-----------------|----------------|
| vanishing | slow_progress   | loss.py        |
| vanishing | tiny_updates    | updates.py     |
| vanishing | dead_neurons    | activity.py    |
| vanishing | temporal_decay  | temporal.py    |
| exploding | large_updates   | updates.py     |
| exploding | non_finite      | nonfinite.py   |
| exploding | oscillation     | loss.py        |
| exploding | norm_spike      | norms.py       |
| exploding | temporal_growth | temporal.py    |
| exploding | constant_clipping | clipping.py  |

Every threshold, its default and where it comes from is in `config.DetectorConfig`; remedy
texts are in `remedies`; `suite.DetectorSuite` combines the detectors with cooldown and
escalation.
"""

from __future__ import annotations

from .activity import DeadNeuronsDetector
from .base import Detector, LossProgress
from .clipping import ConstantClippingDetector, constant_clipping
from .config import PROBLEM_OF, SIGNS, DetectorConfig
from .loss import OscillationDetector, SlowProgressDetector
from .nonfinite import NonFiniteDetector
from .norms import NormSpikeDetector
from .suite import AlertSummary, DetectorSuite, SummaryEntry, build_detectors, default_detectors
from .temporal import TemporalDecayDetector, TemporalGrowthDetector, TemporalProfile, temporal_profile
from .updates import LargeUpdatesDetector, TinyUpdatesDetector

__all__ = [
    "build_detectors",
    "default_detectors",
    "DetectorSuite",
    "DetectorConfig",
    "AlertSummary",
    "SummaryEntry",
    "Detector",
    "ConstantClippingDetector",
    "constant_clipping",
    "LossProgress",
    "SIGNS",
    "PROBLEM_OF",
    "NonFiniteDetector",
    "NormSpikeDetector",
    "LargeUpdatesDetector",
    "TinyUpdatesDetector",
    "TemporalDecayDetector",
    "TemporalGrowthDetector",
    "TemporalProfile",
    "temporal_profile",
    "DeadNeuronsDetector",
    "SlowProgressDetector",
    "OscillationDetector",
]
