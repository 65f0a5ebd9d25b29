"""What every detector shares: the protocol, alert construction, and the loss-progress tracker.

    >>> progress = LossProgress(steps=100, window=30, min_improvement=0.1)
    >>> for loss in losses: progress.update(loss)
    >>> progress.state          # "unknown", "improving", "plateau", "stalled" or "worse"

A detector is a pure state machine over `StepStats` records: `update(stats)` returns the
alerts that this record raises and `reset()` forgets everything. It never touches a module,
a tensor or a hook, so it can be tested with hand-written records.
"""

from __future__ import annotations

import bisect
import collections
import math
import statistics
import operator
from functools import lru_cache
from itertools import repeat
from typing import Any, Iterable, Iterator, Literal, Protocol

from ..records import REMEDY, Alert, Location, StepStats
from .config import PROBLEM_OF, DetectorConfig

__all__ = ["Detector", "make_alert", "LossProgress", "shared_progress", "slope_t", "MedianWindow", "median", "fmt", "where", "REMEDY"]

SeverityName = Literal["info", "warning", "critical"]


class Detector(Protocol):
    """A pure state machine over stream records."""

    signs: tuple[str, ...]
    """The `Alert.sign` names this detector can raise."""

    def update(self, stats: StepStats) -> list[Alert]: ...

    def reset(self) -> None: ...


def make_alert(
    sign: str,
    severity: SeverityName,
    step: int,
    *,
    evidence: str,
    remedy: str,
    value: float,
    threshold: float,
    module: str | None = None,
    layer: int | None = None,
    timestep: int | None = None,
) -> Alert:
    """An `Alert` of `sign` (its problem looked up in `PROBLEM_OF`), with evidence and remedy kept apart."""
    return Alert(
        problem=PROBLEM_OF[sign],  # type: ignore[arg-type]
        sign=sign,
        severity=severity,
        step=step,
        module=module,
        layer=layer,
        timestep=timestep,
        value=float(value),
        threshold=float(threshold),
        evidence=evidence,
        remedy=remedy,
    )


