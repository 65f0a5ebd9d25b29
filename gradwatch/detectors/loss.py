"""`slow_progress` and `oscillation`: what the loss fed to `monitor.step(loss)` says.

    >>> det = SlowProgressDetector(DetectorConfig())
    >>> alerts = [a for s in records for a in det.update(s)]     # flat loss + decaying gradient
    >>> alerts[0].sign
    'slow_progress'

* slow_progress (vanishing), judged on recent windows of the loss (`LossProgress`):
  - stuck at the start: after `progress_steps` steps the median of the last `progress_window`
    losses is within `progress_min` of the median of the first ones, and the loss is not falling
    steadily (slope t > −`progress_trend`). Warning, naming the strongest gradient evidence —
    decay through time (latest probe ratio ≤ `temporal_decay_ratio`), dead or saturated units
    (share ≥ `dead_share`), negligible updates (median ratio < `tiny_update_ratio`) — or saying
    that none is visible (the remedy then starts with the data and the learning rate) — that
    last one only after `progress_unexplained_steps` (40), since a healthy slow starter also
    sits flat for 30 steps; a loss stuck *above* its start (it jumped up, then stays there
    without climbing steadily: `LossProgress` "worse") is judged the same way;
  - plateau: the loss fell, then the last 3 × `progress_window` steps brought less than
    `progress_min`. A converged run plateaus too, so this warns only with dead or saturated units,
    or when the plateau is high (≥ `plateau_level` × the first losses) and every layer's median
    update ratio is below `plateau_update_ratio` (steps too small to leave it) — weak evidence, so
    that one also waits for `progress_unexplained_steps`. With `chance_loss` given, "high" also
    means at the chance level: a plateau whose level (mean of the last 3 × `progress_window`
    losses) is below `chance_share` × the chance loss is a model that learned more than the
    input-blind answer, and the small steps alone do not make it stuck.
  A loss that is still falling never raises it.
* oscillation (exploding): a learning rate that is too high makes the loss climb for several
  steps and fall back, again and again. Over the last `oscillation_window` finite losses, on
  log(loss) when they are all positive (mini-batch noise grows with the loss level; the
  loss itself otherwise), all four must hold:
  1. swings: the 3-step running median moves up and down in alternation at least
     `oscillation_legs` times, each move at least max(log(1 + `oscillation_swing`),
     `oscillation_noise` × the median step-to-step change) — a move of 10 % and well above
     the batch-to-batch noise;
  2. not settling: the median of the window's second half is not 10 % below its first half;
  3. persistence: the lag-1 autocorrelation around the window's straight trend is at least
     `oscillation_persistence`. Every step draws a fresh batch, so mini-batch noise is
     independent from step to step (about 0) however large or skewed it is, while swings
     driven by the optimizer last several steps (towards 1);
  4. large steps: the median update ratio of the most-moved watched layer over the window
     is at least `oscillation_update_ratio` (skipped when no layer's ratio was measured).
  Noise around a downward trend or a plateau, from small batches or a correlated drift of
  Adam's small steps, fails 3 or 4; a converged run's tiny loss fails 1 (its relative noise
  is large). When all four hold but the window's median loss is ≤ `oscillation_converged`
  × the median of the first `progress_window` losses, it is `info`: swings around a loss that
  already fell tenfold are a converged run kept moving by large steps.

Without a loss (`monitor.step()` with no argument) both stay silent.
"""

from __future__ import annotations

import collections
import math
import operator
import statistics
from dataclasses import dataclass

from ..records import Alert, LayerKey, StepStats
from . import remedies
from .base import LossProgress, MedianWindow, fmt, make_alert, median, shared_progress, where
from .config import DetectorConfig
from .temporal import LatestProfiles

__all__ = [
    "SlowProgressDetector",
    "OscillationDetector",
    "Swings",
    "measure_swings",
    "zigzag_legs",
    "running_median",
    "lag1_autocorrelation",
]

_SETTLING = 0.9
"""The second half of the window below this fraction of the first half means it is settling."""


