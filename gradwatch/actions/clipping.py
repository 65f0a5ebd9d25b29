"""Gradient clipping policies: fixed (`Norm`, `Value`) and adaptive (`AutoClip`, `ZClip`, `AGC`).

    >>> gradwatch.watch(model, opt, clip=1.0)                      # = Norm(1.0) = clip_grad_norm_(…, 1.0)
    >>> gradwatch.watch(model, opt, clip=gradwatch.actions.ZClip())  # z-score spike clipping
    >>> gradwatch.watch(model, opt, clip="auto")                   # see `gradwatch.actions.auto`

A policy is a frozen dataclass of settings; `policy.make()` returns the stateful clipper the
monitor calls once per optimizer step, just before `optimizer.step()` and after the gradients
were measured. `clipper.clip_(batch)` rescales `batch.grads` in place and returns the step's
clip record `[norm_before, norm_after, coefficient, threshold or NaN]` as a device tensor.

Every clipper runs without a host-device sync: statistics and histories live on the gradients'
device, and the rescaling multiplies by a clamped coefficient (1.0 when nothing is clipped)
instead of branching on `norm > threshold`, as `torch.nn.utils.clip_grad_norm_` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from ..errors import GradwatchError
from ..stats.tensor_stats import stack_scalars
from ..torch_compat import foreach_clamp_
from .batch import GradBatch, clip_record, per_tensor_norms, scale_

__all__ = ["ClipPolicy", "Clipper", "Norm", "Value", "AutoClip", "ZClip", "AGC"]

EPS = 1e-6
"""Added to the norm in the coefficient `threshold / (norm + EPS)`, as in clip_grad_norm_."""


class Clipper(Protocol):
    """The stateful object a policy makes; one per monitor."""

    name: str

    def clip_(self, batch: GradBatch) -> Tensor:
        """Rescale `batch.grads` in place; return [norm_before, norm_after, coefficient, threshold]."""
        ...


class ClipPolicy(Protocol):
    """Settings of a clipping policy; `make()` starts a fresh clipper (state is never shared)."""

    name: ClassVar[str]

    def make(self) -> Clipper: ...


def _positive(policy: str, name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0) or math.isinf(value):
        raise GradwatchError(f"gradwatch.actions.{policy}({name}=...) must be a positive finite number, got {value!r}.")


def _as(x: Tensor, like: Tensor) -> Tensor:
    return x if x.dtype == like.dtype else x.to(like.dtype)


def _coefficient(limit: Tensor, norm: Tensor) -> Tensor:
    # Clamp instead of `if norm > limit`: a branch would wait for the device (host-device sync).
    return torch.clamp(limit / (norm + EPS), max=1.0)


# ---------------------------------------------------------------------------------------- Norm
@dataclass(frozen=True)
class Norm:
    """Clip the total L2 norm of all gradients to `max_norm` (`torch.nn.utils.clip_grad_norm_`).

        >>> gradwatch.watch(model, opt, clip=Norm(max_norm=1.0))     # same as clip=1.0

    The gradients come out bit-identical to `clip_grad_norm_(params, max_norm)` over the
    parameters the optimizers update: g ← g · min(1, max_norm / (‖g‖₂ + 1e-6)).
    Source: Pascanu, Mikolov & Bengio (2013), "On the difficulty of training recurrent neural networks".
    """

    max_norm: float
    """Largest allowed total L2 norm. No default: it depends on the model's gradient scale."""
    name: ClassVar[str] = "norm"

    def __post_init__(self) -> None:
        _positive("Norm", "max_norm", self.max_norm)

    def make(self) -> "_NormClipper":
        return _NormClipper(float(self.max_norm))


class _NormClipper:
    name = Norm.name

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def clip_(self, batch: GradBatch) -> Tensor:
        norm = batch.total_norm()
        coef = torch.clamp(self.max_norm / (norm + EPS), max=1.0)
        scale_(batch.groups, coef)
        return clip_record(norm, norm * coef, coef, self.max_norm)


