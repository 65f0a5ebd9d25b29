"""The detectors' shortcuts (issue #15 round 2) give what the rules computed from scratch give, bit for bit.

Each shortcut is checked against a from-scratch reference written here the way the rule reads: the
sorted window against `median`, `slope_t` against the textbook loop, the loss tracker's answers after
every loss against a fresh tracker's, the suite's shared tracker and temporal profiles against
detectors built alone, and the oscillation detector's window kept loss by loss against
`measure_swings` over the whole window.
"""

from __future__ import annotations

import collections
import math
import random
import statistics
import struct

import pytest

from gradwatch.detectors import (
    ConstantClippingDetector,
    DeadNeuronsDetector,
    DetectorConfig,
    DetectorSuite,
    LargeUpdatesDetector,
    LossProgress,
    NonFiniteDetector,
    NormSpikeDetector,
    OscillationDetector,
    SlowProgressDetector,
    TemporalDecayDetector,
    TemporalGrowthDetector,
    TinyUpdatesDetector,
    default_detectors,
)
from gradwatch.detectors import temporal as temporal_module
from gradwatch.detectors.base import MedianWindow, median, slope_t
from gradwatch.detectors.loss import measure_swings
from gradwatch.records import DirectionStats, LayerStats, StepStats


def bits(x: float) -> bytes:
    """The float's 8 bytes: equal bits, not just ==, so that -0.0 and 0.0 (and NaN payloads) count."""
    return struct.pack("<d", x)


def layer(ratio: float, *, index: int = 0, grad: float = 0.1, ts: list[float] | None = None,
          sat: float | None = None, has_grad: bool = True) -> LayerStats:
    return LayerStats(module="rnn", layer=index, kind="RNN", grad_norm=grad, weight_norm=5.0, update_norm=ratio * 5.0,
                      update_ratio=ratio, has_grad=has_grad, timestep_grad_norms=ts, saturated_fraction=sat,
                      dead_fraction=0.0 if sat is not None else None, directions=[DirectionStats(grad, 5.0, ratio)])


def record(step: int, loss: float | None, *layers: LayerStats, grad: float = 1.0) -> StepStats:
    layers = layers or (layer(1e-3),)
    return StepStats(step=step, loss=loss, grad_norm=grad, layers={(ls.module, ls.layer): ls for ls in layers},
                     probed=any(ls.timestep_grad_norms is not None for ls in layers))


# ---------------------------------------------------------------------------------------- MedianWindow
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 20])
def test_median_window_is_median_of_its_values_bit_for_bit(size):
    rng = random.Random(size)
    pool = [0.0, -0.0, 1.0, 1.0, 2.5, -3.0, math.inf, -math.inf, math.nan, 1e-300, 1e300]
    window = MedianWindow(size)
    plain: collections.deque[float] = collections.deque(maxlen=size)
    for _ in range(2000):
        value = rng.choice(pool) if rng.random() < 0.5 else rng.uniform(-2, 2)
        window.append(value)
        plain.append(value)
        assert [bits(v) for v in window] == [bits(v) for v in plain]
        assert bits(window.median()) == bits(median(plain))
        finite = [v for v in plain if math.isfinite(v)]
        assert window.finite == len(finite)
        assert bits(window.largest()) == bits(max(finite) if finite else math.nan)


def test_median_window_keeps_equal_values_in_arrival_order_as_a_stable_sort_does():
    # 0.0 and -0.0 are equal: the median of [0.0, -0.0, 1.0, -0.0] is (0.0 + -0.0) / 2 or (-0.0 + 0.0) / 2,
    # depending on which comes first in the sorted list; both give 0.0, but a single middle value keeps its sign
    window = MedianWindow(3)
    for v in (-0.0, 0.0, 5.0):
        window.append(v)
    assert bits(window.median()) == bits(statistics.median([-0.0, 0.0, 5.0])) == bits(0.0)
    window.append(-1.0)  # -0.0 leaves: [0.0, 5.0, -1.0]
    assert bits(window.median()) == bits(0.0)
    window.append(-0.0)  # [5.0, -1.0, -0.0]: the middle is -0.0
    assert bits(window.median()) == bits(-0.0)


# ---------------------------------------------------------------------------------------- slope_t
def textbook_slope_t(values: list[float]) -> float:
    n = len(values)
    if n < 3:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in range(n))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / sxx
    resid = sum((y - mean_y - slope * (x - mean_x)) ** 2 for x, y in enumerate(values))
    if resid <= 1e-24 * sum(v * v for v in values):
        return 0.0 if slope == 0 else math.copysign(math.inf, slope)
    return slope / math.sqrt(resid / (n - 2) / sxx)


