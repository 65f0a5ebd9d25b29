"""Console output: the rich live panel (rendered into a fixed-width Console) and plain logging lines."""

from __future__ import annotations

import collections
import importlib
import io
import logging

import pytest
import torch
from rich.console import Console

import gradwatch
from gradwatch.detectors import build_detectors
from gradwatch.records import Alert, DirectionStats, LayerStats, NonFinite, StepStats
from gradwatch.sinks.console import RichConsoleSink, heat_strip, render_summary, sparkline
from gradwatch.sinks.logging_sink import LoggingSink, alert_lines, severity_counts, summary_lines

watch_module = importlib.import_module("gradwatch.watch")  # the module, not the function gradwatch.watch


def layer(index: int = 0, *, grad: float = 0.05, ts: list[float] | None = None, dead: float | None = None,
          sat: float | None = None, ratio: float = 2e-3) -> LayerStats:
    return LayerStats("encoder.lstm", index, "LSTM", grad, 4.0, ratio * 4.0, ratio, timestep_grad_norms=ts,
                      dead_fraction=dead, saturated_fraction=sat, directions=[DirectionStats(grad, 4.0, ratio)])


def record(step: int, **kw) -> StepStats:
    ls = [layer(0, **kw), layer(1, **kw)]
    return StepStats(step, 0.5, 0.1, {(x.module, x.layer): x for x in ls}, probed=kw.get("ts") is not None)


def alert(severity: str = "warning", sign: str = "norm_spike", step: int = 3, layer_index: int | None = 1) -> Alert:
    return Alert("exploding", sign, severity, step, "encoder.lstm" if layer_index is not None else None, layer_index,
                 None, 25.0, 10.0, "total gradient norm 25 is 25× its median [1.0].", remedy="clip=2.")


def recording_console(width: int = 120) -> Console:
    return Console(record=True, width=width, file=io.StringIO(), force_terminal=False, color_system=None)


# ---------------------------------------------------------------------------------------- primitives
def test_sparkline_is_log_scaled():
    assert sparkline([1e-3, 1e-2, 1e-1, 1.0]).plain == "▁▃▆█"
    assert sparkline([1.0, float("nan"), 0.0]).plain == "▄! "


@pytest.mark.parametrize("values, expected", [
    ([10.0 ** (t - 8) for t in range(9)], " ▁▂▃▄▅▆▇█"),
    ([10.0 ** (-t) for t in range(9)], "█▇▆▅▄▃▂▁ "),
    ([1.0, float("inf"), 1.0], "█!█"),
], ids=["vanishing-fades-left", "exploding-peaks-left", "non-finite"])
def test_heat_strip_one_level_per_decade(values, expected):
    assert heat_strip(values, width=32).plain == expected


def test_heat_strip_squeezes_long_sequences():
    strip = heat_strip([1e-9] * 50 + [1.0] * 50, width=10)
    assert strip.plain == " " * 5 + "█" * 5


# ---------------------------------------------------------------------------------------- rich sink
def test_panel_shows_every_layer():
    con = recording_console()
    sink = RichConsoleSink(con, live=False, strip_width=16)
    for step in range(5):
        sink.on_step(record(step, ts=[1e-9] * 8 + [1.0] * 8 if step == 0 else None, dead=0.0, sat=0.6), [])
    sink.on_step(record(5), [alert()])
    con.print(sink.panel())
    text = con.export_text()
    assert "WARNING exploding/norm_spike at step 3 ('encoder.lstm' layer 1): total gradient norm 25" in text
    assert "[1.0]" in text  # alert text is printed verbatim, not parsed as rich markup
    assert "gradwatch · step 5 · loss 0.5" in text
    assert "encoder.lstm:0 LSTM" in text and "encoder.lstm:1 LSTM" in text
    assert "5.00e-02" in text and "2.00e-03" in text and "0%/60%" in text
    assert "        ████████" in text  # heat strip of the step-0 probe: 9 decades below the max is blank
    assert "! norm_spike" in text and "ok" in text
    assert "1 warning" in text