# --------------------------------------------------------------------------------------- Value
@dataclass(frozen=True)
class Value:
    """Clamp every gradient element to [-clip_value, clip_value] (`torch.nn.utils.clip_grad_value_`).

        >>> gradwatch.watch(model, opt, clip=Value(clip_value=0.5))

    Element-wise clipping changes the gradient's direction; prefer `Norm` unless you know why.
    The record's coefficient is ‖g_after‖ / ‖g_before‖ (one extra norm pass).
    Source: Mikolov (2012), PhD thesis, section 3.2.2 (element-wise clipping for RNN language models).
    """

    clip_value: float
    """Largest allowed |g| of any element. No default."""
    name: ClassVar[str] = "value"

    def __post_init__(self) -> None:
        _positive("Value", "clip_value", self.clip_value)

    def make(self) -> "_ValueClipper":
        return _ValueClipper(float(self.clip_value))


class _ValueClipper:
    name = Value.name

    def __init__(self, clip_value: float) -> None:
        self.clip_value = clip_value

    def clip_(self, batch: GradBatch) -> Tensor:
        before = batch.total_norm()
        for group in batch.groups:
            foreach_clamp_(group, -self.clip_value, self.clip_value)
        after = torch.linalg.vector_norm(stack_scalars(per_tensor_norms(batch.grads), device=before.device))
        coef = torch.where(before > 0, after / before, torch.ones_like(before))
        return clip_record(before, after, coef, self.clip_value)


# ------------------------------------------------------------------------------------ AutoClip
@dataclass(frozen=True)
class AutoClip:
    """Clip the total norm to the `percentile`-th percentile of the norms seen so far.

        >>> gradwatch.watch(model, opt, clip=AutoClip(percentile=10))

    Each step appends the current (unclipped) total norm to the history, then clips to the
    percentile of the history (linear interpolation, as `numpy.percentile`), so the first step
    is never clipped. Non-finite norms are kept out of the history.
    Source: Seetharaman, Wichern, Pardo & Le Roux (2020), "AutoClip: Adaptive gradient clipping
    for source separation networks" (MLSP); defaults percentile=10 and the whole history.
    Here the history is a ring buffer of the last `history` norms on the device (default 10 000;
    None keeps all of them, as in the paper, at a cost growing with the run).
    """

    percentile: float = 10.0
    """Percentile (0–100] of the norm history used as the threshold."""
    history: int | None = 10_000
    """How many recent norms to keep (None = all)."""
    name: ClassVar[str] = "autoclip"

    def __post_init__(self) -> None:
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) or not 0 < self.percentile <= 100:
            raise GradwatchError(f"gradwatch.actions.AutoClip(percentile=...) must be in (0, 100], got {self.percentile!r}.")
        if self.history is not None and (isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1):
            raise GradwatchError(f"gradwatch.actions.AutoClip(history=...) must be a positive integer or None, got {self.history!r}.")

    def make(self) -> "_PercentileClipper":
        return _PercentileClipper(self)


class _PercentileClipper:
    name = AutoClip.name

    def __init__(self, cfg: AutoClip) -> None:
        self.q = cfg.percentile / 100.0
        self.window = cfg.history
        self.count = 0
        self.buf: Tensor | None = None

    def _slot(self, device: torch.device) -> int:
        """Where this step's norm goes; grows (unbounded history) or wraps (ring buffer) on the host."""
        if self.buf is None or self.buf.device != device:
            size = self.window if self.window is not None else 1024
            self.buf, self.count = torch.full((size,), math.nan, device=device), 0
        if self.window is None and self.count == self.buf.numel():
            self.buf = torch.cat([self.buf, torch.full_like(self.buf, math.nan)])
        return self.count % self.buf.numel()

    def clip_(self, batch: GradBatch) -> Tensor:
        norm = batch.total_norm()
        n32 = norm.float()
        slot = self._slot(n32.device)
        buf = self.buf
        assert buf is not None  # _slot made it
        buf[slot] = torch.where(torch.isfinite(n32), n32, math.nan)
        self.count += 1
        seen = buf[: min(self.count, buf.numel())]
        threshold = torch.nanquantile(seen, self.q)
        # All-NaN history gives a NaN threshold: clip nothing rather than poison the gradients.
        limit = torch.nan_to_num(threshold, nan=math.inf)
        coef = _as(_coefficient(limit, n32), norm)
        scale_(batch.groups, coef)
        return clip_record(norm, norm * coef, coef, threshold)


