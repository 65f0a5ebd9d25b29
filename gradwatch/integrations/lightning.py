"""Lightning callback: gradwatch inside `Trainer.fit`, with its numbers in the trainer's loggers.

    >>> from gradwatch.integrations.lightning import GradwatchCallback
    >>> trainer = L.Trainer(callbacks=[GradwatchCallback(every=10, jsonl="run.jsonl")])
    >>> trainer.fit(model)

* `on_fit_start`: `gradwatch.watch(pl_module, ...)` with the options given to the callback;
* `on_before_optimizer_step`: the gradients are read here, after the closure's backward and
  after AMP unscaling, before Lightning's own gradient clipping (gradwatch's `clip=` acts here);
* `on_train_batch_end` after an optimizer step: the step ends (loss = mean of the training-step
  losses since the previous step, so gradient accumulation counts one step per optimizer step);
* each step's numbers go to every logger of the trainer (`gradwatch/grad_norm`,
  `gradwatch/<module>.l<layer>/grad_norm`, `.../update_ratio`, `gradwatch/clip_coefficient`,
  `gradwatch/alerts`), at `trainer.global_step`, every `log_every_n_steps` and on every step
  with an alert; the alerts themselves go to the console / `logging` as usual;
* `teardown` (and `on_exception`): the monitor is closed and every hook removed.

Under DDP every rank watches and the statistics are reduced across ranks (see
`gradwatch.distributed`); only rank 0 prints, and Lightning's loggers write on rank 0 only.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError(
            "gradwatch.integrations.lightning needs Lightning: pip install 'gradwatch[lightning]'."
        ) from exc

import torch

from ..records import Alert, StepStats

__all__ = ["GradwatchCallback", "TrainerLoggerSink"]


class TrainerLoggerSink:
    """A gradwatch sink that forwards each step's numbers to the trainer's loggers."""

    def __init__(self, trainer: Any, *, every: int, offset: int, prefix: str = "gradwatch") -> None:
        self.trainer, self.every, self.offset, self.prefix = trainer, max(1, every), offset, prefix
        self.alerts = 0

    def metrics(self, stats: StepStats) -> dict[str, float]:
        p = self.prefix
        out = {f"{p}/grad_norm": stats.grad_norm, f"{p}/alerts": float(self.alerts)}
        for (module, layer), ls in stats.layers.items():
            tag = f"{p}/{module or 'model'}.l{layer}"
            out[f"{tag}/grad_norm"] = ls.grad_norm
            out[f"{tag}/update_ratio"] = ls.update_ratio
        if stats.clip is not None:
            out[f"{p}/clip_coefficient"] = stats.clip.coefficient
        return out

    def on_step(self, stats: StepStats, alerts: list[Alert]) -> None:
        self.alerts += len(alerts)
        if stats.step % self.every and not alerts:
            return
        metrics = self.metrics(stats)
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.offset + stats.step)

    def close(self, summary: object) -> None:
        pass


class GradwatchCallback(pl.Callback):
    """Watch the recurrent layers of a LightningModule during `fit`.

    Args:
        log_every_n_steps: how often to send numbers to the loggers (default: the trainer's
            `log_every_n_steps`); steps with an alert are always sent.
        **watch_options: passed to `gradwatch.watch` (`every`, `console`, `clip`, `jsonl`,
            `tensorboard`, detector thresholds, ...).
    """

    def __init__(self, *, log_every_n_steps: int | None = None, **watch_options: Any) -> None:
        super().__init__()
        self.watch_options = watch_options
        self.log_every_n_steps = log_every_n_steps
        self.monitor: Any = None
        """The `Monitor` while fitting (kept after fit, closed, for its `history` and `alerts`)."""
        self._stepped = False
        self._losses: list[torch.Tensor] = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        from ..watch import watch

        every: int = self.log_every_n_steps or int(getattr(trainer, "log_every_n_steps", 50))
        sink = TrainerLoggerSink(trainer, every=every, offset=trainer.global_step)
        options = dict(self.watch_options)
        options["sinks"] = list(options.get("sinks", ())) + [sink]
        # The optimizers are passed for clip=/skip_nonfinite=, but their step() hooks stay silent:
        # Lightning runs forward and backward inside step(closure), after a pre-step hook would fire,
        # and AMP skips step() on inf gradients, so the callback itself marks the step boundaries.
        options["external_steps"] = True
        self.monitor = watch(pl_module, list(trainer.optimizers) or None, **options)
        self._stepped, self._losses = False, []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.monitor is not None:
            self.monitor.before_update()
            self._stepped = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss.detach().reshape(()).float())
        if self._stepped:
            mean = torch.stack(self._losses).mean() if self._losses else None
            self.monitor.end_step(mean)
            self._stepped, self._losses = False, []

    def _detach(self) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._detach()