def median(values: Iterable[float]) -> float:
    """Median of the finite values (NaN when there is none)."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else float("nan")


class MedianWindow:
    """The last `size` values, with `median` of their finite ones kept ready (no sort per step).

        >>> w = MedianWindow(3)
        >>> for v in (5.0, 1.0, float("nan"), 3.0): w.append(v)
        >>> list(w), w.median(), w.finite
        ([1.0, nan, 3.0], 2.0, 2)

    `median()` is `median(list(w))`, bit for bit: the finite values are kept sorted, equal ones in
    the order they came (as a stable sort leaves them), and the oldest leaves first.
    """

    __slots__ = ("_values", "_sorted")

    def __init__(self, size: int) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=size)
        self._sorted: list[float] = []

    def append(self, value: float) -> None:
        values, ordered = self._values, self._sorted
        if len(values) == values.maxlen and values:
            old = values[0]
            if math.isfinite(old):
                del ordered[bisect.bisect_left(ordered, old)]  # the leftmost of its equals is the oldest
        values.append(value)
        if math.isfinite(value):
            bisect.insort_right(ordered, value)

    def median(self) -> float:
        """Median of the finite values (NaN when there is none), as `median` computes it."""
        ordered = self._sorted
        n = len(ordered)
        if not n:
            return float("nan")
        i = n // 2
        return ordered[i] if n % 2 else (ordered[i - 1] + ordered[i]) / 2

    def largest(self) -> float:
        """The largest finite value (NaN when there is none); of equal ones (0.0 and -0.0), the first
        that came, as `max` returns it."""
        ordered = self._sorted
        return ordered[bisect.bisect_left(ordered, ordered[-1])] if ordered else float("nan")

    @property
    def finite(self) -> int:
        """How many of the values are finite."""
        return len(self._sorted)

    @property
    def maxlen(self) -> int | None:
        return self._values.maxlen

    def full(self) -> bool:
        return len(self._values) == self._values.maxlen

    def clear(self) -> None:
        self._values.clear()
        self._sorted.clear()

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[float]:
        return iter(self._values)

    def __getitem__(self, index: int) -> float:
        return self._values[index]

    def __bool__(self) -> bool:
        return bool(self._values)


def fmt(x: float | None) -> str:
    """A number in 3 significant digits, as messages print them."""
    if x is None:
        return "n/a"
    if x == 0 or not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def where(module: str | None, layer: int | None = None) -> str:
    """'lstm' layer 1, in words, for messages ("the model" when `module` is None)."""
    return Location(module, layer).words(article=True)


class LossProgress:
    """Whether the loss fed to `monitor.step(loss)` improves, judged on recent windows.

    `initial` is the median of the first `window` losses, `recent` that of the last `window`,
    `previous` that of the `window` losses that ended 2 × `window` steps before the last one.

    * "improving": `recent` is at least `min_improvement` (relative) below `initial` and still
      falling (below `previous` by `min_improvement`); or less than that below `initial` but
      falling steadily (least-squares slope of the last 3 × `window` losses at least `trend`
      standard errors below zero);
    * "plateau": it fell from `initial` but the last 3 × `window` steps brought less than
      `min_improvement` and no steady fall (`trend`, as below), or (after `steps` losses) their
      slope is flat, |t| < `flat_t`, whatever two noisy 10-step medians say (a converged run, or a drop from a bad initial loss to chance level;
      only gradient evidence tells them apart);
    * "stalled": `steps` losses seen and `recent` is still within `min_improvement` of `initial`:
      stuck at its starting level, neither learning nor diverging;
    * "worse": `steps` losses seen, `recent` more than `min_improvement` above `initial`, and
      the last 3 × `window` losses not climbing steadily (slope t < `trend`): it got worse and
      stays there, neither learning nor diverging (a steady climb stays "unknown", an
      exploding-side matter);
    * "unknown": too little history, no loss fed, or a non-positive initial loss.
    """

    def __init__(self, *, steps: int, window: int, min_improvement: float, trend: float = math.inf,
                 flat_t: float = 0.0, chance: float | None = None, chance_share: float = 0.9,
                 long_window: int = 0) -> None:
        self.steps, self.window, self.min_improvement, self.trend = steps, window, min_improvement, trend
        self.flat_t, self.given_chance, self.chance_share = flat_t, chance, chance_share
        self.long_blocks = long_window // window
        """Most blocks of `window` losses the long-run trend looks at (`falling_long`; 0: none)."""
        self.reset()

    @classmethod
    def from_config(cls, config: DetectorConfig) -> "LossProgress":
        """The progress tracker every loss-aware detector uses (`progress_*` options)."""
        return cls(steps=config.progress_steps, window=config.progress_window, min_improvement=config.progress_min,
                   trend=config.progress_trend, flat_t=config.plateau_flat_t, chance=config.chance_loss,
                   chance_share=config.chance_share, long_window=config.progress_long_window)

    @property
    def chance(self) -> float | None:
        """The chance-level loss the rules compare with: the one the user gave (`chance_loss`), else the latest
        inferred from the criterion's targets (`StepStats.chance_loss`), else None."""
        return self.given_chance if self.given_chance is not None else self.inferred_chance

    @property
    def chance_source(self) -> str:
        """Where `chance` comes from, for messages: 'you gave' or 'inferred from the targets'."""
        return "you gave" if self.given_chance is not None else "inferred from the targets"

    def reset(self) -> None:
        self.inferred_chance: float | None = None
        """The latest chance level inferred from the targets (kept over steps that come without one)."""
        self.count = 0
        self.first: list[float] = []
        self.last: collections.deque[float] = collections.deque(maxlen=3 * self.window)
        self._initial: float | None = None
        self._block: list[float] = []
        self.blocks: collections.deque[float] = collections.deque(maxlen=max(self.long_blocks, 1))
        """Means of the last (up to `long_blocks`) complete blocks of `window` losses (the long-run trend)."""
        self._long: tuple[int, bool] = (-1, False)
        """(blocks completed, `falling_long`) for the latest block: it changes only when a block completes."""
        self._memo: dict[str, Any] = {}
        """What the properties below derived from the losses fed so far (cleared by `update`): several
        detectors ask for the same state on every step, and it changes only when a loss comes."""

    def update(self, loss: float | None, inferred_chance: float | None = None) -> None:
        """Feed one step's loss and, if the record has one, its inferred chance level (`StepStats.chance_loss`)."""
        if inferred_chance is not None:
            self.inferred_chance = inferred_chance
        if loss is None or not math.isfinite(loss):
            return
        self.count += 1
        if len(self.first) < self.window:
            self.first.append(loss)
            if len(self.first) == self.window:
                self._initial = statistics.median(self.first)  # fixed from here on
        self.last.append(loss)
        if self.long_blocks:
            self._block.append(loss)
            if len(self._block) == self.window:
                self.blocks.append(statistics.fmean(self._block))
                self._block.clear()
        self._memo.clear()

    @property
    def initial(self) -> float | None:
        return self._initial

    @property
    def recent(self) -> float | None:
        if self.count < 2 * self.window:
            return None
        memo = self._memo
        if "recent" not in memo:
            memo["recent"] = statistics.median(list(self.last)[-self.window :])
        return memo["recent"]  # type: ignore[no-any-return]

    @property
    def previous(self) -> float | None:
        """Median of the window that ended 2 × `window` steps before the latest loss."""
        if len(self.last) < 3 * self.window:
            return None
        memo = self._memo
        if "previous" not in memo:
            memo["previous"] = statistics.median(list(self.last)[: self.window])
        return memo["previous"]  # type: ignore[no-any-return]

    @property
    def improvement(self) -> float | None:
        """(initial − recent) / initial, or None before both windows are full."""
        initial, recent = self.initial, self.recent
        if initial is None or recent is None or initial <= 0:
            return None
        return (initial - recent) / initial

    @property
    def state(self) -> Literal["unknown", "improving", "plateau", "stalled", "worse"]:
        memo = self._memo
        if "state" not in memo:
            state = self._state()
            if state in ("plateau", "stalled", "worse") and self.falling_long:
                state = "improving"  # a slow fall that only the long run shows (batch 1): learning
            memo["state"] = state
        return memo["state"]  # type: ignore[no-any-return]

    @property
    def falling_long(self) -> bool:
        """The means of complete blocks of `window` losses over the last half of the run (at least 20
        blocks, at most the `long_blocks` kept) fall with a least-squares slope `trend` standard errors
        below zero. Block means of independent batches are independent, so the t-statistic holds for
        noisy losses that a 3 × `window` window cannot resolve; looking at the last half only, an early
        fall followed by a plateau as long stops counting."""
        done = self.count // self.window
        if self._long[0] != done:
            horizon = min(done // 2, len(self.blocks))
            falling = horizon >= 20 and slope_t(list(self.blocks)[-horizon:]) <= -self.trend
            self._long = (done, falling)
        return self._long[1]

    def _state(self) -> Literal["unknown", "improving", "plateau", "stalled", "worse"]:
        gain = self.improvement
        if gain is None:
            return "unknown"
        if gain >= self.min_improvement:
            previous, recent = self.previous, self.recent
            if previous is not None and recent is not None and previous > 0:
                if (previous - recent) / previous < self.min_improvement and self.slope_t() > -self.trend:
                    return "plateau"
                if self.count >= self.steps and abs(self.slope_t()) < self.flat_t:
                    return "plateau"  # noisy batches can put 10 % between two 10-step medians of a flat loss
            return "improving"
        if self.count >= self.steps and gain > -self.min_improvement:
            # a slow but steady fall (a few % over the window, far above the noise) is learning, not a stall
            return "improving" if self.slope_t() <= -self.trend else "stalled"
        if self.count >= self.steps and self.slope_t() < self.trend:
            return "worse"  # above where it started and no longer climbing steadily: not learning, not (yet) diverging
        return "unknown"

    @property
    def level(self) -> float | None:
        """Mean of the last 3 × `window` losses (None before that many): the level compared with the chance loss."""
        if len(self.last) != self.last.maxlen:
            return None
        memo = self._memo
        if "level" not in memo:
            memo["level"] = statistics.fmean(self.last)
        return memo["level"]  # type: ignore[no-any-return]

    @property
    def at_chance(self) -> bool:
        """A chance loss was given, `steps` losses seen, the recent level is ≥ `chance_share` × chance and
        the loss is not falling steadily: no better than an input-blind predictor, and not getting there."""
        if self.chance is None or self.count < self.steps:
            return False
        level = self.level
        if level is None:
            return False
        return level >= self.chance_share * self.chance and self.slope_t() > -self.trend

    @property
    def fell_to_chance(self) -> bool:
        """`at_chance`, and the loss started above the chance level (the first `window` losses' median ≥ chance /
        `chance_share`): it fell to the input-blind answer and stopped there, which otherwise looks like
        convergence. A loss that starts at chance and stays there is "stalled" and judged as such."""
        if self.chance is None:
            return False
        initial = self.initial
        return (self.at_chance and initial is not None and self.chance is not None
                and initial * self.chance_share >= self.chance)

    @property
    def above_chance(self) -> bool:
        """A chance loss was given, the loss started above it (as for `fell_to_chance`) and its recent level is still
        at or above it, falling or not: after enough steps, not even the input-blind answer has been reached."""
        if self.chance is None:
            return False
        level, initial = self.level, self.initial
        return (self.chance is not None and level is not None and initial is not None
                and initial * self.chance_share >= self.chance and level >= self.chance)

    def slope_t(self) -> float:
        """t-statistic of the least-squares slope of the last 3 × `window` losses (0 when flat or too few)."""
        memo = self._memo
        if "slope_t" not in memo:
            memo["slope_t"] = slope_t(list(self.last))
        return memo["slope_t"]  # type: ignore[no-any-return]

    def describe(self) -> str:
        """'the loss went from 0.693 to 0.691 in 150 steps (0.3 % lower)' for messages."""
        gain = self.improvement
        if gain is None:
            return "the loss has too little history to judge"
        text = (
            f"the loss went from {fmt(self.initial)} to {fmt(self.recent)} (medians of the first and last "
            f"{self.window} steps) in {self.count} steps, {abs(gain) * 100:.1f} % {'lower' if gain >= 0 else 'higher'}"
        )
        if self.state == "plateau":
            text += (f", but it has stopped falling: {fmt(self.previous)} {2 * self.window} steps earlier "
                     f"(less than {self.min_improvement * 100:.0f} % since)")
        return text



def shared_progress(config: DetectorConfig, progress: LossProgress | None) -> tuple[LossProgress, bool]:
    """(the tracker a loss-aware detector reads, whether the detector feeds and resets it itself).

    `progress` given: a tracker the caller feeds once per record and resets (`DetectorSuite` shares one
    among its detectors, since they all follow the same losses); None: the detector keeps its own."""
    if progress is not None:
        return progress, False
    return LossProgress.from_config(config), True

@lru_cache(maxsize=16)
def _centred_positions(n: int) -> tuple[tuple[float, ...], float]:
    """(x − mean_x for x in 0..n−1, their sum of squares), as `slope_t` computes them (they depend on n only)."""
    mean_x = (n - 1) / 2
    return tuple(x - mean_x for x in range(n)), sum((x - mean_x) ** 2 for x in range(n))


def slope_t(values: list[float]) -> float:
    """t-statistic of the least-squares slope of `values` against their position (0 when flat or too few).

    Every sum adds the same terms in the same order as the textbook loop over `enumerate(values)`,
    so the result is bit for bit that loop's; only the positions' part, which depends on the length
    alone, is computed once per length."""
    n = len(values)
    if n < 3:
        return 0.0
    xs, sxx = _centred_positions(n)
    mean_y = sum(values) / n
    dy = list(map(operator.sub, values, repeat(mean_y)))  # y − mean_y
    slope: float = sum(map(operator.mul, xs, dy)) / sxx
    # (y − mean_y − slope·(x − mean_x))², term by term in C
    resid = sum(map(operator.pow, map(operator.sub, dy, map(operator.mul, repeat(slope), xs)), repeat(2)))
    if resid <= 1e-24 * sum(map(operator.mul, values, values)):
        return 0.0 if slope == 0 else math.copysign(math.inf, slope)
    return slope / math.sqrt(resid / (n - 2) / sxx)
