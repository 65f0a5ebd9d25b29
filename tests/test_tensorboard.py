"""TensorBoard sink: scalars per layer, per-timestep norms as images, alerts as text."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import gradwatch  # noqa: E402
from gradwatch import Alert, GradwatchError  # noqa: E402
from gradwatch.sinks.tensorboard import TensorBoardSink, timestep_image  # noqa: E402
from models import SeqClassifier, lm_batch  # noqa: E402


def read_events(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_and_images_match_the_monitor_history(tmp_path):
    model = SeqClassifier(nn.LSTM, layers=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradwatch.watch(model, opt, every=2, console=False, strict=True, tensorboard=str(tmp_path))
    for _ in range(4):
        x, y = lm_batch()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step(); monitor.step(loss)
    monitor.close()
    events = read_events(tmp_path)
    scalars = events.Tags()["scalars"]

    def series(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    history = list(monitor.history)
    assert series("gradwatch/grad_norm/total") == [(s.step, pytest.approx(s.grad_norm, rel=1e-6)) for s in history]
    assert series("gradwatch/loss") == [(s.step, pytest.approx(s.loss, rel=1e-6)) for s in history]
    for layer in (0, 1):
        for field in ("grad_norm", "update_ratio", "weight_norm"):
            tag = f"gradwatch/{field}/rnn.l{layer}"
            assert tag in scalars
            expected = [(s.step, pytest.approx(getattr(s.layers[("rnn", layer)], field), rel=1e-6)) for s in history]
            assert series(tag) == expected
    images = events.Images("gradwatch/timesteps/rnn")
    assert [e.step for e in images] == [0, 2]  # probe steps only
    assert images[0].height == 2 * 12  # one band per layer


def test_timestep_image_uses_a_log_scale_and_marks_nan():
    img = timestep_image([[1e-6, 1e-3, 1.0], [1.0, math.nan, 1e-6]], cell_height=1, max_width=3)
    assert img.shape == (2, 3, 3) and img.dtype == np.uint8
    # equal log steps: the middle of row 0 is the middle colour, between the two ends
    lo, mid, hi = (img[0, i].astype(int) for i in range(3))
    assert tuple(lo) == (68, 1, 84) and tuple(hi) == (253, 231, 37)
    assert tuple(mid) == (33, 145, 140)
    assert tuple(img[1, 1]) == (255, 0, 255)


def test_alerts_are_written_as_text(tmp_path):
    from gradwatch import LayerStats, StepStats

    sink = TensorBoardSink(str(tmp_path))
    layer = LayerStats("rnn", 0, "RNN", 1.0, 2.0, 0.1, 0.05)
    stats = StepStats(3, 0.5, 1.0, {("rnn", 0): layer})
    alert = Alert("exploding", "norm_spike", "critical", 3, "rnn", 0, None, 50.0, 10.0, "clip the gradient norm")
    sink.on_step(stats, [alert])
    sink.close(None)
    events = read_events(tmp_path)
    (text,) = events.Tensors("gradwatch/alerts/text_summary")
    assert text.step == 3
    content = text.tensor_proto.string_val[0].decode()
    assert "norm_spike" in content and "clip the gradient norm" in content and "layer 0" in content


def test_a_bad_target_is_an_actionable_error():
    with pytest.raises(GradwatchError, match="log directory or a SummaryWriter"):
        TensorBoardSink(42)
