"""TensorBoard: per-layer scalars, per-timestep gradient norms as images, alerts as text.

    >>> monitor = gradwatch.watch(model, optimizer, tensorboard="runs/exp1")
    $ tensorboard --logdir runs

Tags (step = gradwatch's step index):

* `gradwatch/grad_norm/total`, `gradwatch/loss`, and per layer `gradwatch/grad_norm/<module>.l<layer>`,
  `gradwatch/update_ratio/<module>.l<layer>`, `gradwatch/weight_norm/<module>.l<layer>`;
* `gradwatch/clip_coefficient` when a clip policy is active;
* `gradwatch/timesteps/<module>` (image, probe steps): one band per layer (layer 0 at the top),
  one column per timestep, colour = log10 of ‖∂L/∂x_t‖ from dark (smallest in the image) to
  yellow (largest); magenta marks NaN/Inf;
* `gradwatch/alerts` (text): one line per alert, written on the step that raised it.

Uses `torch.utils.tensorboard.SummaryWriter` (`pip install gradwatch[tensorboard]`).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..errors import GradwatchError
from ..records import Alert, StepStats

__all__ = ["TensorBoardSink", "timestep_image"]

_VIRIDIS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
_BAD = np.array([255, 0, 255], dtype=np.uint8)


def _layer_tag(module: str, layer: int) -> str:
    return f"{module or 'model'}.l{layer}"


def timestep_image(rows: list[list[float] | None], *, cell_height: int = 12, max_width: int = 800) -> np.ndarray:
    """HWC uint8 image of per-timestep norms: one band per row, log10 colour scale (pure numpy).

    Rows may differ in length (shorter ones are padded black); NaN/Inf cells are magenta.
    """
    width = max((len(r) for r in rows if r), default=1)
    values = np.full((len(rows), width), np.nan)
    bad = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        if r:
            arr = np.asarray(r, dtype=np.float64)
            values[i, : len(arr)] = arr
            bad[i, : len(arr)] = ~np.isfinite(arr)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(values) & (values > 0), np.log10(values), np.nan)
    finite = logs[np.isfinite(logs)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scaled = np.clip((logs - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    pos = np.nan_to_num(scaled, nan=0.0) * (len(_VIRIDIS) - 1)
    low = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (pos - low)[..., None]
    rgb = (_VIRIDIS[low] * (1 - frac) + _VIRIDIS[low + 1] * frac).astype(np.uint8)
    rgb[~np.isfinite(logs)] = 0
    rgb[bad] = _BAD
    col = max(1, max_width // width)
    return np.repeat(np.repeat(rgb, cell_height, axis=0), col, axis=1)


class TensorBoardSink:
    """Writes each step to a `SummaryWriter` (created for a log directory, or yours)."""

    def __init__(self, target: Any) -> None:
        if isinstance(target, (str, os.PathLike)):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise GradwatchError(
                    "gradwatch.watch(tensorboard=...) needs the tensorboard package: "
                    "pip install 'gradwatch[tensorboard]' (or pass tensorboard=None)."
                ) from exc
            self.writer = SummaryWriter(log_dir=os.fspath(target))
            self._owned = True
        elif hasattr(target, "add_scalar"):
            self.writer, self._owned = target, False
        else:
            raise GradwatchError(
                f"gradwatch.watch(tensorboard=...) expects a log directory or a SummaryWriter, "
                f"got {type(target).__name__}."
            )

    def on_step(self, stats: StepStats, alerts: list[Alert]) -> None:
        w, step = self.writer, stats.step
        w.add_scalar("gradwatch/grad_norm/total", stats.grad_norm, step)
        if stats.loss is not None:
            w.add_scalar("gradwatch/loss", stats.loss, step)
        if stats.clip is not None:
            w.add_scalar("gradwatch/clip_coefficient", stats.clip.coefficient, step)
        by_module: dict[str, list[list[float] | None]] = {}
        for (module, layer), ls in stats.layers.items():
            tag = _layer_tag(module, layer)
            w.add_scalar(f"gradwatch/grad_norm/{tag}", ls.grad_norm, step)
            w.add_scalar(f"gradwatch/update_ratio/{tag}", ls.update_ratio, step)
            w.add_scalar(f"gradwatch/weight_norm/{tag}", ls.weight_norm, step)
            if ls.timestep_grad_norms:
                by_module.setdefault(module, []).append(ls.timestep_grad_norms)
        for module, rows in by_module.items():
            w.add_image(f"gradwatch/timesteps/{module or 'model'}", timestep_image(rows), step, dataformats="HWC")
        if alerts:
            lines = [_markdown(a) for a in alerts]
            w.add_text("gradwatch/alerts", "\n".join(lines), step)

    def close(self, summary: object) -> None:
        if self._owned:
            self.writer.close()
        else:
            self.writer.flush()


def _markdown(a: Alert) -> str:
    """One markdown bullet: severity, problem/sign, where, the value, escalation, evidence and remedy."""
    value = "nan" if isinstance(a.value, float) and math.isnan(a.value) else f"{a.value:.3g}"
    up = a.escalated_from
    escalated = f", escalated from {up.severity} at step {up.step}" if up is not None else ""
    remedy = f" **Remedy:** {a.remedy}" if a.remedy else ""
    return f"- **{a.severity}** {a.problem}/{a.sign} at {a.location.words()} (value {value}{escalated}): {a.evidence}{remedy}"
