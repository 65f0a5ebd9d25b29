"""The chance-level loss of a criterion, estimated from the targets it has seen (pure tensor state).

    >>> counts = ClassCounts(classes=4, device=y.device)
    >>> counts.add(y, ignore_index=-100)          # class-index targets of one cross-entropy / NLL call
    >>> counts.chance()                           # 0-dim float32 tensor on y's device; -1: no estimate yet
    >>> moments = TargetMoments(y.shape[1:], device=y.device)
    >>> moments.add(y); moments.chance()          # MSE: the targets' variance per output element, averaged

"Chance" is the loss of the best input-blind predictor, one that outputs the same thing whatever
the input: for cross-entropy / NLL with class-index targets, predicting the class frequencies,
whose loss is their entropy; for the mean squared error, predicting each output element's mean,
whose loss is the mean over output elements of their variances. A loss that stays at this level
has learned nothing from its inputs.

Estimators, and why these corrections:

* classes: the plug-in entropy of the counts seen so far is biased low by about (m − 1) / (2N)
  for m classes seen in N targets (Miller 1955; Paninski 2003, "Estimation of entropy and mutual
  information", eq. 3.5): the Miller–Madow estimate adds it. That expansion holds only once every
  class that matters has been seen several times. While the targets are under-sampled (a word
  vocabulary of thousands after a few hundred steps) the plug-in entropy and the correction are
  both too low, and a healthy model's loss, still above the true chance level, would look "above
  chance". So no estimate is given (`NO_ESTIMATE`) until the Good–Turing estimate of the probability mass of
  the classes not yet seen, f1 / N (f1: classes seen exactly once), is at most `MISSING_MASS` (1 %).
  Only the first `CLASS_TARGETS` (10,000) targets are counted: the estimate then stays as it is.
* binary cross-entropy (with logits): the binary entropy of each output element's mean target (the
  best constant prediction is that mean, hard or soft targets alike), averaged over elements, plus
  the Miller–Madow term 1 / (2n) for elements whose targets were not all equal; from the first
  `MOMENT_SAMPLES` samples, at least 2.
* MSE: the unbiased sample variance (Bessel's n − 1) of each output element over the samples seen
  (the leading dimension of the target is the sample dimension; the first `MOMENT_SAMPLES` samples),
  averaged over output elements; at least 2 samples (`NO_ESTIMATE` before, and for non-finite targets).

Everything stays on the targets' device (no host-device sync): counts go in with `index_add_`
(not `bincount`, which synchronises on CUDA) and the estimate is a 0-dim tensor for the step's
asynchronous read-back. Counts and sums are float64 (exact counts to 2**53), float32 on MPS.
"""

from __future__ import annotations

import torch

__all__ = ["ClassCounts", "TargetMoments", "BinaryTargets", "MISSING_MASS", "MOMENT_SAMPLES", "CLASS_TARGETS",
           "NO_ESTIMATE",
           "class_chance", "moments_chance", "binary_chance"]

NO_ESTIMATE = -1.0
"""What an estimate holds when there is none yet (a chance loss is never negative; not NaN, which the step's
read-back would take for a non-finite measurement)."""

MISSING_MASS = 0.01
"""Largest Good–Turing estimate of the probability mass of unseen classes (classes seen once / targets
seen) at which the class entropy is given: at most 1 % of the targets' probability is in classes the
estimate has not seen."""


MOMENT_SAMPLES = 10_000
"""MSE targets are added until this many samples are in (then the estimate stays as it is): the variance of 10,000
samples is within ±1.4 % of the true one (one standard error, normal targets), and a dense target costs two passes
over its elements on every call (~130 µs for 50 × 32 × 64 on one CPU thread after backward)."""


CLASS_TARGETS = 10_000
"""Class-index targets are counted until this many have been offered (then the counts stay as they are): counting
costs four small tensor operations per criterion call (~27 µs on one CPU thread), and the entropy of 10,000 targets is
within ~±0.01 nats of the true one for a few dozen classes. A vocabulary too large for 10,000 targets to cover
(Good–Turing unseen mass above `MISSING_MASS`) never gets an estimate."""