# --------------------------------------------------------------------------------------- ZClip
@dataclass(frozen=True)
class ZClip:
    """Clip gradient-norm spikes: a z-score against an exponential moving mean and variance.

        >>> gradwatch.watch(model, opt, clip=ZClip())            # alpha 0.97, z 2.5, 25 warm-up steps

    Warm-up: the first `warmup` norms are collected (clipped to `max_norm` if set) and give the
    initial mean and variance. Then, with μ, σ the EMA statistics and z = (‖g‖ − μ)/(σ + 1e-6):
    when z > `z_threshold` the norm is clipped to μ + z_threshold·σ / (z / z_threshold)
    ("adaptive scaling": the larger the outlier, the harder the clip), and the EMA is updated
    with that clipped value, otherwise with ‖g‖ (mean first, then the variance around the new
    mean). Non-finite norms leave the statistics unchanged.
    Source: Kumar, Owen, Chowdhury & Güra (2025), "ZClip: Adaptive spike mitigation for LLM
    pre-training" (arXiv:2504.02507) and its reference code (defaults alpha 0.97, z_thresh 2.5,
    25 warm-up steps). The reference code also caps every step at max_grad_norm=1.0 by default;
    here `max_norm` defaults to None so that ZClip is purely adaptive (pass max_norm=1.0 for the
    reference behaviour).
    """

    alpha: float = 0.97
    """EMA decay of the mean and variance of the norm (window ≈ 1 / (1 − alpha) ≈ 33 steps)."""
    z_threshold: float = 2.5
    """Clip when the norm's z-score exceeds this."""
    warmup: int = 25
    """Steps collected before the statistics start (no adaptive clipping before)."""
    max_norm: float | None = None
    """Optional fixed cap applied on every step, warm-up included (the reference code's max_grad_norm)."""
    name: ClassVar[str] = "zclip"

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise GradwatchError(f"gradwatch.actions.ZClip(alpha=...) must be in (0, 1), got {self.alpha!r}.")
        _positive("ZClip", "z_threshold", self.z_threshold)
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1:
            raise GradwatchError(f"gradwatch.actions.ZClip(warmup=...) must be a positive integer, got {self.warmup!r}.")
        _positive("ZClip", "max_norm", self.max_norm, allow_none=True)

    def make(self) -> "_ZClipper":
        return _ZClipper(self)


