"""Lightning callback with a real `Trainer` on CPU: attach, read before clipping, log, detach."""

from __future__ import annotations

import csv
import glob
import logging
import os
import warnings

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from gradwatch.stream.step_boundaries import Mode  # noqa: E402
from gradwatch.integrations.lightning import GradwatchCallback  # noqa: E402

LR = 0.1


class Tagger(pl.LightningModule):
    """A GRU sequence regressor that records, as the reference, the gradient norm Lightning sees."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3, 8, num_layers=2)
        self.head = nn.Linear(8, 1)
        self.reference_norms: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        out, _ = self.rnn(x.transpose(0, 1))
        return nn.functional.mse_loss(self.head(out[-1]).squeeze(-1), y)

    def on_before_optimizer_step(self, optimizer):  # runs right after the callbacks' hook
        norms = torch.stack([p.grad.norm() for p in self.parameters()])
        self.reference_norms.append(torch.linalg.vector_norm(norms).item())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def fit(tmp_path, callback, **trainer_options):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(48, 6, 3), torch.randn(48))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model = Tagger()
    trainer = pl.Trainer(accelerator="cpu", logger=CSVLogger(str(tmp_path)), callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         **trainer_options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        trainer.fit(model, loader)
    return model, trainer


@pytest.mark.parametrize("accumulate", [1, 2], ids=["every-batch", "accumulate-2"])
def test_reads_gradients_before_lightning_clips_them(tmp_path, accumulate):
    callback = GradwatchCallback(every=1, console=False, strict=True, log_every_n_steps=1)
    clip = 0.01
    model, trainer = fit(tmp_path, callback, max_steps=4, gradient_clip_val=clip, accumulate_grad_batches=accumulate)
    history = list(callback.monitor.history)
    assert [s.step for s in history] == [0, 1, 2, 3]  # one gradwatch step per optimizer step
    assert [s.grad_norm for s in history] == pytest.approx(model.reference_norms, rel=1e-5)
    for stats in history:
        coefficient = min(1.0, clip / (stats.grad_norm + 1e-6))  # Lightning's clip_grad_norm_
        for ls in stats.layers.values():
            assert ls.update_norm == pytest.approx(LR * coefficient * ls.grad_norm, rel=1e-3)
        assert len(stats.layers[("rnn", 1)].timestep_grad_norms) == 6


def test_gradwatch_clip_acts_between_backward_and_the_update(tmp_path):
    callback = GradwatchCallback(every=1, console=False, strict=True, clip=0.01)
    model, trainer = fit(tmp_path, callback, max_steps=3)
    history = list(callback.monitor.history)
    assert [s.step for s in history] == [0, 1, 2]
    for stats in history:
        assert stats.clip is not None and stats.clip.norm_after == pytest.approx(0.01, rel=1e-4)
        coefficient = stats.clip.coefficient
        assert coefficient == pytest.approx(0.01 / stats.grad_norm, rel=1e-4)
        for ls in stats.layers.values():
            assert ls.update_norm == pytest.approx(LR * coefficient * ls.grad_norm, rel=1e-3)
    # Lightning's own hook ran after gradwatch clipped: it saw the clipped gradients
    assert model.reference_norms == pytest.approx([0.01] * 3, rel=1e-4)


def test_logs_to_the_trainer_loggers_and_detaches_on_teardown(tmp_path):
    callback = GradwatchCallback(every=2, console=False, log_every_n_steps=1)
    model, trainer = fit(tmp_path, callback, max_steps=3)
    assert callback.monitor.step_mode is Mode.DRIVER  # given to watch(), not flipped afterwards
    assert "forward" not in model.rnn.__dict__  # the forward adapter is gone
    for module in model.modules():  # no hook of gradwatch's left on the model or its optimizer
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)
    for optimizer in trainer.optimizers:
        assert not (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks)
    (path,) = glob.glob(os.path.join(str(tmp_path), "**", "metrics.csv"), recursive=True)
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("gradwatch/grad_norm")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert [float(r["gradwatch/grad_norm"]) for r in rows] == pytest.approx(
        [s.grad_norm for s in callback.monitor.history], rel=1e-6)
    assert [float(r["gradwatch/rnn.l1/update_ratio"]) for r in rows] == pytest.approx(
        [s.layers[("rnn", 1)].update_ratio for s in callback.monitor.history], rel=1e-6)