def _wide(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


class ClassCounts:
    """How often each class index appeared among the targets; `chance()` is their entropy (nats)."""

    def __init__(self, classes: int, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        self.counts = torch.zeros(classes, dtype=_wide(device), device=device)
        self.offered = 0
        """Targets offered so far, ignored ones included (a host number known from the shapes, no sync)."""

    def add(self, target: torch.Tensor, ignore_index: int = -100) -> None:
        """Count one call's class-index targets; those equal to `ignore_index` do not count (as in the loss); nothing
        once `CLASS_TARGETS` targets have been offered."""
        if self.offered >= CLASS_TARGETS:
            return
        flat = target.detach().reshape(-1)
        self.offered += flat.numel()
        keep = flat != ignore_index
        # the ignored ones are added as 0 at index 0: no data-dependent shape, no sync
        self.counts.index_add_(0, torch.where(keep, flat, 0), keep.to(self.counts.dtype))

    def chance(self) -> torch.Tensor:
        """Miller–Madow entropy of the class frequencies seen, 0-dim float32; `NO_ESTIMATE` while under-sampled."""
        return class_chance(self.counts)


def class_chance(counts: torch.Tensor) -> torch.Tensor:
    """Miller–Madow entropy (nats) of `counts`, or `NO_ESTIMATE` when the Good–Turing unseen mass exceeds
    `MISSING_MASS` or nothing was counted (0-dim float32, on the counts' device)."""
    n = counts.sum()
    seen = (counts > 0).sum()
    once = (counts == 1).sum()
    plug_in = n.log() - torch.xlogy(counts, counts).sum() / n
    estimate = plug_in + (seen - 1) / (2 * n)
    enough = (once <= MISSING_MASS * n) & (n > 0)
    return torch.where(enough, estimate, NO_ESTIMATE).float()


class TargetMoments:
    """Running per-element sums of MSE targets; `chance()` is their variance, averaged over elements."""

    def __init__(self, shape: torch.Size | tuple[int, ...], device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        self.samples = 0
        """Samples seen (known from the shapes: a host number without a sync)."""
        self.sums = torch.zeros(shape, dtype=_wide(device), device=device)
        self.squares = torch.zeros(shape, dtype=_wide(device), device=device)

    def add(self, target: torch.Tensor) -> None:
        """Add one call's targets: dimension 0 counts samples, the rest must be `shape` (a 0-dim target is one sample);
        nothing once `MOMENT_SAMPLES` samples are in."""
        if self.samples >= MOMENT_SAMPLES:
            return
        values = target.detach()
        if values.dtype not in (torch.float32, torch.float64):
            values = values.float()  # half precision would lose the sums; float32 sums of one call are exact enough
        # each call's sums in the target's own precision (one pass each), accumulated in float64 over the calls
        if values.dim() == 0:
            self.sums += values
            self.squares += values * values
            self.samples += 1
            return
        self.sums += values.sum(0)
        self.squares += values.square().sum(0)
        self.samples += values.shape[0]

    def chance(self) -> torch.Tensor:
        """Mean over output elements of the unbiased variance of the targets seen (0-dim float32); `NO_ESTIMATE`
        before 2 samples."""
        return moments_chance(self.sums, self.squares, self.samples)


def moments_chance(sums: torch.Tensor, squares: torch.Tensor, samples: int) -> torch.Tensor:
    """Mean over elements of (Σy² − (Σy)²/n) / (n − 1) (0-dim float32; `NO_ESTIMATE` for n < 2 or a
    non-finite result)."""
    if samples < 2:
        return torch.full((), NO_ESTIMATE, dtype=torch.float32, device=sums.device)
    variance = (squares - sums * sums / samples) / (samples - 1)
    return torch.nan_to_num(variance.mean(), nan=NO_ESTIMATE, posinf=NO_ESTIMATE, neginf=NO_ESTIMATE).float()


class BinaryTargets(TargetMoments):
    """Running per-element sums of binary cross-entropy targets (in [0, 1]); `chance()` is their binary entropy."""

    def chance(self) -> torch.Tensor:
        """Mean over output elements of H(mean target) + Miller–Madow (0-dim float32); `NO_ESTIMATE` before 2 samples."""
        return binary_chance(self.sums, self.samples)


def binary_chance(sums: torch.Tensor, samples: int) -> torch.Tensor:
    """Mean over elements of −(p ln p + (1 − p) ln(1 − p)) + [0 < p < 1] / (2n), p = sums / n (0-dim float32;
    `NO_ESTIMATE` for n < 2 or a non-finite result)."""
    if samples < 2:
        return torch.full((), NO_ESTIMATE, dtype=torch.float32, device=sums.device)
    p = sums / samples
    entropy = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))
    mixed = (p > 0) & (p < 1)
    estimate = (entropy + mixed / (2 * samples)).mean()
    return torch.nan_to_num(estimate, nan=NO_ESTIMATE, posinf=NO_ESTIMATE, neginf=NO_ESTIMATE).float()