def test_slope_t_is_the_textbook_loop_bit_for_bit():
    rng = random.Random(0)
    for trial in range(3000):
        n = rng.randint(0, 45)
        kind = trial % 4
        if kind == 0:
            values = [rng.lognormvariate(0, 3) for _ in range(n)]
        elif kind == 1:
            values = [1.0 - 0.01 * i + rng.gauss(0, 1e-3) for i in range(n)]
        elif kind == 2:
            values = [0.25] * n  # flat: resid 0
        else:
            values = [float(i) for i in range(n)]  # a straight line: ±inf
        assert bits(slope_t(values)) == bits(textbook_slope_t(values)), values


# ---------------------------------------------------------------------------------------- LossProgress
ANSWERS = ("state", "initial", "recent", "previous", "improvement", "level", "at_chance", "fell_to_chance",
           "above_chance")


def answers(progress: LossProgress) -> list[object]:
    out: list[object] = [getattr(progress, name) for name in ANSWERS] + [progress.slope_t(), progress.describe()]
    return [bits(v) if isinstance(v, float) else v for v in out]


@pytest.mark.parametrize("chance", [None, 1.0])
def test_loss_progress_answers_after_each_loss_what_a_fresh_tracker_fed_the_same_losses_answers(chance):
    rng = random.Random(1)
    losses = ([2.0 * 0.97**i * rng.uniform(0.9, 1.1) for i in range(60)] + [1.1 + rng.gauss(0, 0.01) for _ in range(60)]
              + [None, math.nan] + [1.1 * 1.02**i for i in range(40)])
    config = DetectorConfig(chance_loss=chance)
    asked = LossProgress.from_config(config)
    for i, loss in enumerate(losses):
        asked.update(loss)
        fresh = LossProgress.from_config(config)
        for earlier in losses[: i + 1]:
            fresh.update(earlier)
        assert answers(asked) == answers(fresh), i
        answers(asked)  # asked twice: the cached answers are the same


# ---------------------------------------------------------------------------------------- the suite's shared tracker
def run_records(seed: int) -> list[StepStats]:
    """A stalled start with decay on probe steps, a drop to a plateau with saturated units, then a climb."""
    rng = random.Random(seed)
    out = []
    for i in range(240):
        loss = (1.0 + rng.gauss(0, 0.01) if i < 60 else 0.4 + rng.gauss(0, 0.02) if i < 170
                else 0.4 * 1.05 ** (i - 170))
        ts = [1e-6 * 10 ** (t / 4) for t in range(40)] if i % 10 == 0 else None
        ratio = 1e-6 if i < 60 else rng.uniform(1e-3, 3e-2)
        out.append(record(i, loss, layer(ratio, ts=ts, sat=0.8 if i % 10 == 0 and i > 100 else None),
                          layer(ratio * 2, index=1, ts=ts), grad=rng.uniform(0.5, 2)))
    return out


def standalone_detectors(config: DetectorConfig) -> list:
    """`default_detectors`, each built alone: its own loss tracker and temporal profiles."""
    return [NonFiniteDetector(), NormSpikeDetector(config), LargeUpdatesDetector(config), TemporalGrowthDetector(config),
            OscillationDetector(config), ConstantClippingDetector(config), TemporalDecayDetector(config),
            DeadNeuronsDetector(config), TinyUpdatesDetector(config), SlowProgressDetector(config)]


def test_standalone_detectors_are_the_default_ones():
    assert [type(d) for d in standalone_detectors(DetectorConfig())] == [type(d) for d in default_detectors(DetectorConfig())]


@pytest.mark.parametrize("options", [{}, {"chance_loss": 0.39}, {"disable": ("tiny_updates",)}],
                         ids=["default", "chance_loss", "tiny_updates_off"])
def test_suite_with_one_shared_loss_tracker_raises_what_detectors_with_their_own_raise(options):
    config = DetectorConfig.from_options(dict(options))
    shared = DetectorSuite(config)
    own = DetectorSuite(config, detectors=standalone_detectors(config))
    for seed in range(3):
        records = run_records(seed)
        got = [a.to_dict() for r in records for a in shared.update(r)]
        expected = [a.to_dict() for r in records for a in own.update(r)]
        assert got == expected and {a["sign"] for a in got} >= {"slow_progress", "temporal_decay"}
        shared.reset()
        own.reset()


