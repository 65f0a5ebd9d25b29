"""Every detector threshold in one dataclass, each with its rule, its source and why.

    >>> cfg = DetectorConfig.from_options({"spike_factor": 20.0, "cooldown": 50})
    >>> cfg.spike_factor
    20.0

`gradwatch.watch(model, opt, spike_factor=20.0)` passes its extra keyword arguments here;
an unknown name raises `GradwatchError` listing the supported ones.

Conventions: "ratio" thresholds are dimensionless; step counts are training steps
(`StepStats.step`); "probe" means a step where the per-timestep probe ran (every
`watch(every=...)` steps, and always step 0).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any

from ..errors import GradwatchError

__all__ = ["DetectorConfig", "SIGNS", "PROBLEM_OF"]

PROBLEM_OF: dict[str, str] = {
    "slow_progress": "vanishing",
    "tiny_updates": "vanishing",
    "dead_neurons": "vanishing",
    "temporal_decay": "vanishing",
    "large_updates": "exploding",
    "non_finite": "exploding",
    "oscillation": "exploding",
    "norm_spike": "exploding",
    "temporal_growth": "exploding",
    "constant_clipping": "exploding",
}
"""The fixed `Alert.sign` names and the problem each one belongs to."""

SIGNS: tuple[str, ...] = tuple(PROBLEM_OF)


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds of every detector. All are keyword options of `gradwatch.watch`."""

    # ---------------------------------------------------------------- reporting
    cooldown: int = 100
    """Steps during which the same (problem, sign, module, layer) is not reported again.
    An escalation (info → warning → critical) is always reported. 100 steps keeps a
    persistent problem visible (about one line per 100 steps) without flooding the log."""
    disable: tuple[str, ...] = ()
    """Sign names whose detector is switched off, e.g. ("oscillation",)."""

    # ---------------------------------------------------------------- loss progress (slow_progress, and the
    # evidence that turns temporal_decay / tiny_updates from info into warnings)
    progress_steps: int = 30
    """Steps of loss history needed before the loss may be called stuck at its starting level.
    Issue #13 asks for a vanishing warning within 40 steps of a run stuck at chance; in the
    corpus calibration half, healthy runs that fell by less than `progress_min` by step 30 all
    fell steadily (see `progress_trend`) or were batch-1 language models (one miss)."""
    progress_unexplained_steps: int = 40
    """A loss stuck at its start with no gradient evidence (no decay through time, no dead or
    saturated units, no tiny updates) is called stuck only after this many steps, not
    `progress_steps`: healthy slow starters (packed classifiers sitting at chance for 30 steps
    before they learn) show a flat loss and nothing else, while stuck runs stay flat. Also for a
    loss stuck *above* its start ("worse"). On the corpus calibration half, 30 → 40 silenced one
    healthy slow starter (a packed GRU at chance until step 35; a batch-1 character model is still
    flat at step 39 and warned), at the cost of two noisy batch-1/warm-up stuck runs whose flat
    spell at step 30 did not last to step 40 (warned at 45 and 89 instead). The high-plateau rule
    (small steps are weak evidence) waits as long: one healthy slow starter fewer (a packed LSTM
    11 % below its start at step 30), one stuck run fewer within 40 steps."""
    progress_window: int = 10
    """Steps whose median loss is compared: the first `progress_window` (initial), the last
    (recent) and the one ending 2 × `progress_window` steps earlier (previous). Medians make one
    noisy batch irrelevant; 10 steps keep the verdict within 30 steps."""
    progress_min: float = 0.1
    """The loss is stuck at its start when the recent median is within this fraction (10 %) of
    the initial one, neither lower (learning) nor higher (diverging, an exploding-side matter);
    it has reached a plateau when it fell from the start but the last 3 × `progress_window`
    steps brought less than this. A run that learns anything at all clears this easily; a
    network that cannot use its inputs stays at the chance-level loss. Fine-tuning runs that
    start near their final loss look stuck too: raise `progress_steps` or lower this for them."""
    progress_trend: float = 3.0
    """…unless the loss falls steadily: a least-squares slope over the last 3 × `progress_window`
    losses at least this many standard errors below zero is slow learning, not a stall. A
    stuck loss is batch noise around a level (|t| < 3 with probability ≈ 0.997 for independent
    noise); a healthy GRU whose loss fell 1.40 → 1.33 in 40 steps has t ≈ −10."""

    progress_long_window: int = 5000
    """Over a long run, a loss that a 3 × `progress_window` window calls stalled, on a plateau or
    above its start is still learning when the means of its consecutive `progress_window`-step
    blocks over the last half of the run (at least 20 blocks; at most the last
    `progress_long_window` steps) fall with a slope `progress_trend` standard errors below zero.
    Batch-1 training (the PyTorch tutorials' SGD character models) falls by a fraction of its
    sample-to-sample noise per 30 steps, so short windows see a flat loss for thousands of steps
    while it learns (a tutorial-style batch-1 RNN classifier: 1.09 → 0.80 in 3,000 steps, warned as
    stuck 30 times, every 100 steps to the end). Used from 400 losses on: the 40-step verdicts
    and the labelled corpus (runs of ≤ 120 steps) are unchanged; a plateau after a fall counts
    once it is as long as the fall."""

    plateau_flat_t: float = 1.0
    """A loss that fell is also on a plateau (after `progress_steps` steps) when the least-squares
    slope of its last 3 × `progress_window` losses is flat: |t| < this. Small noisy batches (the
    adding problem at batch 8: losses 0.09–0.43 around the chance level 0.167) put more than
    `progress_min` between two 10-step medians of a flat loss, so the plateau was recognised
    only after 45–55 steps. A plateau still warns only with the evidence below. Calibration half:
    stuck runs warned within 40 steps 86 → 88 of 96, no healthy run more (0.5 gave 87, 1.5 88)."""
    plateau_level: float = 0.3
    """A plateau (the loss fell, then stopped) is called stuck without gradient evidence only when
    it is high — the recent median still ≥ this fraction of the median of the first
    `progress_window` losses (a model that learns only the average answer drops quickly to the
    chance level and stays there; converged runs end far lower, and the scenario suite's healthy
    small-batch SGD regression, still falling slowly, sits at 22 %: 0.2 raised a false warning on it)…"""
    plateau_update_ratio: float = 1e-2
    """…and every layer's median update ratio is below this (10× the ~1e-3 rule of thumb): steps
    too small to leave it. Adam runs still learning on a high plateau keep ratios of 0.02–0.03
    (corpus calibration half). With `chance_loss` given, the plateau must also be at the chance
    level (mean of the last 3 × `progress_window` losses ≥ `chance_share` × `chance_loss`): one
    below it learned more than the input-blind answer (4 healthy character models and a packed
    classifier at 0.67–0.83 of the chance loss were warned on the read corpus splits)."""

    chance_loss: float | None = None
    """The loss of the best input-blind predictor of your task, if you know it: log K for K
    balanced classes with cross-entropy, the variance of the target for a mean-squared-error
    regression, the unigram entropy of the text for a character model. Not given, gradwatch uses
    the level it infers from the criterion's targets when it can (`StepStats.chance_loss`; see
    `watch(infer_chance=...)`); given, it always wins. Known, for a loss that started above it (first `progress_window` losses ≥
    this / `chance_share`), `slow_progress` also warns (1) when the loss fell to the chance level
    and stopped there — which otherwise looks like convergence: its recent level is still at least
    `chance_share` × this and it is not falling steadily (least-squares slope of the last
    3 × `progress_window` losses not `progress_trend` standard errors below zero); from
    `progress_steps` with gradient evidence (decay, dead or saturated units, tiny updates), from
    `progress_unexplained_steps` without (a run can rest at chance before it learns); and (2) when
    after `progress_unexplained_steps` steps its recent level is still above this, however it
    falls. A loss that starts at the chance level is judged as without it. Corpus calibration
    half, chance given: stuck runs warned within 40 steps 87 → 96 of 96, healthy runs warned 2 of
    28 as without it. None (default): the inferred level, where there is one."""
    chance_share: float = 0.9
    """A loss whose recent level (mean of the last 3 × `progress_window` losses, which a
    single-sample loss needs: its median sits below its mean) is at least this fraction of
    `chance_loss` is at chance. The corpus labels a run stuck when its final losses are ≥ 0.9 ×
    the chance level."""

    # ---------------------------------------------------------------- tiny_updates
    tiny_update_ratio: float = 1e-5
    """Warn when a layer's median update ratio ‖Δθ‖/‖θ‖ over `update_window` steps is below
    this. The common rule of thumb (Karpathy, CS231n "Neural Networks Part 3") puts healthy
    training near 1e-3 per step; 1e-5 is two orders of magnitude below it, i.e. the layer
    would need ~1e5 steps to change by its own norm."""
    update_window: int = 20
    """Steps in the median used by tiny_updates (a single skipped or tiny step is normal)."""

    # ---------------------------------------------------------------- large_updates
    large_update_ratio: float = 0.5
    """Warn when ‖Δθ‖/‖θ‖ reaches this on `large_update_steps` consecutive steps: 500× the
    1e-3 rule of thumb, half the layer's weight norm per step. Adam keeps per-element steps
    near the learning rate, so its ratio stays near lr/rms(θ) (≈0.01–0.15 for lr 1e-3–1e-2 at
    PyTorch's default RNN initialisation): far below this. The healthy runs of the labelled
    suite peak at 0.12 (0.09 on two consecutive steps, Adam at 1e-2)."""
    large_update_steps: int = 2
    """Consecutive steps above `large_update_ratio` needed for a warning (one large first
    step of Adam is not a trend). Within the first `progress_window` steps the loss must also
    respond: the latest loss at or above the first one (corpus fresh5 K077, momentum 30× too
    fast, took two steps of 0.6 of its small weights while its loss fell below its start, and
    converged; on the read splits no diverged run lost a warning or lead ≥ 5)."""
    large_update_critical: float = 1.0
    """Critical at once when one step moves a layer by more than its whole weight norm and the
    ratio is not falling (step 0 has no previous step, so it is judged from step 1: Adam on weights
    scaled down 10× moves them by 1.3–4.8× their norm at step 0 and converges, in 3 healthy runs of
    the corpus calibration half)."""
    large_update_growth: float = 1.5
    """Runaway steps: the ratio grew by at least this factor on each of the last 3 steps…"""
    large_update_growth_ratio: float = 0.1
    """…to at least this (100× the 1e-3 rule of thumb): a warning before the ratio reaches
    `large_update_ratio`. A learning-rate warm-up that overshoots makes the step grow
    geometrically (0.05 → 0.11 → 0.17 → 0.46 → 0.72 → 2.1 before a divergence in the corpus);
    healthy warm-ups stay far below 0.1 or grow by less than 1.5× per step once there."""
    large_update_loss_factor: float = 3.0
    """A large step (≥ `large_update_ratio`) followed by a batch whose loss is at least this
    multiple of the median loss before it did damage: warning, even when the ratio is falling
    (Adam at 30× its usual learning rate: 1.8 → 0.68 of the weights while the loss jumped 1.4
    → 29 and diverged three steps later)."""
    weight_growth_steps: int = 3
    """Inflating weights: a layer's weight norm rose on each of the last this many steps…
    (5 until session 6; 3 warns two steps sooner: held-out `269`, AdamW warm-up on weights ×0.1,
    0.487 → 9.65 in 3 steps, NaN at 8, lead 3 → 5; calibration `103` lead 15 → 17. Healthy runs of
    the read splits grow ≤ 6.0× in 3 rising steps, except `K082` (22×, already warned at 5) and
    `150` (34×, not warned: its steps shrink, below).)"""
    weight_growth_factor: float = 10.0
    """…by this factor or more in all: warning (`large_updates`, "the weights are inflating").
    A learning rate far too high for Adam moves every weight by about lr per step, so small
    weights grow step after step while the loss can stay flat, until the activations overflow
    (the corpus run that diverged with no warning: weight norm 0.35 → 10.8 in 5 steps, 5.83 in 3,
    NaN at step 20). Corpus calibration half: healthy runs grow their weights by at most 4.9× in 5
    rising steps (Adam from weights scaled down 10×); the runs that grow 10× or more diverged,
    got stuck or survived a sustained loss explosion. It warns only while the growth runs away:
    this step's ‖Δθ‖ is at least that of `weight_growth_steps` steps earlier (a warm-up that
    overshoots), or the loss is ≥ `large_update_loss_factor` × the first loss. Adam too fast at a
    constant rate takes steps of about the same size, so the weights grow linearly (held-out 150:
    ×47 in 5 steps, ×34 in 3, with ‖Δθ‖ 10.5 → 5.4, loss below 3× its start, converged)."""

    # ---------------------------------------------------------------- norm_spike
    spike_window: int = 20
    """Recent finite steps whose total gradient norms form the baseline."""
    spike_min_history: int = 20
    """Steps of history needed before a norm is judged against its recent median. The first steps are
    noisy: in the labelled suite a healthy Adam LSTM's gradient norm grows 30× over its
    first 10 steps while it leaves its initial plateau. Before that the early rule below applies
    (and step-0 explosions are caught by the absolute rule, by large_updates and by
    temporal_growth, which need no history)."""
    spike_early_history: int = 3
    """From this many steps of history on, a jump is judged even before `spike_min_history`:
    no blind warm-up when the first steps already explode (the exploding demo's 20× jump at
    step 3 was ignored before, and its first alert came one step before NaN)."""
    spike_early_factor: float = 10.0
    """Early rule: a norm ≥ this multiple of the largest norm seen so far. Measured against the
    maximum, not the median, because healthy norms grow fast early (30× over 10 steps, never
    10× in one step in the suite or the corpus calibration half)."""
    spike_persist_factor: float = 3.0
    """A spike is a warning only when it persists on the next step: the norm is still at least
    1/this of the spike, or the next batch's loss is above every loss of the window before the
    spike (the step damaged the model). Not a multiple of the median: a converged run's norms
    wander over orders of magnitude (1e-10 to 1e-5 in the corpus at loss ≈ 0), and one
    misclassified sample there is a 1e5× spike followed by the usual noise. An isolated hard sample
    (batch size 1, plain SGD: one misclassified sample gives a 100× gradient, and the next
    step is back to normal) is `info`. Costs one step of lead time on sudden explosions."""
    spike_loss_factor: float = 4.0
    """An early spike (the early rule above) whose own batch loss is at least this multiple of every
    loss before it is a warning at once (critical at `spike_critical_factor`), without waiting for
    the next step: the batch that made the gradient jump was itself far worse than any before, so
    the model, not one sample, is off (corpus fresh6 `L062`: ×600 the largest norm and a loss 10×
    the largest before at step 4, back to normal at 5, NaN at 9; it was `info`). With such a loss
    jump a spike is judged from one step of history (not `spike_early_history`): fresh2 `G097` (×20
    the norm and ×5.8 the loss at step 1, NaN at 6) and calibration `164` (×430 and ×8 at step 2,
    NaN at 21) were first warned at 2 and 20. Chosen on the read splits (session 6) between the
    largest early jump of a healthy run's loss over every loss before it, 2.9× (fresh `F044` at step
    1, with a norm ×9.75), and the smallest that the diverged runs gained by needed, 5.8× (`G097`);
    3× and 5× give the same figures on every read split but one oscillating run."""
    spike_loss_grad_factor: float = 3.0
    """…and with such a loss jump, an early norm ≥ this multiple of the largest so far is a spike
    (instead of `spike_early_factor`): the loss already says the batch was bad; the gradient has to
    agree, not to jump tenfold. Only from `spike_early_history` steps of history on: after one or two,
    a loss near zero swings by several times from batch to batch (a regression whose outputs start
    near their targets: 0.0025 → 0.019, with the norm ×3.8, at step 1). Calibration `053` (batch-1 regression, momentum: norm ×4.9 and loss ×11
    at step 3, NaN at 8) lead 1 → 5; fresh6 `L128` (×5.3, ×9.7 at 5, NaN at 9) lead 0 → 4, `L126`
    1 → 3, `L081` (its only sign at its divergence step) warned there. No healthy run of the read
    splits changes. Chosen on the read splits (session 6): 2× / 5× (measured, docs/detectors.md)."""
    spike_factor: float = 10.0
    """Warn when the total gradient norm reaches this multiple of the baseline median. An
    order of magnitude is far outside mini-batch noise (healthy suite runs stay within
    3.4×); Pascanu, Mikolov & Bengio (2013) describe explosions as such sudden jumps."""
    spike_over_max: float = 2.0
    """…and at least this multiple of the largest norm in the baseline window, so that a
    history that is itself very noisy (a gradient dominated by a near-zero-mean term)
    does not turn routine fluctuations into jumps."""
    spike_step_factor: float = 3.0
    """A spike below `spike_critical_factor` is only `info` when the step's largest layer update
    ratio stays under this multiple of its recent median: with adaptive optimisers (Adam) a
    gradient jump of 10-12x on a healthy LSTM moved the weights only 1.4-3.4x more than usual
    (7 of 18 healthy runs of the adding problem warned before this rule)."""
    spike_critical_factor: float = 100.0
    """Critical when the jump reaches this multiple of the median (two orders of magnitude)."""
    norm_growth_steps: int = 4
    """Steady growth: the total gradient norm rose on each of this many consecutive steps…"""
    norm_growth_factor: float = 5.0
    """…to at least this multiple of its value before the rise (≈1.5× per step) and to at least
    `spike_factor` × the baseline median: a jump that built up step by step, which the spike
    rule's jump-over-the-maximum test would only see late. Four rises in a row by chance
    (1 in 120 for independent noise) rarely reach 10× the median as well."""
    abs_grad_ratio: float = 1e3
    """Absolute scale, needing no history (so it also works on step 0): warn when a recurrent
    layer's gradient norm is this many times its weight norm. A plain SGD step with any
    learning rate above 1e-3 would then move the layer further than its own norm; healthy
    mean-reduced losses give ratios of 1e-3–1 (≤ 0.4 in the labelled suite), the chaotic-gain
    RNN of the suite 3e4–3e5 at step 0. A loss summed over many elements scales every
    gradient up: raise this for it."""

    # ---------------------------------------------------------------- temporal_decay / temporal_growth
    temporal_min_steps: int = 8
    """Shortest sequence (timesteps) whose profile is analysed."""
    temporal_decay_ratio: float = 1e-3
    """Decay when the per-timestep input gradient of the earliest quarter of the sequence is
    at most this fraction of that of the third quarter (medians). Pascanu et al. (2013): the
    gradient reaching timestep t shrinks like ‖∂h_T/∂h_t‖ ≤ η^(T−t) with η < 1; three orders
    of magnitude means the early inputs get < 0.1 % of the learning signal of recent ones.
    Alone this is `info` (short-memory tasks decay strongly and are fine); with a stalled
    loss it is a `warning`."""
    temporal_growth_ratio: float = 1e2
    """Growth when the earliest quarter's per-timestep input gradient is at least this
    multiple of the third quarter's: the recurrent Jacobians have gain above one
    (Pascanu et al. 2013, condition for explosion). Per-timestep losses (language models)
    only accumulate to about 1/(1−η) ≤ 10× for η ≤ 0.9 and that build-up happens in the last
    quarter, which the comparison leaves out (healthy suite profiles stay below 2)."""
    temporal_growth_critical: float = 1e4
    """Critical growth: four orders of magnitude across half the sequence."""
    temporal_growth_consistency: float = 0.5
    """…and the norm grows going back on at least this share of adjacent timestep pairs of the
    first three quarters: recurrent gain above one grows it at (nearly) every step, whereas a
    packed batch of unsorted variable-length sequences (label at each sequence's last token)
    makes a saw-tooth — each sequence's gradient decays back from its own end, and short
    sequences add peaks at early timesteps, which fooled the quarter-median comparison
    (temporal_growth CRITICAL on healthy packed GRU classifiers, issue #13). Calibration half of
    the corpus: healthy packed runs flagged by the ratio alone grow on ≤ 21 % of the pairs, the
    exploding ones on 54–71 %."""
    temporal_growth_min_grad: float = 1e-6
    """Growth is not judged when the layer's gradient norm is below this fraction of its weight
    norm: a converged run's residual gradient (1e-12 of the weights in a corpus run at loss 0)
    has a profile of rounding noise and cannot blow anything up."""

    # ---------------------------------------------------------------- dead_neurons
    dead_share: float = 0.5
    """Warn when at least this share of a layer's units is dead (|h| < 1e-6 for the whole
    batch: ReLU units stuck at zero) or saturated (|h| ≥ 0.99 in ≥ 90 % of positions of
    tanh), on `dead_probes` consecutive probe steps. Half the layer inactive is far beyond
    the handful of idle units healthy networks carry; such units pass no gradient
    (tanh'(h) ≤ 0.02 at |h| ≥ 0.99, ReLU' = 0). The healthy suite runs show none at all."""
    dead_critical_share: float = 0.9
    """Critical when nearly the whole layer is inactive."""
    dead_probes: int = 2
    """Consecutive probe steps needed (a unit can be idle for one batch by chance)."""

    # ---------------------------------------------------------------- oscillation
    # Judged on log(loss) whenever the window's losses are all positive: mini-batch noise of a
    # loss grows with its level (with a long upper tail for small batches), and a learning rate
    # that is too high makes the loss swing by a factor. Calibration: 420 healthy runs (LSTM/GRU,
    # Adam and SGD at two or three learning rates, batch 8/16/32, char-level LM, regression and
    # the adding problem, 300 steps, 6 seeds, plus the suite's healthy runs) raise nothing; the
    # suite's lr-10 LSTM (and the same run at batch 16) is caught within 39-67 steps.
    oscillation_window: int = 40
    """Recent finite losses judged for oscillation (long enough for two swings of a bouncing
    run, short enough to react within a few dozen steps; at least 3)."""
    oscillation_swing: float = 0.1
    """Smallest swing that counts, relative to the loss: a move by a factor 1 + this (10 %)…"""
    oscillation_noise: float = 3.0
    """…and at least this multiple of the window's median step-to-step change of log(loss), so
    that mini-batch noise (which the 3-step running median used for the swings averages out)
    does not count. Tiny losses have large relative noise; this keeps a converged run quiet.
    (Alone, this swing test passes on 1,372 windows of the healthy runs: small batches give
    skewed noise and Adam's small steps a slow wander; the next two conditions tell those apart.)"""
    oscillation_legs: int = 3
    """Warn when the running median of the window goes up and down by at least one swing
    this many times in alternation (up–down–up or down–up–down) and the window is not
    settling (its second half is not 10 % below its first half)…"""
    oscillation_persistence: float = 0.5
    """…and the swings last several steps: the lag-1 autocorrelation of log(loss) around the
    window's straight trend is at least this. Each step draws a fresh batch, so mini-batch noise
    is independent from step to step (autocorrelation about 0 ± 1/√40 = ±0.16) however large or
    skewed it is, while a step that is too large makes the loss climb for several steps and
    fall back. Healthy windows that pass the swing test stay ≤ 0.49 (≤ 0.34 where their steps
    are also large, see below); the lr-10 LSTM reaches 0.5–0.85 within its first swings…"""
    oscillation_update_ratio: float = 1e-2
    """…and the steps are large enough to overshoot: the median update ratio ‖Δθ‖/‖θ‖ of the
    most-moved watched layer over the window is at least this, 10× the ~1e-3 rule of thumb
    (Karpathy, CS231n). Loss swings while the weights barely move are noise or data, not a
    learning rate that is too high: healthy windows that pass the swing test with persistence
    ≥ 0.4 have ratios ≤ 0.0063; the lr-10 LSTM 0.04–0.16. Adam keeps its ratio near lr/rms(θ)
    (healthy runs up to 0.055 at lr 1e-2), so a brisk Adam run passes this test and the loss
    tests decide. Without any measured update ratio (no watched layer trains) it is skipped."""
    oscillation_converged: float = 0.1
    """An oscillation is only `info` when the window's median loss is at most this fraction of
    the median of the first `progress_window` losses: a loss that fell tenfold or more and swings
    around that low level has converged, and an optimizer with large steps (RMSprop) keeps it
    moving (a corpus regression at 0.03 of its start, swinging ×3, healthy by its raw losses).
    The oscillating runs of the corpus splits read in sessions 4-5 swing at ≥ 0.19 of their start."""

    # ---------------------------------------------------------------- constant_clipping (only when clipping is on)
    constant_clip_window: int = 100
    """Steps with a clip record (`StepStats.clip`) looked at, the latest ones; nothing is said
    before this many exist. 100 steps: long enough that a burst of clipping during a warm-up or
    one bad stretch of data is not "constant". Chosen by hand with the clipping policies (v1),
    not calibrated on the corpus."""
    constant_clip_share: float = 0.5
    """Info when at least this share of those steps were clipped (coefficient below 0.999):
    clipping is meant to catch the rare step that would wreck training, so clipping on most
    steps means the threshold sits inside the ordinary gradient scale. Chosen by hand (v1)."""
    constant_clip_warning_share: float = 0.9
    """Warning when at least this share were clipped…"""
    constant_clip_hard: float = 0.5
    """…and hard: the median coefficient of the clipped steps is at most this (the norm at least
    halved), so the optimizer effectively runs normalised gradient descent with step lr ×
    threshold. Frequent gentle clipping only trims the step a little and stays info. Chosen by
    hand (v1); `tests/test_clipping.py` pins the four cases."""
    constant_clip_cooldown: int = 100
    """Steps before constant_clipping speaks again at the same severity (an escalation from
    info to warning is reported at once). The suite's `cooldown` applies on top of it."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "DetectorConfig":
        """Validate `watch(**options)` and build the config; GradwatchError on bad input."""
        names = cls.option_names()
        unknown = sorted(set(options) - set(names))
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, names, n=1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise GradwatchError(
                f"unknown gradwatch.watch option(s): {', '.join(hints)}. Supported detector options: "
                f"{', '.join(names)}; and watch's own: every, console, clip, skip_nonfinite, history, strict."
            )
        defaults = cls()
        values: dict[str, Any] = {}
        for name, value in options.items():
            values[name] = _check(name, value, getattr(defaults, name))
        return cls(**values)


_AT_LEAST = {"oscillation_window": 3}
"""Integer options whose rule needs more than 1 (the oscillation rule compares step-to-step changes
and a running median over the window: fewer than 3 losses have none)."""


def _check(name: str, value: Any, default: Any) -> Any:
    if default is None and value is None:
        return None
    if name == "disable":
        items = (value,) if isinstance(value, str) else tuple(value or ())
        bad = [s for s in items if s not in SIGNS]
        if bad:
            raise GradwatchError(
                f"gradwatch.watch(disable=...) got unknown sign(s) {bad}; supported: {', '.join(SIGNS)}."
            )
        return items
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GradwatchError(f"gradwatch.watch({name}=...) must be a positive integer, got {value!r}.")
        least = _AT_LEAST.get(name, 1)
        if value < least:
            raise GradwatchError(f"gradwatch.watch({name}=...) must be at least {least}, got {value!r} "
                                 f"(default {default}).")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise GradwatchError(f"gradwatch.watch({name}=...) must be a positive finite number, got {value!r}.")
    return float(value)
