"""`gradwatch plot`: reads the JSONL stream (JSON only), draws the report, names bad lines."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import Alert, GradwatchError
from gradwatch.cli import main
from gradwatch.cli.plot import figure, heatmaps, load_run, render, tick_text
from gradwatch.sinks.jsonl import JsonlSink
from models import CellDecoder, SeqClassifier, lm_batch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def recorded_run(tmp_path):
    """A short real run written to JSONL, with its monitor for reference."""
    path = tmp_path / "run.jsonl"
    model = SeqClassifier(nn.GRU, layers=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradwatch.watch(model, opt, every=2, console=False, strict=True, jsonl=str(path))
    for _ in range(6):
        x, y = lm_batch()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step()
        monitor.step(loss)
    monitor.close()
    return path, monitor


def test_heatmaps_hold_the_recorded_per_timestep_norms(recorded_run):
    path, monitor = recorded_run
    maps = {(h.module, h.layer): h for h in heatmaps(load_run(str(path)))}
    assert set(maps) == {("rnn", 0), ("rnn", 1)}
    for (module, layer), hm in maps.items():
        probed = [s for s in monitor.history if s.probed]
        assert hm.steps == [s.step for s in probed] == [0, 2, 4]
        assert hm.columns == [s.layers[(module, layer)].timestep_grad_norms for s in probed]


def test_without_probe_steps_the_module_output_gradients_are_drawn(tmp_path):
    path = tmp_path / "cells.jsonl"
    model = CellDecoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradwatch.watch(model, opt, every=1000, console=False, jsonl=str(path))
    for step in range(3):
        loss = model(torch.randn(5, 2, 4)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step(); monitor.step(loss)
    monitor.close()
    run = load_run(str(path))
    run.steps[0]["layers"]["cell:0"]["timestep_grad_norms"] = None  # step 0 is probed: hide it
    (hm,) = heatmaps(run)
    assert hm.layer is None and hm.steps == [0, 1, 2]
    assert hm.columns == [s.timestep_output_grad_norms["cell"] for s in monitor.history]


def test_render_writes_an_image_with_alerts_and_nan(tmp_path):
    pytest.importorskip("matplotlib")
    from gradwatch import LayerStats, StepStats

    path = tmp_path / "alerts.jsonl"
    sink = JsonlSink(path)
    for step in range(4):
        norms = [10.0 ** -t for t in range(6)] if step != 2 else [1.0, float("nan"), 0.0, 1e-3, 1e-3, 1e-3]
        layer = LayerStats("rnn", 0, "RNN", 1.0 + step, 2.0, 0.01, 0.005, timestep_grad_norms=norms)
        stats = StepStats(step, 0.5, 1.0 + step if step != 2 else float("inf"), {("rnn", 0): layer}, probed=True)
        alerts = [Alert("vanishing", "temporal_decay", "warning", step, "rnn", 0, 5, 1e-5, 1e-3, "use an LSTM")] if step == 1 else []
        sink.on_step(stats, alerts)
    sink.close(None)
    out = tmp_path / "report.png"
    assert main(["plot", str(path), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000


def test_render_a_real_run(recorded_run, tmp_path):
    pytest.importorskip("matplotlib")
    path, _ = recorded_run
    out = tmp_path / "real.svg"
    render(load_run(str(path)), str(out))
    assert out.read_text().lstrip().startswith("<?xml")


def _corrupt(tmp_path, recorded_run, mutate):
    path, _ = recorded_run
    lines = path.read_text().split("\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(mutate(lines))
    return str(bad)


@pytest.mark.parametrize(
    "mutate,line,message",
    [
        (lambda ls: "\n".join(ls[:3] + [ls[3][:40]] + ls[4:]), 4, "not valid JSON"),
        (lambda ls: "\n".join(ls[:4] + [ls[4][: len(ls[4]) // 2]]), 5, "cut short"),
        (lambda ls: "\n".join(ls[:2] + ["[1, 2, 3]"] + ls[2:]), 3, "not a gradwatch record"),
        (lambda ls: "\n".join(ls[:2] + [ls[2].replace('"schema":1', '"schema":99')] + ls[3:]), 3, "upgrade"),
        (lambda ls: "\n".join(ls[:2] + [ls[2].replace('"grad_norm"', '"gn"', 1)] + ls[3:]), 3, "'grad_norm'"),
    ],
    ids=["malformed", "truncated", "not-a-record", "newer-schema", "missing-field"],
)
def test_bad_lines_are_named(tmp_path, recorded_run, mutate, line, message, capsys):
    bad = _corrupt(tmp_path, recorded_run, mutate)
    with pytest.raises(GradwatchError, match=f"line {line}: .*{message}"):
        load_run(bad)
    assert main(["plot", bad, "-o", str(tmp_path / "x.png")]) == 2
    assert f"bad.jsonl line {line}:" in capsys.readouterr().err


def test_a_file_without_steps_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text(json.dumps({"schema": 1, "type": "run"}) + "\n")
    with pytest.raises(GradwatchError, match="no step records"):
        load_run(str(path))


# ---------------------------------------------------------------------------------------------- readable
@pytest.mark.parametrize("label, text", [
    ("$\\mathdefault{10^{-2}}$", "10⁻²"),
    ("$\\mathdefault{10^{0}}$", "10⁰"),
    ("$\\mathdefault{2\\times10^{-5}}$", "2×10⁻⁵"),
    ("$\\mathdefault{10^{12}}$", "10¹²"),
    ("0.5", "0.5"),
    ("", ""),
])
def test_tick_text_writes_log_labels_in_plain_unicode(label, text):
    assert tick_text(label) == text


def _exploding_run(tmp_path, losses):
    from gradwatch import LayerStats, StepStats

    path = tmp_path / "exploding.jsonl"
    sink = JsonlSink(path)
    for step, loss in enumerate(losses):
        norms = [10.0 ** (-t / 4) for t in range(12)]
        layer = LayerStats("rnn", 0, "RNN", 10.0 ** step, 2.0, 0.01, 10.0 ** (step - 4), timestep_grad_norms=norms)
        stats = StepStats(step, loss, 10.0 ** step, {("rnn", 0): layer}, probed=True)
        alerts = [Alert("exploding", "norm_spike", "critical", step, "rnn", 0, None, 1e3, 10.0, "spike.", remedy="clip")] \
            if step == len(losses) - 1 else []
        sink.on_step(stats, alerts)
    sink.close(None)
    return load_run(str(path))


def _tick_labels(fig):
    return [t.get_text() for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
            for t in axis.get_ticklabels(which="both") if t.get_visible()]


def test_log_axes_and_colour_bars_show_real_tick_labels(tmp_path):
    """Every log axis and colour bar showed raw '$\\mathdefault{10^{-2}}$' labels."""
    plt = pytest.importorskip("matplotlib.pyplot")
    fig = figure(_exploding_run(tmp_path, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    labels = _tick_labels(fig)
    plt.close(fig)
    assert not [t for t in labels if "$" in t or "mathdefault" in t]
    assert {"10⁰", "10²", "10⁻²"} <= set(labels)  # gradient norm, colour bar, update ratio


@pytest.mark.parametrize("losses, scale", [
    ([1.0, 0.9, 0.8, 0.85, 40.0, 2000.0], "log"),
    ([1.0, 0.9, 0.8, 0.85, 0.7, 0.6], "linear"),
    ([1.0, -0.5, 3.0, 40.0, 2000.0, 5.0], "linear"),
], ids=["explodes", "learns", "negative"])
def test_the_loss_axis_is_logarithmic_when_the_loss_spans_decades(tmp_path, losses, scale):
    """The exploding run's loss panel was linear: flat until the explosion."""
    plt = pytest.importorskip("matplotlib.pyplot")
    fig = figure(_exploding_run(tmp_path, losses))
    loss_axis = next(ax for ax in fig.axes if ax.get_ylabel() == "loss")
    assert loss_axis.get_yscale() == scale
    plt.close(fig)