class SlowProgressDetector:
    """A stalled loss together with gradient evidence of vanishing."""

    signs: tuple[str, ...] = ("slow_progress",)

    def __init__(self, config: DetectorConfig, progress: LossProgress | None = None,
                 profiles: LatestProfiles | None = None) -> None:
        self.config = config
        self.progress, self._feeds = shared_progress(config, progress)
        self.profiles = profiles or LatestProfiles()
        self.reset()

    def reset(self) -> None:
        if self._feeds:
            self.progress.reset()
        self._decay: dict[LayerKey, float] = {}
        self._inactive: dict[LayerKey, tuple[float, str]] = {}
        self._ratios: dict[LayerKey, collections.deque[float]] = {}
        """Recent update ratios of each layer (their medians are needed only once the loss has stalled)."""
        self._kinds: dict[LayerKey, str] = {}

    def update(self, stats: StepStats) -> list[Alert]:
        if self._feeds:
            self.progress.update(stats.loss, stats.chance_loss)
        self._collect(stats)
        state = self.progress.state
        if self.progress.fell_to_chance:
            # it fell to the chance level and stays there: what looks like convergence is the input-blind answer;
            # a loss that started at chance is judged as before (a slow starter also sits at chance for a while).
            # Without gradient evidence it waits `progress_unexplained_steps`, as a flat loss alone does: a run can
            # also rest at chance for a while before it learns
            found = self._evidence()
            if found is not None or self.progress.count >= self.config.progress_unexplained_steps:
                return [self._alert(stats.step, *self._chance_evidence(found), gradients=False)]
        elif self.progress.above_chance and self.progress.count >= self.config.progress_unexplained_steps:
            # still above the input-blind loss after as many steps as a flat loss is given, even if falling slowly
            return [self._alert(stats.step, *self._chance_evidence(self._evidence()), gradients=False)]
        if state not in ("stalled", "worse", "plateau"):
            return []
        found = self._evidence(inactive_only=state == "plateau")
        if found is None and state == "plateau":
            # a converged run plateaus too: only dead or saturated units, or a high plateau that small steps
            # cannot leave, say it is stuck
            return self._high_plateau(stats.step)
        if found is None and self.progress.count < self.config.progress_unexplained_steps:
            return []  # a flat loss alone: a slow start looks the same for a while
        if found is None:
            key = next(iter(self._kinds), None)
            return [self._alert(stats.step, key, "unexplained", (
                "no specific cause is visible in the gradients (no decay through time beyond "
                f"{fmt(self.config.temporal_decay_ratio)}, no dead or saturated units, updates of usual size): the "
                "learning signal from the inputs does not reach the weights that would use it"))]
        key, cause, text = found
        return [self._alert(stats.step, key, cause, text)]

    def _chance_evidence(self, found: tuple[LayerKey, str, str] | None) -> tuple[LayerKey | None, str, str]:
        """(layer, cause, words) for a loss at the chance level: the gradient evidence if any, else the level alone."""
        p = self.progress
        if p.fell_to_chance and self._far_above_chance():
            level = (f"its level over the last {len(p.last)} steps, {fmt(p.level)}, is "
                     f"{fmt((p.level or 0.0) / (p.chance or 1.0))}× the chance loss {fmt(p.chance)} {p.chance_source}, and it is "
                     f"not falling steadily (slope t = {p.slope_t():.1f}): the model does worse than ignoring its inputs")
        elif p.fell_to_chance:
            level = (f"its level over the last {len(p.last)} steps, {fmt(p.level)}, is "
                     f"{fmt((p.level or 0.0) / (p.chance or 1.0))}× the chance loss {fmt(p.chance)} {p.chance_source} (threshold "
                     f"{fmt(p.chance_share)}×), and it is not falling steadily (slope t = {p.slope_t():.1f}): the model "
                     "does no better than ignoring its inputs")
        else:
            level = (f"after {p.count} steps its level over the last {len(p.last)} steps, {fmt(p.level)}, is still "
                     f"above the chance loss {fmt(p.chance)} {p.chance_source} (slope t = {p.slope_t():.1f}): the model does not "
                     "yet do as well as ignoring its inputs")
        if found is None:
            return next(iter(self._kinds), None), "unexplained", (
                f"{level}; and the gradients show no specific cause (no decay through time beyond "
                f"{fmt(self.config.temporal_decay_ratio)}, no dead or saturated units, updates of usual size)")
        key, cause, text = found
        return key, cause, f"{level}; and the gradients: {text}"

    def _far_above_chance(self) -> bool:
        """The recent level and median are above chance by more than `chance_share` allows below it (≥ chance / share):
        stuck there, the model does worse than an input-blind one, not as well."""
        p = self.progress
        # the recent median too: the mean over 30 steps still holds the high losses of a fast drop to chance
        return (p.level is not None and p.recent is not None and p.chance is not None
                and min(p.level, p.recent) * p.chance_share >= p.chance)

    def _high_plateau(self, step: int) -> list[Alert]:
        c, p = self.config, self.progress
        if p.recent is None or p.initial is None or p.recent < c.plateau_level * p.initial:
            return []
        if p.count < c.progress_unexplained_steps:
            return []  # small steps are weak evidence: it waits as long as a flat loss alone
        if p.chance is not None and (p.level is None or p.level < p.chance_share * p.chance):
            return []  # better than the input-blind answer: not the average answer that the rule is about
        full = {k: median(v) for k, v in self._ratios.items() if len(v) == c.update_window}
        if not full or max(full.values()) >= c.plateau_update_ratio:
            return []
        key = max(full, key=full.__getitem__)
        return [self._alert(step, key, "unexplained", (
            f"the plateau is high ({fmt(p.recent / p.initial)} of the initial loss, above {fmt(c.plateau_level)}: a model "
            f"that learned only the average answer stops there) and the steps are too small to leave it (largest median "
            f"update ratio {fmt(full[key])} in {where(*key)}, threshold {fmt(c.plateau_update_ratio)})"))]

    def _alert(self, step: int, key: LayerKey | None, cause: str, text: str, *, gradients: bool = True) -> Alert:
        """`text` is the gradient evidence ("and the gradients: …" is prefixed unless `gradients` is False)."""
        lead = {"stalled": "the loss is stuck at its starting level", "worse": "the loss is above its starting level"}.get(
            self.progress.state, "the loss has stopped improving")
        if self.progress.fell_to_chance and self._far_above_chance():
            lead = "the loss is stuck above the chance level"  # it never came down to chance (a start far above it)
        elif self.progress.fell_to_chance:
            lead = "the loss is stuck at the chance level"
        elif self.progress.above_chance and self.progress.count >= self.config.progress_unexplained_steps:
            lead = "the loss is still above the chance level"
        elif self.progress.state == "stalled" and self.progress.at_chance:
            lead = f"the loss is stuck at its starting level, the chance level (chance loss {fmt(self.progress.chance)} {self.progress.chance_source})"
        return make_alert(
            "slow_progress",
            "warning",
            step,
            evidence=f"{lead}: {self.progress.describe()}; {'and the gradients: ' if gradients else ''}{text}.",
            remedy=remedies.slow_progress(self._kinds.get(key, "") if key else "", cause) + ".",
            value=self.progress.improvement or 0.0,
            threshold=self.config.progress_min,
            module=key[0] if key else None,
            layer=key[1] if key else None,
        )

    def _collect(self, stats: StepStats) -> None:
        c = self.config
        kinds, ratios = self._kinds, self._ratios
        for key, ls in stats.layers.items():
            kinds[key] = ls.kind
            if ls.has_grad and math.isfinite(ls.update_ratio):
                window = ratios.get(key)
                if window is None:
                    window = ratios[key] = collections.deque(maxlen=c.update_window)
                window.append(ls.update_ratio)
        if not stats.probed:
            return
        self._decay.clear()
        self._inactive.clear()
        for key, p in self.profiles.of(stats, min_steps=c.temporal_min_steps).items():
            self._decay[key] = p.ratio
        for key, ls in stats.layers.items():
            shares = [(ls.dead_fraction, "dead"), (ls.saturated_fraction, "saturated")]
            share, state = max(((s, n) for s, n in shares if s is not None), default=(None, ""))
            if share is not None:
                self._inactive[key] = (share, state)

    def _evidence(self, *, inactive_only: bool = False) -> tuple[LayerKey, str, str] | None:
        """(layer, cause, words) of the strongest vanishing evidence, or None."""
        c = self.config
        decays = {k: r for k, r in self._decay.items() if r <= c.temporal_decay_ratio and not inactive_only}
        if decays:
            key = min(decays, key=decays.__getitem__)
            share = "none" if decays[key] == 0 else fmt(decays[key])
            return key, "decay", (
                f"the gradient reaching the earliest quarter of the sequence in {where(*key)} is {share} of that "
                f"reaching the third quarter (temporal decay threshold {fmt(c.temporal_decay_ratio)})"
            )
        inactive = {k: v for k, v in self._inactive.items() if v[0] >= c.dead_share}
        if inactive:
            key = max(inactive, key=lambda k: inactive[k][0])
            idle, state = inactive[key]
            return key, state, (
                f"{idle * 100:.0f} % of the units of {where(*key)} are {state} (threshold {c.dead_share * 100:.0f} %)"
            )
        if inactive_only:
            return None
        full = {k: median(v) for k, v in self._ratios.items() if len(v) == c.update_window}
        tiny = {k: m for k, m in full.items() if m < c.tiny_update_ratio}
        if tiny:
            key = min(tiny, key=tiny.__getitem__)
            return key, "tiny_updates", (
                f"the median update ratio of {where(*key)} is {fmt(tiny[key])} (threshold {fmt(c.tiny_update_ratio)})"
            )
        return None