def test_info_alerts_only_change_the_status():
    con = recording_console()
    sink = RichConsoleSink(con, live=False)
    sink.on_step(record(0), [alert("info", "temporal_decay")])
    assert con.export_text() == ""
    con.print(sink.panel())
    assert "i temporal_decay" in con.export_text()


def test_model_level_alerts_go_to_the_footer():
    con = recording_console()
    sink = RichConsoleSink(con, live=False)
    sink.on_step(record(0), [alert("critical", layer_index=None)])
    con.print(sink.panel())
    assert "model: ✖ norm_spike" in con.export_text()


def test_close_prints_panel_and_summary():
    suite = build_detectors({})
    con = recording_console()
    sink = RichConsoleSink(con, live=False)
    nan = StepStats(0, float("nan"), 0.1, {("encoder.lstm", 0): layer(0)}, nonfinite=NonFinite("loss", None, None, None))
    sink.on_step(nan, suite.update(nan))
    sink.close(suite.summary())
    text = con.export_text()
    assert "CRITICAL exploding/non_finite at step 0 (whole model)" in text
    assert "1 step watched; 1 alert (1 critical) on 1 sign." in text
    assert "remedy: only the loss is non-finite" in text


def test_live_panel_in_a_terminal_refreshes_and_stops():
    out = io.StringIO()
    con = Console(file=out, width=100, force_terminal=True, color_system="standard")
    sink = RichConsoleSink(con, refresh_per_second=20)
    assert sink.live
    sink.on_step(record(0), [alert()])
    assert sink._live is not None and sink._live.is_started
    sink.on_step(record(1), [])
    sink.close(build_detectors({}).summary())
    assert sink._live is None
    text = out.getvalue()
    assert "\x1b[" in text and "encoder.lstm:1" in text and "exploding/norm_spike" in text


