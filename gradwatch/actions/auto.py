"""`clip="auto"`: clipping that needs no tuning, protects from the first step, and stays out of the way.

    >>> gradwatch.watch(model, opt, clip="auto")                # same as clip=gradwatch.actions.Auto()
    >>> gradwatch.watch(model, opt, clip=Auto(max_update=0.01))   # a stricter update bound

The total L2 norm ‖g‖ is clipped (one global coefficient, like clip_grad_norm_) to the smaller
of two thresholds:

1. **Update bound, from step 0** (SGD-like optimizers: `SGD`, `ASGD`). A gradient g moves the
   weights by lr · g, and with momentum μ by lr_eff · g in total over the following steps,
   lr_eff = lr · (1 − dampening) / (1 − μ). The bound keeps that displacement below
   `max_update` = 4% of the weights' own norm:

       ‖lr_eff · g‖₂ ≤ max_update · ‖θ‖₂ · min(1, 3 / P)      (each param group with its own lr_eff)

   lr_eff is the one the schedule is heading for, per param group: the largest of the current
   rate, the rates so far and the base or peak rate a torch scheduler records in the group
   ("initial_lr", OneCycleLR's "max_lr"; `scheduled_lr`). So a warm-up is bounded from step 0 as
   its peak will be, and a decay leaves the gradient threshold where the peak put it: bounded
   steps then shrink with the learning rate, as under a fixed threshold. With the current rate
   the threshold rose in proportion as a schedule decayed it, and a bounded step stayed at
   max_update whatever the schedule said; and early in a warm-up the small rate let through
   gradients 10-30× the peak's threshold, which overshot before the peak. On the warm-up
   overshoot task of `benchmarks/clipping.py` (a development task, 10 seeds): 1.83× the best
   fixed threshold with the current rate, 1.24× with the running maximum alone, 0.94× now.

   P is how many timesteps the gradient travels back through the recurrence per timestep where
   the loss injected it, measured by gradwatch's per-timestep probe in this run's backward passes
   (`gradwatch.actions.propagation`; 1 for a loss at every timestep, ≈ 1-4 for gated cells and
   default-initialised tanh RNNs, 100-200 for an identity-initialised ReLU RNN classifying from
   its last state over T = 150-300). A relative change δ of the recurrent weights is compounded
   over those P steps, so the update must shrink with P. 3 (`free_propagation`) was chosen on
   the IRNN T = 150 calibration task among 1, 3 and 8 (auto's final loss over 10 seeds: 0.158 ±
   0.021 with every step clipped, 0.078 ± 0.010, 0.142 ± 0.065 with one run ending at 0.72; best
   fixed threshold 0.0787 ± 0.013). P is known from the first probe step (step 0) on, is refreshed on
   every probe step (`watch(every=...)`, 10 by default) and stays 1 (no factor) when `auto` runs
   without a monitor's probe (`gradwatch run --clip auto` on a script updating by hand).

   The ratio is dimensionless, so it needs no history: a gradient that explodes on the very
   first step (a high-gain recurrent matrix, a bad init, a learning rate far too high) is cut
   at once; and it follows the loss scale and the learning rate exactly as SGD does (loss ×
   1000 with lr / 1000 gives the same bound). Why 4%: healthy training moves the weights by
   about 0.1% per step (update/weight ratio ≈ 1e-3, the cs231n rule of thumb), i.e. about 1%
   over a momentum-0.9 lifetime, so 4% leaves room for early and aggressive steps; on the classic
   recipe it lands where people tuned by hand: Zaremba et al. (2014)'s medium PTB LSTM (SGD lr 1,
   init U(±0.05), ‖θ‖ ≈ 128 by our count) clipped at 5, this bound gives 0.04 · 128 ≈ 5.1.
   Measured on `benchmarks/clipping.py` (10 seeds; the three values were compared on these
   same tasks): 3%, 4% and 5% give final losses of 1.02 / 1.03 / 1.18 × the best fixed
   threshold on the high-gain RNN, 0.96 / 0.92 / 1.07 × on the too-high learning rate, and clip
   18% / 9% / 6% of the steps of a healthy tanh RNN trained with SGD (lr_eff 0.3).
   Gated networks get `gated_max_update` = 30% instead, when every recurrent module the monitor
   watches is an LSTM, GRU or one of their cells (`observe_recurrent`; any plain RNN, or no
   monitor, keeps 4%). Their state is a gated mix of the old state (GRU: a convex combination of
   values in [−1, 1]; LSTM: c_t = f ⊙ c_{t−1} + i ⊙ g with gates in (0, 1)), so no weight update
   can make the recurrence itself blow up; what a too-large step risks there is an ordinary
   optimisation overshoot, not a gain compounded over the sequence. A GRU warm-up with Nesterov
   momentum (`benchmarks/clipping.py`, development, 10 seeds) trains only with steps of 5-16% of
   ‖θ‖: 4% left it on its plateau at 16× the best fixed threshold; the gated bound at 10 / 20 /
   25 / 30 / 40 / 50% gives 12.2 / 1.41 / 1.12 / 0.97 / 0.83 / 0.83×, while the LSTM and GRU
   with a too-high learning rate give 1.000 / 1.019 / 1.024 / 1.028 / 1.022 / 1.036× and
   1.010 / 1.034 / 1.047 / 1.056 / 1.060 / 1.066× and the word LM ≤ 1.008×: 30% is the smallest
   that trains the warm-up. An ungated RNN cannot take that: the tanh warm-up overshoot and the
   adding problem need ≤ 4-10%.
   Two more limits for gated networks (session 6, third round): ‖θ‖ is the running minimum of the
   measured norms (reset when the parameters change), so weights that inflate under too-large steps
   do not loosen the bound with them; and a single step is capped at `gated_max_step` = 5% of ‖θ‖
   (‖lr · g‖, binding below momentum 0.83, plain SGD included): momentum adds up the steps of a
   steady descent but cancels those that oscillate, so an overshoot is set by the single step. A GRU
   LM at plain SGD lr 30 (held-out r4) took steps of 20-30% of ‖θ‖ while ‖θ‖ grew 19 → 54 and
   diverged on 10/10 seeds; with the anchor alone it plateaued at 1.81 (a sawtooth loss), with both
   it reaches 1.27. The Nesterov GRU warm-up (m 0.9) is untouched by the cap.
   ‖θ‖ is re-measured on steps 0, 1, 3, 7, 15, 31, then every `refresh` steps (weights change
   slowly: at most 4% per momentum lifetime under this bound). Each weight matrix counts as at least the
   norm of PyTorch's default `nn.Linear` init of its shape, √(rows/3), so that zero-initialised
   layers can start moving.
   Scale-invariant optimizers (Adam, AdamW, RMSprop, Adagrad, Adadelta, …) get no update bound:
   their step hardly depends on the gradient's scale (Adam's first step is ±lr per coordinate
   however large the gradient), so a first-step explosion cannot throw their weights away, and
   a bound from the weights would only clip healthy runs that use a large loss scale.

   **The loss as feedback** (`actions.loss_feedback`; ungated networks, SGD-like optimizers, a loss
   fed with `monitor.step(loss)`): the bound above gets one more factor,

       ‖lr_eff · g‖₂ ≤ max_update · ‖θ‖₂ · min(1, k · min(1, 3 / P)),

   with k = 1 at first and, after each block of `loss_window` = 10 steps that auto mostly clipped
   (the bound, not the data, set the step size), k × `loss_loosen` = 1.5 when the block's mean loss
   is below the best of the `loss_memory` = 3 blocks before it and k × `loss_tighten` = 0.7
   otherwise, within [`loss_lowest`, `loss_highest`] = [1/16, 4]. So big bounded steps that make no progress shrink geometrically (an IRNN under the
   plain bound sat at chance where a 4× smaller fixed threshold trains it), while steady progress
   gives back what P took: at most up to the plain bound (the min(1, …)), since P, measured
   before any update, over-tightens an IRNN once its recurrence amplifies (P of 3,000-6,000 at
   T = 300, a threshold 4-7× below the best fixed one). Blocks auto mostly did not clip never
   move k, so healthy runs, clipped on ≤ 1% of their steps, are untouched. The losses are the
   monitor's read-back of the step records (host floats; on CUDA a few steps late), so nothing
   is synchronised; without a loss (no `monitor.step(loss)`, actions without a monitor, several
   torch.distributed ranks) k stays 1 and auto is as before. Gated networks keep their bound.
   Constants chosen on the calibration and development tasks of `benchmarks/clipping.py`
   (docs/clipping.md, "Session 6"): k ≤ 1 (tighten only) left the IRNN T = 300 at 1.53× the best
   fixed threshold, loosening beyond the plain bound (k up to 4 on the bound itself) took the tanh
   warm-up overshoot from 0.94× to 1.46×. The yardstick is the best of the last 3 blocks, not the
   best ever (session 7): an IRNN whose momentum carried bounded steps past a stable recurrence
   (development, "IRNN T=100 + momentum" seed 4) could not beat its pre-overshoot best again, k
   ratcheted to 1/16 and the run ended at a held-out loss of 1.25 (0.71 at the start); now 0.125.

   **The alignment as feedback** (`actions.alignment`; ungated networks, SGD-like optimizers, under a
   monitor, which tells auto the watched modules' hidden-to-hidden weights; session 7): one more
   factor c on the bound where P does not tighten it (P ≤ 3 or unknown),

       ‖lr_eff · g‖₂ ≤ max_update · ‖θ‖₂ · min(1, k · min(1, 3 / P)) · c,

   driven by a = cos(g_t, −Δθ_{t−1}) on the recurrent weights, the sign of the hypergradient of the
   loss with respect to the step size (Baydin et al. 2018; Jacobs 1988's delta-bar-delta): a < 0, the
   new gradient points back along the last update, the step overshot. Measured on one step in
   `align_every` = 10 (the weights copied on the step before), so that the call stays near
   clip_grad_norm_'s cost; after each block of `align_window` = 10 steps that auto mostly clipped,
   c × `align_tighten` = 0.7 when the block's a is below `align_below` = −0.3, down to
   `align_lowest` = 1/16. c only tightens (a decay on detected overshoot, as Chee & Toulis 2018 decay
   the rate on a detected stationary phase; giving it back ×1.5 on blocks above +0.3 did worse). The default-
   initialised vanilla RNNs with a too-high learning rate (held-out r4) bounce across a valley under
   the plain bound (a of −0.2 to −0.95 once clipped) where their best fixed thresholds take 2-7× smaller
   steps; every gated network is untouched. Where P > 3 (the IRNN rows) c is a second factor, tightened
   only by blocks below `align_below_propagating` = −0.8 (branch tune): a strong anti-alignment is the
   period-2 bounce of "IRNN adding T=200" seeds 8 and 9 under a bound that binds every step, which only a
   shrinking bound damps (2/10 diverged → 0/10); −0.3 there cost IRNN T=300 what the loss feedback gave
   it. Without a monitor (no weights) c stays 1. Figures: docs/clipping.md, "Session 7".

2. **Spike bound, from step 1** (every optimizer). m and s², the exponential moving mean and
   variance of log(clipped norm) (decay `alpha` = 0.97 as in ZClip, ~33 steps; a plain mean
   over the first steps), give the threshold exp(m + `spike` · s) with spike = 3. Working on
   logs makes the rule scale-free and matches the multiplicative way gradient norms fluctuate.
   s is held in [0.2, 0.5], so a spike is a norm 1.82× to 4.5× the typical one, and s = 0.5
   during the first `warmup` = 20 steps while the variance is unknown. Why 20: a standard
   deviation estimated from n samples is off by about 1/√(2n), 22% after 10 steps, and a 3 s
   threshold with s 22% too small is a 2.3 s one (about 1% of Gaussian steps above it, more
   with heavier tails); after 20 steps the error is 16%. With 10, `benchmarks/clipping.py`'s
   healthy LSTM + Adam run (a calibration task) was clipped at steps 14-15 of 3 of its 10
   seeds; with 20 (or 30) on none, and no exploding calibration task changed. The statistics are fed the
   clipped norm: a sustained explosion cannot drag the threshold up faster than about
   exp((1 − alpha) · spike · 0.5) = +4.6% per step, while a genuine change of gradient scale is
   followed within tens of steps. Non-finite norms leave the statistics as they were.
   Why a floor of 0.2 (1.82×): with batch size 1 the log norm varies by less than 0.1 from step
   to step, but with heavy tails: the healthy batch-1 LSTM of `benchmarks/clipping.py` (a
   development task) was clipped on 1.4% of its steps with the floor at 0.1 (norms 1.1-1.3× a
   1.35× threshold, ×0.82-0.99), 0.6% at 0.15, none at 0.2 or 0.25; no exploding calibration or
   development task changed by more than its standard error (the ReLU RNN: 0.794 → 0.790).
   Scale-invariant optimizers (no update bound) get a floor of `scale_invariant_min_std` = 0.3
   (2.46×): a 2× norm enters Adam's m by 10% and its v by 0.3%, so it hardly changes a step, while
   the batch-1 LSTM + Adam (development) was clipped on 1.2% of its steps at ~2× its typical norm
   with the 0.2 floor; 0.3 and 0.4 both clip none of it (nor of the calibration LSTM + Adam), and a
   100× spike is still cut to 2.46× the typical norm.
   They also get a cap of `scale_invariant_max_std` = 1.0 instead of 0.5 (session 7): a threshold of up
   to exp(3 · 1.0) = 20× the typical norm where the run's own norms spread that widely. A spike of r×
   enters Adam's second moment (β₂ = 0.999) by (1 − β₂) · r², +40% at 20×, and its step is bounded per
   coordinate whatever the gradient, so a 20× norm changes an Adam run little, while the held-out
   "GRU classifier + Adam" (r6: a sum-sign classifier whose norms spread from 0.1 to 6.7 within 20
   steps as it learns, a log std of ~1.0 once past the warm-up) was clipped on 19.3% of its steps at
   4.5× and ended 1.06× its unclipped loss. With 0.8 / 1.0 / 1.2 (10 seeds): 3.7 / 1.3 / 1.1% of
   steps clipped, 1.00 / 1.03 / 1.02× unclipped (0.1334 ± 0.0042); what is left is steps 19-24, where
   the warm-up ends as the norms rise. No exploding task of the benchmark uses Adam, RMSprop or
   another scale-invariant optimizer, so none of them changed; a steady run (s at its 0.3 floor) still
   has a 100× spike cut to 2.46×.

What it costs, on top of clip_grad_norm_'s norm pass and in-place multiply: where the
statistics live depends on where the gradients live.

- CPU gradients: m, s² and the thresholds are Python floats. Reading a CPU tensor is a memory
  load, not a wait for a device, and a float operation costs a fraction of the dispatch of a 0-d
  tensor op (~1.5 µs each). The whole call costs about as much as clip_grad_norm_ (0.81–0.93×
  on a 4.4k-parameter model, 1.00–1.04× on 5.4M and 21.7M parameters: `benchmarks/clipping.py`).
- Any other device (CUDA): 0-d float32 tensors on that device, ~12 scalar kernels per step,
  and no host-device sync; the coefficient is clamped instead of branched on, as in
  clip_grad_norm_; its cost next to clip_grad_norm_ on a GPU has not been measured yet. The two
  representations give the same thresholds to float32 precision (both tested against one
  reference, and against each other through NaN and Inf steps).

Plus a weight-norm pass every `refresh` steps (SGD-like optimizers only).

Without an optimizer (`gradwatch run --clip auto` on a script that updates its parameters by
hand) there is no learning rate to read: only the spike bound applies.

Benchmark (`python benchmarks/clipping.py`: 35 exploding tasks and 12 healthy runs × 10 seeds,
docs/clipping.md has the tables, the splits and what each target reached; session 7): no divergence
on any exploding task; within 10% of the grid's best fixed threshold on 25 of the 33 tasks where one
trains (calibration tasks all within 3%, gated networks 0.98-1.05×); not met on
default-initialised tanh/ReLU RNNs with a too-high learning rate (1.11-3.25×: the update bound's
inputs do not tell their best step sizes apart) and, within one standard error, on three IRNN rows.
Held-out r6, read once: 0 divergences, 6 of 8 within 10%. Healthy runs: 10 of 12 clipped on 0-0.2%
of steps with the final loss unchanged; a tanh char LM at SGD lr 0.3 m 0.9, whose natural step is
5-6% of ‖θ‖, is clipped throughout (1.03×).
Also tried in round 2 and rejected: relaxing the update bound geometrically while the norm does not
grow (reset otherwise): the runs with a too-high learning rate look as calm as the GRU warm-up
under the bound and degrade by 3-9% before the warm-up escapes its plateau.

Tried and rejected on the way (docs/clipping.md, "The IRNN: how far the gradient travels back in
time"): a T-scaled bound
on the recurrent weights, the same with a spectral-radius horizon, per-tensor bounds, a smaller
`max_update`, a controller that shrinks the bound when ‖g‖ jumps between steps (the IRNN's norm
jumps by e³-e⁶ at the 90th percentile between batches even at negligible updates, so the bound
ratchets down), the plain ratio of
the two profiles' spans (Σ/max; the IRNN's profile grows back in time as it learns, the ratio
falls to ~25 and late updates oscillate), and its running maximum.
"""