def running_median(values: list[float], width: int = 3) -> list[float]:
    """Median of each run of `width` (odd) consecutive values: one-step spikes disappear."""
    return [sorted(values[i : i + width])[width // 2] for i in range(len(values) - width + 1)]


def zigzag_legs(values: list[float], swing: float) -> int:
    """How many alternating moves of at least `swing` the series makes (up–down–up… counts 3).

    A move ends when the series has come back by `swing` from its extreme, as in a zigzag
    chart; moves smaller than `swing` are ignored.
    """
    if not values:
        return 0
    legs, trend, low, high = 0, 0, values[0], values[0]
    for v in values[1:]:
        if trend == 0:
            low, high = min(low, v), max(high, v)
            if high - low >= swing:
                legs, trend = 1, (1 if v == high else -1)
                low = high = v
        elif trend == 1:
            if v >= high:
                high = v
            elif high - v >= swing:
                legs, trend, low = legs + 1, -1, v
        else:
            if v <= low:
                low = v
            elif v - low >= swing:
                legs, trend, high = legs + 1, 1, v
    return legs


def lag1_autocorrelation(values: list[float]) -> float:
    """Lag-1 autocorrelation of `values` after removing their least-squares line (0 when flat).

    Independent noise around any straight trend gives about 0 (±1/√n); a series that
    stays above or below its trend for several steps in a row gives values towards 1; a
    straight line (up to rounding) gives 0.
    """
    n = len(values)
    if n < 3:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / sum((x - mean_x) ** 2 for x in range(n))
    resid = [y - mean_y - slope * (x - mean_x) for x, y in enumerate(values)]
    power = sum(r * r for r in resid)
    if power <= 1e-24 * sum(v * v for v in values):  # a straight line up to rounding: no residual to judge
        return 0.0
    return sum(a * b for a, b in zip(resid, resid[1:])) / power


@dataclass(frozen=True)
class Swings:
    """What `OscillationDetector` measured over one full window of losses."""

    log: bool
    """Measured on log(loss) (every loss in the window positive) or on the loss itself."""
    legs: int
    """Alternating moves of at least `swing` made by the 3-step running median."""
    swing: float
    """Smallest move that counted (log units when `log`)."""
    noise: float
    """Median step-to-step change of the (log) loss."""
    persistence: float
    """`lag1_autocorrelation` of the (log) loss."""
    low: float
    high: float
    """Extremes of the running median, as losses."""
    first: float
    second: float
    """Median loss of the first and second half of the window."""


def measure_swings(losses: list[float], *, swing: float, noise: float) -> Swings:
    """The window statistics the oscillation rule judges (see the module docstring)."""
    log = min(losses) > 0
    values = [math.log(v) for v in losses] if log else list(losses)
    step_noise = statistics.median(abs(b - a) for a, b in zip(values, values[1:]))
    floor = math.log1p(swing) if log else swing * abs(statistics.median(losses))
    least = max(floor, noise * step_noise)
    smooth = running_median(values)
    half = len(losses) // 2
    back = math.exp if log else (lambda v: v)
    return Swings(
        log=log,
        legs=zigzag_legs(smooth, least) if least > 0 else 0,
        swing=least,
        noise=step_noise,
        persistence=lag1_autocorrelation(values),
        low=back(min(smooth)),
        high=back(max(smooth)),
        first=statistics.median(losses[:half]),
        second=statistics.median(losses[half:]),
    )


class OscillationDetector:
    """The loss swings up and down instead of settling, because the steps are too large."""

    signs: tuple[str, ...] = ("oscillation",)

    def __init__(self, config: DetectorConfig, progress: LossProgress | None = None) -> None:
        self.config = config
        self.progress, self._feeds = shared_progress(config, progress)
        self.reset()

    def reset(self) -> None:
        if self._feeds:
            self.progress.reset()
        window = self.config.oscillation_window
        self._losses: collections.deque[float] = collections.deque(maxlen=window)
        self._ratios: dict[LayerKey, MedianWindow] = {}
        """Update ratio of each layer on the steps of `_losses` (NaN where it had none)."""
        self._logs: collections.deque[float] = collections.deque(maxlen=window)
        """log(loss), NaN for a loss ≤ 0: what `measure_swings` takes the log of, taken as each loss comes."""
        self._log_smooth: collections.deque[float] = collections.deque(maxlen=max(window - 2, 1))
        """The 3-step running median of log(loss) (`running_median`) over the window, one entry per loss."""

    def update(self, stats: StepStats) -> list[Alert]:
        c = self.config
        if self._feeds:
            self.progress.update(stats.loss, stats.chance_loss)
        loss = stats.loss
        if loss is None or not math.isfinite(loss):
            return []
        self._remember(loss)
        self._collect_ratios(stats)
        if len(self._losses) < c.oscillation_window:
            return []
        # The cheap conditions first (every condition must hold): most healthy runs take small
        # steps or settle, and never pay for the swing measurement.
        step = self._largest_steps()
        if step is not None and step[1] < c.oscillation_update_ratio:
            return []
        if self._settling():
            return []
        if not self._may_swing():
            return []
        m = measure_swings(list(self._losses), swing=c.oscillation_swing, noise=c.oscillation_noise)
        if m.legs < c.oscillation_legs or m.persistence < c.oscillation_persistence:
            return []
        evidence, converged = self._evidence(m, step), self._converged()
        if converged is not None:
            evidence += (f"; but the loss has converged: its median over the window is {fmt(converged)} of the first "
                         f"{c.progress_window} losses' (at most {fmt(c.oscillation_converged)}), so the large steps only "
                         "keep a low loss moving (info; lower the learning rate only if the final loss matters)")
        return [
            make_alert(
                "oscillation",
                "info" if converged is not None else "warning",
                stats.step,
                evidence=evidence + ".",
                remedy=remedies.oscillation() + ".",
                value=float(m.legs),
                threshold=float(c.oscillation_legs),
            )
        ]

    def _converged(self) -> float | None:
        """The window's median loss as a fraction of the first losses' median when it is ≤ `oscillation_converged`
        (the loss fell tenfold and swings down there), else None."""
        initial = self.progress.initial
        if initial is None or initial <= 0:
            return None
        share = statistics.median(self._losses) / initial
        return share if share <= self.config.oscillation_converged else None

    def _remember(self, loss: float) -> None:
        self._losses.append(loss)
        logs = self._logs
        logs.append(math.log(loss) if loss > 0 else math.nan)
        if len(logs) >= 3:
            self._log_smooth.append(sorted((logs[-3], logs[-2], logs[-1]))[1])

    def _settling(self) -> bool:
        """The median of the window's second half is 10 % below that of its first half."""
        losses = list(self._losses)
        half = len(losses) // 2
        return statistics.median(losses[half:]) < _SETTLING * statistics.median(losses[:half])

    def _may_swing(self) -> bool:
        """False when the window certainly fails the swing or the persistence condition of `measure_swings`
        (judged on log(loss), with the same expressions on the same values); True when it may pass (then
        measured in full)."""
        c = self.config
        if len(self._losses) < 4 or min(self._losses) <= 0:
            return True  # short windows and losses ≤ 0 (judged on the loss itself): measured in full
        logs = list(self._logs)
        moves = map(abs, map(operator.sub, logs[1:], logs[:-1]))  # |b − a| of each adjacent pair (a, b)
        least = max(math.log1p(c.oscillation_swing), c.oscillation_noise * statistics.median(moves))
        legs = zigzag_legs(list(self._log_smooth), least) if least > 0 else 0
        if legs < c.oscillation_legs:
            return False
        return lag1_autocorrelation(logs) >= c.oscillation_persistence

    def _collect_ratios(self, stats: StepStats) -> None:
        """Append this step's update ratio of every layer seen (NaN if absent); forget layers gone for a window."""
        ratios, layers = self._ratios, stats.layers
        for key, trail in list(ratios.items()):
            ls = layers.get(key)
            trail.append(ls.update_ratio if ls is not None and ls.has_grad else math.nan)
            if ls is None and trail.full() and not trail.finite:
                del ratios[key]
        for key, ls in layers.items():
            if key not in ratios:  # a layer seen for the first time
                trail = ratios[key] = MedianWindow(self.config.oscillation_window)
                trail.append(ls.update_ratio if ls.has_grad else math.nan)

    def _largest_steps(self) -> tuple[LayerKey, float] | None:
        """The layer with the largest median update ratio over the window, or None if none was measured."""
        best: tuple[LayerKey, float] | None = None  # the first layer with the largest finite median
        for key, trail in self._ratios.items():
            m = trail.median()
            if math.isfinite(m) and (best is None or m > best[1]):
                best = (key, m)
        return best

    def _evidence(self, m: Swings, step: tuple[LayerKey, float] | None) -> str:
        c = self.config
        if m.log:
            size = (
                f"by at least ×{fmt(math.exp(m.swing))} each (the larger of ×{fmt(1 + c.oscillation_swing)} and "
                f"{fmt(c.oscillation_noise)}× the median step-to-step change of log(loss), {fmt(m.noise)})"
            )
        else:
            size = (
                f"by at least {fmt(m.swing)} each (the larger of {c.oscillation_swing * 100:.0f} % of its median and "
                f"{fmt(c.oscillation_noise)}× its median step-to-step change, {fmt(m.noise)})"
            )
        text = (
            f"over the last {len(self._losses)} steps the loss (3-step running median) went up and down {m.legs} "
            f"times (threshold {c.oscillation_legs}) {size}, between {fmt(m.low)} and {fmt(m.high)}, without settling "
            f"(median {fmt(m.first)} in the first half, {fmt(m.second)} in the second); the swings last several steps "
            f"(lag-1 autocorrelation {m.persistence:.2f} around the trend, threshold {fmt(c.oscillation_persistence)}; "
            f"independent mini-batch noise gives about 0)"
        )
        if step is None:
            return text + "; no update ratio was measured to confirm that the steps are too large"
        return text + (
            f"; and the steps are large: median update ratio ‖Δθ‖/‖θ‖ of {where(*step[0])} is {fmt(step[1])} "
            f"(threshold {fmt(c.oscillation_update_ratio)}; rule of thumb ~1e-3)"
        )