def test_alerts_and_marks_have_a_legend(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    run = _exploding_run(tmp_path, [1.0, 2.0, 3.0])
    run.steps[1]["layers"]["rnn:0"]["timestep_grad_norms"][3] = float("nan")
    fig = figure(run)
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    plt.close(fig)
    assert texts[0] == "critical: exploding/norm_spike"
    assert "NaN/Inf" in texts


def test_plot_without_matplotlib_is_one_line_naming_the_command_once(recorded_run, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path, _ = recorded_run
    assert main(["plot", str(path), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err == "gradwatch plot: error: needs matplotlib: pip install 'gradwatch[plot]'.\n"


def _noisy_run(tmp_path, losses):
    from gradwatch import LayerStats, StepStats

    path = tmp_path / "noisy.jsonl"
    sink = JsonlSink(path)
    for step, loss in enumerate(losses):
        layer = LayerStats("rnn", 0, "RNN", 1.0, 2.0, 0.01, 1e-3)
        sink.on_step(StepStats(step, loss, 1.0, {("rnn", 0): layer}), [])
    sink.close(None)
    return load_run(str(path))


def test_a_long_noisy_loss_is_drawn_with_its_running_mean(tmp_path):
    """A batch-1 run's loss panel (3,000 steps of per-sample losses) was a band of noise: the trend a user
    reads from the printed averages did not show."""
    plt = pytest.importorskip("matplotlib.pyplot")
    import numpy as np

    rng = np.random.default_rng(0)
    losses = [float(v) for v in np.linspace(1.1, 0.8, 3000) * rng.gamma(4.0, 0.25, 3000)]
    losses[1500] = float("nan")
    fig = figure(_noisy_run(tmp_path, losses))
    loss_axis = next(ax for ax in fig.axes if ax.get_ylabel() == "loss")
    raw, mean = loss_axis.get_lines()
    assert mean.get_label() == "mean of 60 steps"
    windows = [losses[i - 59 : i + 1] for i in range(59, 3000)]  # NaN wherever the window holds it
    expected = [math.nan if any(map(math.isnan, w)) else math.fsum(w) / 60 for w in windows]
    assert np.allclose(np.asarray(mean.get_ydata(), dtype=float), expected, rtol=1e-9, equal_nan=True)
    assert list(mean.get_xdata()) == list(range(59, 3000))
    plt.close(fig)
    short = figure(_noisy_run(tmp_path, losses[:199]))
    assert len(next(ax for ax in short.axes if ax.get_ylabel() == "loss").get_lines()) == 1  # 199 losses: as before
    plt.close(short)