class _ZClipper:
    name = ZClip.name

    def __init__(self, cfg: ZClip) -> None:
        self.cfg = cfg
        self.seen = 0
        self.warm: Tensor | None = None
        self.mean: Tensor | None = None
        self.var: Tensor | None = None

    def _warmup_step(self, n: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        if self.warm is None or self.warm.device != n.device:
            self.warm, self.seen = torch.full((cfg.warmup,), math.nan, device=n.device), 0
        self.warm[self.seen] = torch.where(torch.isfinite(n), n, math.nan)
        self.seen += 1
        if self.seen == cfg.warmup:
            self.mean = torch.nanmean(self.warm)
            self.var = torch.nanmean((self.warm - self.mean).square())
        cap = cfg.max_norm if cfg.max_norm is not None else math.inf
        limit = torch.full_like(n, cap)
        return limit, torch.full_like(n, cfg.max_norm if cfg.max_norm is not None else math.nan)

    def _adaptive_step(self, n: Tensor) -> tuple[Tensor, Tensor]:
        cfg, mean, var = self.cfg, self.mean, self.var
        assert mean is not None and var is not None
        std = var.sqrt()
        z = (n - mean) / (std + EPS)
        spike = z > cfg.z_threshold
        adaptive = mean + (cfg.z_threshold * std) / (z / cfg.z_threshold)
        limit = torch.where(spike, adaptive, math.inf)
        threshold = torch.where(spike, adaptive, mean + cfg.z_threshold * std)
        if cfg.max_norm is not None:
            limit, threshold = limit.clamp(max=cfg.max_norm), threshold.clamp(max=cfg.max_norm)
        x = torch.where(spike, adaptive, n)
        ok = torch.isfinite(x)
        new_mean = torch.where(ok, cfg.alpha * mean + (1 - cfg.alpha) * x, mean)
        new_var = torch.where(ok, cfg.alpha * var + (1 - cfg.alpha) * (x - new_mean).square(), var)
        self.mean, self.var = new_mean, new_var
        return limit, threshold

    def clip_(self, batch: GradBatch) -> Tensor:
        norm = batch.total_norm()
        n = norm.float()
        in_warmup = self.mean is None or self.mean.device != n.device
        limit, threshold = self._warmup_step(n) if in_warmup else self._adaptive_step(n)
        coef = _as(_coefficient(limit, n), norm)
        scale_(batch.groups, coef)
        return clip_record(norm, norm * coef, coef, threshold)


# ----------------------------------------------------------------------------------------- AGC
@dataclass(frozen=True)
class AGC:
    """Adaptive gradient clipping, unit-wise: bound each unit's gradient relative to its weights.

        >>> gradwatch.watch(model, opt, clip=AGC(clip_factor=0.01, eps=1e-3))

    For every parameter W with gradient G and every output unit i (row i of a matrix, i.e. the
    norm over all dimensions but the first; a vector or scalar is one unit):
    G_i ← G_i · min(1, clip_factor · max(‖W_i‖, eps) / max(‖G_i‖, 1e-6)).
    Per unit rather than global: a small layer next to a huge one keeps its own scale.
    The record's norms are totals over all units; its coefficient is norm_after / norm_before.
    Source: Brock, De, Smith & Simonyan (2021), "High-performance large-scale image recognition
    without normalization" (NFNets), defaults clip_factor 0.01 (tuned there for batch 4096:
    larger batches want smaller factors) and eps 1e-3. The paper leaves the final linear layer
    unclipped; here every parameter the optimizers update is clipped.
    """

    clip_factor: float = 0.01
    """Largest allowed ‖G_i‖ / max(‖W_i‖, eps)."""
    eps: float = 1e-3
    """Floor on ‖W_i‖, so that zero-initialised units can still move."""
    name: ClassVar[str] = "agc"

    def __post_init__(self) -> None:
        _positive("AGC", "clip_factor", self.clip_factor)
        _positive("AGC", "eps", self.eps)

    def make(self) -> "_AGCClipper":
        return _AGCClipper(self)


def unit_norms(x: Tensor) -> Tensor:
    """L2 norm per output unit: over all dimensions but the first (keepdim); whole tensor if ndim ≤ 1."""
    norms: Tensor = (torch.linalg.vector_norm(x) if x.ndim <= 1
                     else torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True))
    return norms


class _AGCClipper:
    name = AGC.name

    def __init__(self, cfg: AGC) -> None:
        self.factor, self.eps = float(cfg.clip_factor), float(cfg.eps)

    def clip_(self, batch: GradBatch) -> Tensor:
        before_sq, after_sq = [], []
        device = batch.grads[0].device
        with torch.no_grad():
            for p, g in zip(batch.params, batch.grads):
                limit = unit_norms(p.detach()).clamp(min=self.eps) * self.factor
                gnorm = unit_norms(g)
                coef = torch.clamp(limit / gnorm.clamp(min=EPS), max=1.0)
                g.mul_(coef)
                before_sq.append(gnorm.float().square().sum().to(device))
                after_sq.append((gnorm * coef).float().square().sum().to(device))
        before, after = torch.stack(before_sq).sum().sqrt(), torch.stack(after_sq).sum().sqrt()
        coef = torch.where(before > 0, after / before, torch.ones_like(before))
        return clip_record(before, after, coef, math.nan)