def test_the_shared_loss_tracker_takes_each_record_s_loss_once():
    # fed by every loss-aware detector as well as the suite, it would count each loss up to five times
    suite = DetectorSuite(DetectorConfig())
    records = run_records(0)[:50]
    for r in records:
        suite.update(r)
    trackers = {id(d.progress) for d in suite.detectors if hasattr(d, "progress")}
    assert len(trackers) == 1
    (progress,) = {d.progress for d in suite.detectors if hasattr(d, "progress")}
    assert progress.count == len(records)


def test_the_suite_computes_each_probe_step_s_temporal_profiles_once(monkeypatch):
    # decay, growth and slow_progress each computed them from the same per-timestep norms
    computed: list[int] = []
    profiles = temporal_module._profiles
    monkeypatch.setattr(temporal_module, "_profiles", lambda stats, min_steps: computed.append(stats.step) or
                        profiles(stats, min_steps))
    suite = DetectorSuite(DetectorConfig())
    records = run_records(0)[:60]
    alerts = [a for r in records for a in suite.update(r)]
    assert computed == [r.step for r in records if r.probed] and any(a.sign == "temporal_decay" for a in alerts)


# ---------------------------------------------------------------------------------------- oscillation
class FromScratchOscillation:
    """The oscillation rule computed from the whole window on every step (the code before the shortcut)."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.losses: collections.deque[float] = collections.deque(maxlen=config.oscillation_window)
        self.ratios: dict[tuple[str, int], collections.deque[float]] = {}

    def update(self, stats: StepStats) -> list[tuple[int, float]]:
        c = self.config
        if stats.loss is None or not math.isfinite(stats.loss):
            return []
        self.losses.append(stats.loss)
        for key in list(self.ratios) + [k for k in stats.layers if k not in self.ratios]:
            ls = stats.layers.get(key)
            trail = self.ratios.setdefault(key, collections.deque(maxlen=c.oscillation_window))
            trail.append(ls.update_ratio if ls is not None and ls.has_grad else math.nan)
            if ls is None and len(trail) == trail.maxlen and not any(math.isfinite(r) for r in trail):
                del self.ratios[key]
        if len(self.losses) < c.oscillation_window:
            return []
        medians = {k: median(v) for k, v in self.ratios.items()}
        medians = {k: v for k, v in medians.items() if math.isfinite(v)}
        if medians and max(medians.values()) < c.oscillation_update_ratio:
            return []
        losses = list(self.losses)
        half = len(losses) // 2
        if statistics.median(losses[half:]) < 0.9 * statistics.median(losses[:half]):
            return []
        m = measure_swings(losses, swing=c.oscillation_swing, noise=c.oscillation_noise)
        if m.legs < c.oscillation_legs or m.persistence < c.oscillation_persistence:
            return []
        return [(stats.step, float(m.legs))]


def bouncing_losses(rng: random.Random, n: int) -> list[float | None]:
    out: list[float | None] = []
    period = rng.choice([6, 8, 12])
    for i in range(n):
        level = math.exp(0.5 * math.sin(2 * math.pi * i / period)) * rng.lognormvariate(0, rng.choice([0.02, 0.3]))
        roll = rng.random()
        out.append(None if roll < 0.02 else math.nan if roll < 0.03 else -level if roll < 0.05 else
                   0.0 if roll < 0.06 else level)
    return out


@pytest.mark.parametrize("window", [3, 4, 5, 12, 40])  # (2 or less: measure_swings fails, before as now)
def test_oscillation_alerts_as_the_rule_computed_from_the_whole_window(window):
    config = DetectorConfig(oscillation_window=window)
    alerted = 0
    for seed in range(8):
        rng = random.Random(seed * 100 + window)
        detector, reference = OscillationDetector(config), FromScratchOscillation(config)
        for step, loss in enumerate(bouncing_losses(rng, 300)):
            ratios = [layer(rng.choice([1e-3, 5e-2, math.nan]), has_grad=rng.random() > 0.05)]
            if step % 50 > 40:
                ratios.append(layer(5e-2, index=1))  # a layer that comes and goes
            stats = record(step, loss, *ratios)
            got = [(a.step, a.value) for a in detector.update(stats)]
            assert got == reference.update(stats), (seed, step)
            alerted += len(got)
    if window >= 12:
        assert alerted > 0  # the windows did bounce enough to alert (a window of 5 or less cannot hold 3 swings)