from __future__ import annotations

import array
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor

from ..errors import GradwatchError
from ..stats.tensor_stats import stack_scalars
from ..torch_compat import foreach_mul_, foreach_norm
from .batch import GradBatch, clip_record, scale_
from .alignment import AlignmentFeedback
from .loss_feedback import CLIPPED, LossFeedback
from .propagation import Profiles, propagation_on_device, propagation_on_host

__all__ = ["Auto", "effective_lr", "SGD_LIKE", "GATED"]

SGD_LIKE: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.SGD, torch.optim.ASGD)
"""Optimizers whose step is proportional to the gradient (lr · g): the update bound applies to them."""
GATED: tuple[type[torch.nn.Module], ...] = (torch.nn.LSTM, torch.nn.GRU, torch.nn.LSTMCell, torch.nn.GRUCell)
"""Recurrent modules whose state is a gated (convex or additive) mix of the old state: `Auto.gated_max_update`."""


@dataclass(frozen=True)
class Auto:
    """The recommended policy when you do not want to tune a threshold (`clip="auto"`).

        >>> gradwatch.watch(model, opt, clip="auto")

    See the module docstring for the algorithm and the reasons behind each default.
    """

    max_update: float = 0.04
    """Largest ‖lr_eff · g‖ / ‖θ‖ allowed for SGD-like optimizers (4% of the weights' norm)."""
    gated_max_update: float = 0.3
    """The same when every recurrent module gradwatch watches is gated (LSTM, GRU and their cells):
    their state cannot be blown up by the weights, so only optimisation overshoot is bounded."""
    gated_max_step: float = 0.05
    """For gated networks, also the largest ‖lr · g‖ / ‖θ‖ of one step (5%): momentum adds up the steps
    of a steady descent (lr_eff) but cancels those that oscillate across a valley, so an overshoot is
    set by the single step. Binds only when lr_eff < lr · gated_max_update / gated_max_step (momentum
    below 0.83, plain SGD included)."""
    free_propagation: float = 3.0
    """Timesteps the gradient may travel back per timestep where the loss injected it before the
    update bound shrinks: the bound is max_update · min(1, free_propagation / P) (`actions.propagation`)."""
    spike: float = 3.0
    """Clip norms above exp(m + spike · s), m and s the EMA mean and std of log norms."""
    alpha: float = 0.97
    """EMA decay of the log-norm statistics (ZClip's default)."""
    min_std: float = 0.2
    """Lower bound on s: the spike threshold is at least exp(spike · min_std) × typical (1.82×)."""
    scale_invariant_min_std: float = 0.3
    """The same for scale-invariant optimizers (Adam, RMSprop, …: no update bound), whose step a
    moderate spike barely changes: at least exp(spike · 0.3) = 2.46× typical."""
    max_std: float = 0.5
    """Upper bound on s (and s during warm-up): the threshold is at most exp(spike · max_std) × typical (4.5×)."""
    scale_invariant_max_std: float = 1.0
    """The same for scale-invariant optimizers (Adam, RMSprop, …), whose step is bounded per coordinate
    whatever the gradient: at most exp(spike · 1.0) = 20× typical, a spike that enters Adam's v
    (β₂ = 0.999) by +40%. A run whose own norms spread by e^±1 (a classifier learning) is not clipped."""
    warmup: int = 20
    """Steps during which s is fixed at max_std (the variance of ~10 log norms is too unsure for a 3 s rule)."""
    refresh: int = 50
    """Re-measure ‖θ‖ every this many steps (after steps 0, 1, 3, 7, 15, 31)."""
    loss_window: int = 10
    """Steps per block of the loss feedback (`actions.loss_feedback`; ungated networks with a loss fed only)."""
    loss_tighten: float = 0.7
    """Factor on the update bound after a mostly-clipped block whose mean loss is no new best."""
    loss_loosen: float = 1.5
    """Factor on the update bound after a mostly-clipped block whose mean loss is a new best."""
    loss_lowest: float = 1 / 16
    """Smallest factor the loss feedback may put on the update bound."""
    loss_highest: float = 4.0
    """Largest factor the loss feedback may put on the update bound."""
    loss_memory: int = 3
    """Blocks of the loss feedback whose best mean a block must beat to count as progress (the last 3,
    not every block so far: a best that an overshoot lost must not hold the bound down for good)."""
    align_window: int = 10
    """Steps per block of the alignment feedback."""
    align_every: int = 10
    """The alignment feedback (`actions.alignment`; ungated networks, SGD-like optimizers) measures
    cos(g_t, −Δθ_{t−1}) on one step in this many."""
    align_below: float = -0.3
    """A mostly-clipped block whose mean alignment is below this tightens the update bound."""
    align_below_propagating: float | None = -0.8
    """Where P tightens the bound (P > `free_propagation`: an IRNN), only a mostly-clipped block whose
    mean alignment is below this tightens it, with its own factor (None: no alignment factor there).
    Strong anti-alignment is a period-2 bounce across a valley under a bound that binds every step
    ("IRNN adding T=200", seeds 8 and 9: blocks of −0.9 to −1), which a bound that does not shrink
    cannot damp; −0.3 there cost IRNN T=300 what the loss feedback gave it."""
    align_tighten: float = 0.7
    """Factor on the update bound after a mostly-clipped block that overshot (mean alignment below `align_below`)."""
    align_lowest: float = 1 / 16
    """Smallest factor the alignment feedback may put on the update bound."""
    name: ClassVar[str] = "auto"

    def __post_init__(self) -> None:
        for field_name in ("max_update", "gated_max_update", "gated_max_step", "free_propagation", "spike", "min_std", "max_std",
                           "scale_invariant_min_std", "scale_invariant_max_std", "loss_tighten", "loss_loosen", "loss_lowest", "loss_highest"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise GradwatchError(f"gradwatch.actions.Auto({field_name}=...) must be a positive finite number, got {value!r}.")
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 1):
            raise GradwatchError(f"gradwatch.actions.Auto(alpha=...) must be in (0, 1), got {self.alpha!r}.")
        for field_name, cap in (("min_std", "max_std"), ("scale_invariant_min_std", "scale_invariant_max_std")):
            if getattr(self, field_name) > getattr(self, cap):
                raise GradwatchError(f"gradwatch.actions.Auto: {field_name} ({getattr(self, field_name)}) must not "
                                     f"exceed {cap} ({getattr(self, cap)}).")
        if not self.loss_lowest <= 1.0 <= self.loss_highest:
            raise GradwatchError(f"gradwatch.actions.Auto: loss_lowest ({self.loss_lowest}) must be at most 1 and "
                                 f"loss_highest ({self.loss_highest}) at least 1 (the feedback starts at 1).")
        self._check_alignment()
        for field_name in ("warmup", "refresh", "loss_window", "loss_memory", "align_window", "align_every"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GradwatchError(f"gradwatch.actions.Auto({field_name}=...) must be a positive integer, got {value!r}.")

    def _check_alignment(self) -> None:
        for field_name in ("align_below", "align_below_propagating"):
            value = getattr(self, field_name)
            if value is None and field_name == "align_below_propagating":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 < value < 1.0:
                raise GradwatchError(f"gradwatch.actions.Auto({field_name}=...) is a cosine: it must be in (-1, 1), "
                                     f"got {value!r}.")
        for field_name in ("align_tighten", "align_lowest"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1.0:
                raise GradwatchError(f"gradwatch.actions.Auto({field_name}=...) must be in (0, 1] (the alignment "
                                     f"factor starts at 1 and only tightens), got {value!r}.")

    def make(self) -> "_AutoClipper":
        return _AutoClipper(self)


def effective_lr(optimizer: torch.optim.Optimizer, group: dict[str, Any], *, planned: bool = False) -> float:
    """How far one gradient eventually moves the weights per unit of gradient; 0 for scale-invariant optimizers.

    `planned`: with the learning rate a torch scheduler is heading for or started from where that
    is larger than the current one (`scheduled_lr`), instead of the current one.
    Read on the host every step (a scheduler may change it). A learning rate held as a CUDA tensor
    would cost a sync here; the usual float (or CPU tensor) costs nothing.
    """
    if not isinstance(optimizer, SGD_LIKE):
        return 0.0
    lr = scheduled_lr(group) if planned else float(group["lr"])
    momentum = float(group.get("momentum", 0.0) or 0.0)
    if 0 < momentum < 1:
        lr *= (1.0 - float(group.get("dampening", 0.0) or 0.0)) / (1.0 - momentum)
    return lr


def scheduled_lr(group: dict[str, Any]) -> float:
    """The largest of the group's learning rate and the rates torch's schedulers record in it: the
    base rate ("initial_lr": LambdaLR, LinearLR, CosineAnnealingLR, SequentialLR, … set it to the
    rate they scale, the peak of a warm-up) and OneCycleLR's peak ("max_lr")."""
    planned = float(group["lr"])
    for key in ("initial_lr", "max_lr"):
        value = group.get(key)
        if isinstance(value, (int, float, Tensor)) and not isinstance(value, bool):
            planned = max(planned, float(value))
    return planned


def _on_device(values: list[float], device: torch.device) -> Tensor:
    """A float32 vector from host numbers, copied without making the host wait (pinned memory on CUDA)."""
    host = torch.tensor(values, dtype=torch.float32)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def _floor(p: Tensor) -> float:
    """Norm of PyTorch's default nn.Linear init for a matrix of this shape (√(rows/3)); 0 for vectors."""
    return math.sqrt(p.shape[0] / 3.0) if p.ndim >= 2 else 0.0


class _UpdateBound:
    """The update bound's inputs: ‖θ‖ (re-measured on steps 0, 1, 3, 7, 15, 31, then every `refresh`
    steps, and whenever the set of parameters changes) and the learning rates (re-read every step:
    a scheduler may change them at any time, which costs no weight pass).

    `limit` (0-d) is the largest allowed total gradient norm when every parameter is bounded with
    one shared lr_eff; otherwise `weights` (per gradient, in `batch.norms` order) holds
    lr_eff² / ‖θ‖² and the threshold is max_update · ‖g‖ / √(Σ weight · ‖g_i‖²).
    """

    def __init__(self, max_update: float, refresh: int) -> None:
        self.max_update, self.refresh = max_update, refresh
        """max_update can change (`set_max_update`) when the monitor tells which recurrent modules it watches."""
        self.anchored = False
        """Gated networks (`set_max_update(..., anchored=True)`): ‖θ‖ is the smallest measured so far (`reference`)."""
        self.max_step: float | None = None
        """Gated networks: the largest ‖lr · g‖ / ‖θ‖ of one step (`Auto.gated_max_step`); None: no such cap."""
        self.reference: Tensor | None = None
        """The running minimum of the measured ‖θ‖ since the parameters last changed (anchored bounds only)."""
        self.structure: tuple[object, ...] = ()
        self.lrs_key: tuple[float, ...] = ()
        self.peak_lrs: tuple[float, ...] = ()
        """Per param group, the largest planned lr_eff (`effective_lr(..., planned=True)`) seen since the
        parameters last changed: the bound uses it, not the current one. With the current one, a
        learning rate decayed by a schedule loosened the gradient threshold in proportion
        (‖lr_eff · g‖ ≤ max_update · ‖θ‖), so every step the bound clipped had the same size whatever
        the schedule said: the decay was undone."""
        self.age = 0
        self.interval = 1
        self.theta: Tensor | None = None
        self.group_of: list[int] = []
        """For each gradient in `batch.norms` order, the index of its param group (flattened)."""
        self.limit: Tensor | None = None
        self.weights: Tensor | None = None
        self.scale_invariant = False
        """Every param group belongs to a scale-invariant optimizer (Adam, RMSprop, …; not: no optimizer at all)."""

    @property
    def active(self) -> bool:
        return self.limit is not None or self.weights is not None

    def set_max_update(self, max_update: float, *, anchored: bool = False, max_step: float | None = None) -> None:
        """Use this bound from the next `update` on (the limits are recomputed then, on the host);
        `anchored`: from the next weight measurement on, ‖θ‖ is the running minimum of the measured norms;
        `max_step`: also bound a single step, ‖lr · g‖ ≤ max_step · ‖θ‖."""
        if max_update != self.max_update or max_step != self.max_step:
            self.max_update, self.max_step, self.lrs_key = max_update, max_step, ()
        if anchored != self.anchored:
            self.anchored, self.reference = anchored, None

    def _measure(self, batch: GradBatch, group_lrs: tuple[float, ...], device: torch.device) -> None:
        if not any(lr > 0 for lr in group_lrs):  # scale-invariant optimizers, or none (updates by hand)
            self.theta, self.group_of = None, []
            return
        group_index: dict[int, int] = {}
        flat = 0
        for opt in batch.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    group_index.setdefault(id(p), flat)
                flat += 1
        position = {id(g): i for i, g in enumerate(batch.grads)}
        ordered = [batch.params[position[id(g)]] for group in batch.groups for g in group]  # norms order
        self.group_of = [group_index[id(p)] for p in ordered]
        bounded = [p.detach() for p, gi in zip(ordered, self.group_of) if group_lrs[gi] > 0]
        if not bounded:
            self.theta = None
            return
        w_norms = stack_scalars(foreach_norm(bounded), dtype=torch.float32, device=device)
        floors = _on_device([_floor(p) for p in bounded], device)
        theta = torch.maximum(w_norms, floors).square().sum().sqrt()
        if self.anchored:  # a weight norm inflating under too-large steps must not loosen the bound with it
            same = self.reference is not None and self.reference.device == theta.device
            self.reference = torch.minimum(self.reference, theta) if same and self.reference is not None else theta
            theta = self.reference
        self.theta = theta

    def _bounding_lr(self, optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> float:
        """lr_eff (planned), or where a single-step cap is set and tighter, lr · max_update / max_step:
        ‖lr_b · g‖ ≤ max_update · ‖θ‖ then bounds both the effective update and the single step."""
        lr_eff = effective_lr(optimizer, group, planned=True)
        if lr_eff > 0 and self.max_step is not None:
            lr_eff = max(lr_eff, scheduled_lr(group) * self.max_update / self.max_step)
        return lr_eff

    def update(self, batch: GradBatch, device: torch.device) -> None:
        """Called once per step before `threshold`; host-side bookkeeping plus, when due, one weight pass."""
        current = tuple(self._bounding_lr(opt, g) for opt in batch.optimizers for g in opt.param_groups)
        self.scale_invariant = bool(current) and not any(lr > 0 for lr in current)
        structure = (tuple(lr > 0 for lr in current), len(batch.params), id(batch.params[0]), id(batch.params[-1]))
        if structure != self.structure:
            self.structure, self.age, self.interval = structure, 0, 1
            self.reference = None
            self.peak_lrs = current
        else:  # a decaying learning rate keeps the gradient threshold its peak gave (see `peak_lrs`)
            self.peak_lrs = tuple(max(peak, lr) for peak, lr in zip(self.peak_lrs, current))
        group_lrs = self.peak_lrs
        if self.age == 0:
            self._measure(batch, group_lrs, device)
            self.lrs_key = ()
        self.age += 1
        if self.age >= self.interval:
            self.age, self.interval = 0, min(2 * self.interval, self.refresh)
        if group_lrs == self.lrs_key:
            return
        self.lrs_key = group_lrs
        self.limit = self.weights = None
        if self.theta is None:
            return
        lrs = [group_lrs[gi] for gi in self.group_of]
        if len(set(lrs)) == 1:
            self.limit = self.max_update * self.theta / lrs[0]
        else:
            self.weights = _on_device([lr * lr for lr in lrs], device) / self.theta.square()

    def threshold(self, norms: Tensor, total: Tensor) -> Tensor:
        """The largest allowed total norm for this step's gradients."""
        if self.limit is not None:
            return self.limit
        assert self.weights is not None
        return self.max_update * total / (self.weights * norms.square()).sum().sqrt()


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf


def _keep(cfg: Auto, t: int) -> float:
    """Weight of the old statistics when the t-th norm arrives: 0 at first, then a plain mean
    (t / (t + 1), the bias correction) until it reaches the EMA decay `alpha`."""
    return 0.0 if t == 0 else min(cfg.alpha, t / (t + 1.0))


class _HostLogStats:
    """EMA mean and variance of log(clipped norm) as Python floats, and the spike threshold they give.

    Used when the gradients live in host memory (CPU), where reading a 0-d tensor is not a sync
    and float arithmetic costs a fraction of a 0-d tensor op's dispatch. The same numbers as
    `_DeviceLogStats` (tested against one reference), in float64 instead of float32.
    """

    def __init__(self, cfg: Auto) -> None:
        self.cfg, self.t = cfg, 0
        self.min_std, self.max_std = cfg.min_std, cfg.max_std
        """cfg.min_std and cfg.max_std, or their scale_invariant_ versions when every optimizer is
        scale-invariant (set by the clipper)."""
        self.mean = self.var = 0.0
        self.limit = math.inf

    def feed(self, clipped: float) -> None:
        cfg, t = self.cfg, self.t
        keep = _keep(cfg, t)
        # A non-finite norm (or a zero one, whose log is -inf) leaves the mean as it is.
        dev = math.log(clipped) - self.mean if 0.0 < clipped < math.inf else 0.0
        self.mean += (1.0 - keep) * dev
        self.var = keep * (self.var + (1.0 - keep) * dev * dev)
        std = min(max(math.sqrt(self.var), self.min_std), self.max_std) if t + 1 >= cfg.warmup else self.max_std
        self.limit = _exp(self.mean + cfg.spike * std)
        self.t += 1


class _DeviceLogStats:
    """The same statistics as `_HostLogStats`, as 0-d float32 tensors on the gradients' device:
    about ten scalar kernels per step, and no host-device sync (CUDA)."""

    def __init__(self, cfg: Auto, device: torch.device) -> None:
        self.cfg, self.t = cfg, 0
        self.min_std, self.max_std = cfg.min_std, cfg.max_std
        self.mean = torch.zeros((), device=device)
        self.var = torch.zeros((), device=device)
        self.limit = torch.full((), math.inf, device=device)

    def feed(self, clipped: Tensor) -> None:
        cfg, t = self.cfg, self.t
        keep = _keep(cfg, t)
        dev = torch.nan_to_num(clipped.log() - self.mean, nan=0.0, posinf=0.0, neginf=0.0)
        self.mean = torch.add(self.mean, dev, alpha=1.0 - keep)
        self.var = torch.addcmul(self.var, dev, dev, value=1.0 - keep).mul_(keep)
        if t + 1 >= cfg.warmup:
            std = self.var.sqrt().clamp_(self.min_std, self.max_std)
            self.limit = torch.add(self.mean, std, alpha=cfg.spike).exp_()
        else:
            self.limit = torch.exp(self.mean + cfg.spike * self.max_std)
        self.t += 1


class _AutoClipper:
    name = Auto.name

    def __init__(self, cfg: Auto, *, host: bool | None = None) -> None:
        self.cfg = cfg
        self.host = host
        """Keep the statistics as Python floats (True), device tensors (False), or decide from the
        gradients' device: floats for CPU, tensors elsewhere (None, the default)."""
        self.max_update = cfg.max_update
        """cfg.max_update, or cfg.gated_max_update once the monitor said every watched recurrent module is gated."""
        self.bound = _UpdateBound(self.max_update, cfg.refresh)
        self.stats: _HostLogStats | _DeviceLogStats | None = None
        self.device: torch.device | None = None
        self.propagation: Tensor | float | None = None
        """The last P measured by the monitor's probe (`observe_profiles`): a float when the statistics
        are host floats, a 0-d device tensor otherwise; None: not known (no factor)."""
        self.propagation_failed = False
        """Set when reading P from the monitor failed once (`actions.propagation.feed_propagation`): no more P."""
        self.gated = False
        """The monitor said every watched recurrent module is gated (`observe_recurrent`): no loss feedback."""
        self.feedback = self._new_feedback()
        self.loss_feedback_failed = False
        """Set when feeding the loss failed once (`actions.loss_feedback.feed_loss`): the factor stays where it is."""
        self.alignment = self._new_alignment()
        self.alignment_failed = False
        """Set when the alignment feedback failed once (`_observe_alignment`): it stays off (factor 1)."""

    def _new_alignment(self) -> AlignmentFeedback:
        cfg = self.cfg
        return AlignmentFeedback(window=cfg.align_window, every=cfg.align_every, below=cfg.align_below,
                                 tighten=cfg.align_tighten, lowest=cfg.align_lowest,
                                 strong_below=cfg.align_below_propagating)

    def _new_feedback(self) -> LossFeedback:
        cfg = self.cfg
        return LossFeedback(window=cfg.loss_window, tighten=cfg.loss_tighten, loosen=cfg.loss_loosen,
                            lowest=cfg.loss_lowest, highest=cfg.loss_highest, memory=cfg.loss_memory)

    def observe_recurrent(self, modules: Sequence[type[torch.nn.Module]], weights: Sequence[Tensor] = ()) -> None:
        """Take the classes of the recurrent modules the monitor watches (on `watch()` and whenever
        the set changes): the looser `gated_max_update` applies when there are some and all are gated.
        Without a monitor (actions built alone, `gradwatch run` on a hand-written update) nothing is
        known and `max_update` applies. `weights`: their hidden-to-hidden matrices, on which the
        alignment feedback measures (`actions.alignment`; ungated networks only)."""
        gated = bool(modules) and all(issubclass(m, GATED) for m in modules)
        self.max_update = self.cfg.gated_max_update if gated else self.cfg.max_update
        self.bound.set_max_update(self.max_update, anchored=gated, max_step=self.cfg.gated_max_step if gated else None)
        if gated != self.gated:
            self.gated, self.feedback, self.alignment = gated, self._new_feedback(), self._new_alignment()
        self.alignment.use(() if gated or self.alignment_failed else weights)

    def observe_loss(self, loss: float | None, clipped: bool) -> None:
        """Take one step's loss, already on the host (the monitor's read-back), and whether that step
        was clipped: the loss feedback on the update bound (`actions.loss_feedback`). Gated networks
        (`observe_recurrent`) keep their bound as it is."""
        if not self.gated:
            self.feedback.observe(loss, clipped)

    def observe_profiles(self, pairs: Profiles) -> None:
        """Take this probe step's per-timestep gradient profiles and keep their P (computed where
        the statistics live: as a float for CPU gradients, on the device otherwise, never read)."""
        on_host = self.host if self.host is not None else pairs[0][0].device.type == "cpu"
        p = propagation_on_host(pairs) if on_host else propagation_on_device(pairs)
        if p is not None:
            self.propagation = p

    def clip_(self, batch: GradBatch) -> Tensor:
        norm = batch.total_norm()
        if norm.device != self.device:  # first call, or the model moved: start afresh on the new device
            self.device = norm.device
            on_host = self.host if self.host is not None else norm.device.type == "cpu"
            self.stats = _HostLogStats(self.cfg) if on_host else _DeviceLogStats(self.cfg, norm.device)
            self.bound = _UpdateBound(self.max_update, self.cfg.refresh)
            self.bound.set_max_update(self.max_update, anchored=self.gated,
                                      max_step=self.cfg.gated_max_step if self.gated else None)
        self.bound.update(batch, norm.device)
        assert self.stats is not None
        cfg = self.cfg
        if self.bound.scale_invariant:
            self.stats.min_std, self.stats.max_std = cfg.scale_invariant_min_std, cfg.scale_invariant_max_std
        else:
            self.stats.min_std, self.stats.max_std = cfg.min_std, cfg.max_std
        if isinstance(self.stats, _HostLogStats):
            return self._clip_on_host(batch, norm, self.stats)
        assert isinstance(self.stats, _DeviceLogStats)
        return self._clip_on_device(batch, norm, self.stats)

    def _observe_alignment(self, batch: GradBatch, clipped: Tensor | bool) -> None:
        """Feed the alignment feedback this step (`actions.alignment`). Best effort: a failure there
        switches it off for good (the factor back to 1), never the clipping or the training."""
        try:
            self.alignment.step(batch, clipped)
        except Exception:
            self.alignment = self._new_alignment()  # measures nothing: no weights to watch
            self.alignment_failed = True

    def _bound_threshold(self, batch: GradBatch, n: Tensor) -> Tensor | None:
        if self.bound.limit is not None or not self.bound.active:
            bound = self.bound.limit
        else:
            norms = stack_scalars(batch.norms, dtype=torch.float32, device=n.device)
            bound = self.bound.threshold(norms, n)
        return bound

    def _clip_on_host(self, batch: GradBatch, norm: Tensor, stats: _HostLogStats) -> Tensor:
        # CPU tensors: reading them is a memory load, not a wait for a device.
        n = float(norm)
        bound = self._bound_threshold(batch, norm)
        limit = stats.limit
        if bound is not None:
            p = self.propagation
            k = self.feedback.factor
            # min(1, k · min(1, free / P)): the loss feedback tightens, and loosens at most what P tightened
            factor = 1.0 if p is None else min(1.0, self.cfg.free_propagation / float(p))  # CPU: no sync
            # where P tightens the bound (an IRNN's P is 100-6,000) only strong anti-alignment tightens it
            c = self.alignment.factor if factor >= 1.0 else self.alignment.strong_factor
            align = c if isinstance(c, float) and not self.gated else 1.0
            limit = min(limit, float(bound) * min(1.0, k * factor) * align)
        coef = min(limit / (n + 1e-6), 1.0)  # min(nan, 1.0) is nan: a NaN norm gives NaN, as in clip_grad_norm_
        for group in batch.groups:
            foreach_mul_(group, coef)
        if bound is not None and not self.gated:
            self._observe_alignment(batch, coef < CLIPPED)
        stats.feed(n * coef)
        return _host_record(n, n * coef, coef, limit)

    def _clip_on_device(self, batch: GradBatch, norm: Tensor, stats: _DeviceLogStats) -> Tensor:
        n = norm.float()
        bound = self._bound_threshold(batch, n)
        p, k = self.propagation, self.feedback.factor  # k: a host float (the loss feedback), no sync
        if bound is not None and p is not None:
            # min(1, k · min(1, free / P)), as on the host; k > 1 only undoes what P tightened
            if isinstance(p, float):
                bound = bound * min(1.0, k * min(1.0, self.cfg.free_propagation / p))
            else:
                if p.device != bound.device:
                    p = self.propagation = p.to(bound.device)
                # a clamp, not a branch: P stays on the device (the branch on k is on a host float)
                bound = bound * torch.clamp((k * self.cfg.free_propagation) / p, max=min(k, 1.0))
        elif bound is not None and k < 1.0:
            bound = bound * k
        c = self.alignment.factor
        if bound is not None and isinstance(c, Tensor) and not self.gated:
            c = c if c.device == bound.device else c.to(bound.device)
            # where P tightens the bound (an IRNN), the factor of strong anti-alignment only: a where, not a branch
            strong = self.alignment.strong_factor
            strong = strong.to(c.device) if isinstance(strong, Tensor) else torch.ones_like(c)
            if isinstance(p, Tensor):
                c = torch.where(p.to(c.device) > self.cfg.free_propagation, strong, c)
            elif isinstance(p, float) and p > self.cfg.free_propagation:
                c = strong
            bound = bound * c
        limit = stats.limit if bound is None else torch.minimum(stats.limit, bound)
        coef = torch.clamp(limit / (n + 1e-6), max=1.0)
        scale_(batch.groups, coef if coef.dtype == norm.dtype else coef.to(norm.dtype))
        if bound is not None and not self.gated:
            self._observe_alignment(batch, coef < CLIPPED)
        after = norm * coef
        stats.feed(after if after.dtype == torch.float32 else after.float())
        return clip_record(norm, after, coef, limit)


def _host_record(*values: float) -> Tensor:
    """A float32 CPU tensor of host floats, the same bits as torch.tensor(values, dtype=torch.float32)
    (both round to nearest; overflow to ±inf) at a third of its cost (~0.8 µs against ~2.4 µs: part of
    every host call, against a clip_grad_norm_ of ~40 µs on a small RNN)."""
    return torch.frombuffer(array.array("f", values), dtype=torch.float32)