# ---------------------------------------------------------------------------------------- logging sink
def test_logging_lines_are_plain(caplog, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # away from a terminal: 100 columns
    caplog.set_level(logging.INFO, logger="gradwatch")
    sink = LoggingSink()
    sink.on_step(record(0), [alert("warning"), alert("info", "temporal_decay"), alert("critical", "non_finite")])
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [lv for lv, _ in levels] == [logging.WARNING, logging.INFO, logging.CRITICAL]
    assert levels[0][1] == "\n".join(alert_lines(alert("warning"), 100))
    assert all("\x1b" not in msg for _, msg in levels)


def test_logging_summary_on_close(caplog):
    caplog.set_level(logging.INFO, logger="gradwatch")
    suite = build_detectors({})
    # a huge step is judged once it is not shrinking, i.e. from the second step on (issue #13: Adam's first steps)
    for step, ratio in enumerate([2.0, 3.0]):
        stats = StepStats(step, 1.0, 0.1, {("encoder.lstm", 0): layer(0, ratio=ratio)})
        LoggingSink().on_step(stats, suite.update(stats))
    caplog.clear()
    LoggingSink().close(suite.summary())
    assert caplog.records[0].getMessage() == "gradwatch: 2 steps watched; 1 alert (1 critical) on 1 sign."
    assert {r.levelno for r in caplog.records} == {logging.WARNING}


# ---------------------------------------------------------------------------------------- watch(console=...)
def sink_types(**kw) -> list[str]:
    monitor = gradwatch.watch(torch.nn.GRU(3, 4), **kw)
    try:
        return [type(s).__name__ for s in monitor._sinks]
    finally:
        monitor.close()


@pytest.mark.parametrize("console, tty, expected", [
    (False, True, []),
    ("logging", True, ["LoggingSink"]),
    ("rich", False, ["RichConsoleSink"]),
    ("auto", False, ["LoggingSink"]),
    ("auto", True, ["RichConsoleSink"]),
    (True, False, ["LoggingSink"]),
], ids=["off", "logging", "rich", "auto-no-tty", "auto-tty", "true-no-tty"])
def test_console_choice(monkeypatch, console, tty, expected):
    monkeypatch.setattr(watch_module, "_stdout_is_tty", lambda: tty)
    monkeypatch.setattr(RichConsoleSink, "close", lambda self, monitor: None)
    assert sink_types(console=console) == expected


def test_console_instance_is_used():
    con = recording_console()
    monitor = gradwatch.watch(torch.nn.GRU(3, 4), console=con)
    (sink,) = monitor._sinks
    assert isinstance(sink, RichConsoleSink) and sink.console is con and not sink.live
    monitor.close()


def test_bad_console_value():
    with pytest.raises(gradwatch.GradwatchError, match="'auto'"):
        gradwatch.watch(torch.nn.GRU(3, 4), console="fancy")


def test_only_rank_zero_prints(monkeypatch):
    monkeypatch.setattr(watch_module.distributed, "is_main_process", lambda: False)
    assert sink_types(console="rich") == []


def test_nan_in_training_is_printed_at_its_step():
    torch.manual_seed(0)
    rnn, head = torch.nn.GRU(3, 8, batch_first=True), torch.nn.Linear(8, 1)
    opt = torch.optim.SGD([*rnn.parameters(), *head.parameters()], lr=0.01)
    con = recording_console(width=160)
    monitor = gradwatch.watch(torch.nn.ModuleList([rnn, head]), opt, console=con)
    for step in range(4):
        x = torch.randn(4, 12, 3)
        if step == 2:
            x[1, 7] = float("nan")
        loss = head(rnn(x)[0][:, -1]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 2:
            opt.zero_grad(set_to_none=True)  # the user's guard: skip the poisoned update
        opt.step()
        monitor.step(loss)
        if step == 2:
            assert [a.sign for a in monitor.alerts] == ["non_finite"]  # reported as soon as the step ends
    monitor.close()
    text = con.export_text()
    assert "CRITICAL exploding/non_finite at step 2 ('0' layer 0, timestep 7): NaN/Inf already in the input sequence" in text
    assert "4 steps watched; 1 alert (1 critical) on 1 sign." in text


def test_an_existing_live_display_leaves_alerts_printing():
    # rich >= 14 nests the panel under the script's own Progress; older rich refuses a second
    # live display, and the sink then prints alerts without a panel
    from rich.progress import Progress

    out = io.StringIO()
    con = Console(file=out, width=100, force_terminal=True, color_system=None)
    sink = RichConsoleSink(con)
    with Progress(console=con):
        sink.on_step(record(0), [alert()])
        sink.on_step(record(1), [alert("critical", "non_finite", step=1)])
    sink.close(None)
    assert sink._live is None
    assert "CRITICAL exploding/non_finite at step 1" in out.getvalue()


# ---------------------------------------------------------------------------------------- 80 columns
def test_panel_at_80_columns_keeps_a_useful_sparkline_and_heat_strip():
    """At 80 columns the sparkline was 4 steps and the heat strip 8 cells wide."""
    con = recording_console(width=80)
    sink = RichConsoleSink(con, live=False)
    rnn = lambda i, grad: LayerStats("rnn", i, "RNN", grad, 4.0, 4e-3, 1e-3,  # noqa: E731
                                     timestep_grad_norms=[1.0] * 80, dead_fraction=0.0, saturated_fraction=0.0)
    for step in range(30):
        stats = StepStats(step, 0.5, 0.1, {("rnn", i): rnn(i, 0.05 * (1 + step % 7)) for i in (0, 1)}, probed=True)
        sink.on_step(stats, [Alert("vanishing", "temporal_decay", "warning", step, "rnn", 0, None, 1e-4, 1e-3,
                                   "decay.", remedy="use an LSTM.")] if step == 29 else [])
    con.print(sink.panel())
    panel = con.export_text().splitlines()[-6:]
    assert all(len(line) <= 80 for line in panel)
    header, row = panel[1], panel[2]
    assert int(header.split("last ")[1].split()[0]) >= 10
    assert "█" * 16 in row  # the per-timestep strip: every timestep at the maximum
    assert "rnn:0" in row and "! temporal_decay" in row


def test_alerts_wrap_at_the_console_width_with_a_hanging_indent():
    long = Alert("exploding", "oscillation", "warning", 39, None, None, None, 0.7, 0.5,
                 ("over the last 40 steps the loss went up and down 4 times " * 6).rstrip(), remedy="lower the learning "
                 "rate (÷3 to ÷10) or add a decay schedule; with momentum, reduce it (e.g. 0.9 → 0.5).")
    lines = alert_lines(long, 80)
    assert lines[0].startswith("WARNING exploding/oscillation at step 39 (whole model): over the last")
    assert all(len(line) <= 80 for line in lines) and all(line.startswith("    ") for line in lines[1:])
    assert sum(line.startswith("    Remedy: lower the learning rate") for line in lines) == 1
    con = recording_console(width=80)
    RichConsoleSink(con, live=False).on_step(record(39), [long])
    assert con.export_text().splitlines() == lines


def _summary_of_every_sign():
    from gradwatch.detectors.config import SIGNS
    from gradwatch.detectors.suite import AlertSummary, SummaryEntry

    evidence, remedy = ("evidence " * 30).rstrip(), ("do this and that " * 12).rstrip()
    entries = [SummaryEntry("exploding", sign, ("critical", "warning", "info")[i % 3], 3, 40, i, 140,
                            [f"encoder.lstm:{i}", "decoder.gru:0"], evidence, remedy)
               for i, sign in enumerate([*SIGNS, "a_future_sign"])]
    return AlertSummary(150, entries)


def test_closing_summary_fits_one_80x24_screen_and_keeps_its_indent():
    summary = _summary_of_every_sign()
    assert len(summary.entries) == 11
    counts = {"critical": 12, "warning": 9, "info": 9}
    con = recording_console(width=80)
    con.print(render_summary(summary, counts, width=80))
    lines = con.export_text().splitlines()
    assert len(lines) <= 22 and all(len(line) <= 80 for line in lines)
    body = [line[1:-1] for line in lines[1:-1]]  # inside the border
    assert body[0].strip() == "150 steps watched; 30 alerts (12 critical, 9 warning, 9 info) on 11 signs."
    assert all(line.startswith((" CRITICAL", " WARNING", " INFO", "   ", " … and")) for line in body[1:])
    assert "more sign" in body[-1]
    plain = summary_lines(summary, counts, width=80)
    assert len(plain) <= 22 and all(len(line) <= 80 for line in plain)
    assert " ".join(plain[:2]).split() == "gradwatch: 150 steps watched; 30 alerts (12 critical, 9 warning, 9 info) on 11 signs.".split()


def test_panel_and_summary_count_the_same_alerts():
    """The panel counted alerts and the summary counted signs: '4 critical' against '3 critical'."""
    from gradwatch.cli.demo import run_demo

    con = recording_console(width=100)
    monitor = run_demo("exploding", steps=60, every=5, console=con)
    text = con.export_text()
    by_severity = collections.Counter(a.severity for a in monitor.alerts)
    assert len(monitor.alerts) > len({a.sign for a in monitor.alerts})  # a sign raised twice
    expected = severity_counts(by_severity)
    assert f"alerts: {expected}" in text  # the panel
    assert f"{len(monitor.alerts)} alerts ({expected}) on" in text  # the summary


def test_summary_sign_line_with_many_held_back_alerts_keeps_its_count_at_80_columns():
    # seen in `gradwatch demo` at 80 columns: "...; steps 19-149; 4 alerts, 126 h…" (the count cut)
    from gradwatch.detectors.suite import AlertSummary, SummaryEntry

    entry = SummaryEntry("vanishing", "tiny_updates", "warning", reported=4, repeats=126, first_step=19,
                         last_step=149, locations=["rnn:0", "rnn:1"], remedy="raise the learning rate")
    lines = summary_lines(AlertSummary(150, [entry]), {"warning": 4}, width=80, headline=False)
    assert lines[0] == "  WARNING vanishing/tiny_updates at rnn:0, rnn:1; steps 19-149; 4+126 alerts"
    wide = summary_lines(AlertSummary(150, [entry]), {"warning": 4}, width=100, headline=False)
    assert wide[0].endswith("; 4 alerts, 126 held back")
