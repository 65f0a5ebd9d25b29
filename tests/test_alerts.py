"""Alerts as structured data: fields in, text rendered at the edge (console, logging, JSONL,
TensorBoard, summary); `Severity` ordering; `constant_clipping` registered like every other sign."""

from __future__ import annotations

import ast
import io
import json
import logging
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

import gradwatch
from gradwatch.detectors import DetectorConfig, DetectorSuite, LargeUpdatesDetector
from gradwatch.detectors.clipping import ConstantClippingDetector, constant_clipping
from gradwatch.detectors.config import SIGNS
from gradwatch.errors import GradwatchError
from gradwatch.records import Alert, ClipEvent, Escalation, LayerStats, Location, Severity, StepStats
from gradwatch.sinks.console import RichConsoleSink, render_summary
from gradwatch.sinks.jsonl import step_record
from gradwatch.sinks.logging_sink import LoggingSink, alert_line, alert_lines, summary_parts
from gradwatch.sinks.tensorboard import _markdown

ROOT = Path(__file__).resolve().parent.parent

EVIDENCE = "total gradient norm 25 is 25× its median 1.0"
REMEDY = "clip the gradient norm at about its usual size, e.g. clip=2."


def structured(**kw) -> Alert:
    fields = dict(problem="exploding", sign="norm_spike", severity="warning", step=30, module="lstm", layer=0,
                  timestep=None, value=25.0, threshold=10.0, evidence=EVIDENCE, remedy=REMEDY)
    return Alert(**{**fields, **kw})


def record(step: int) -> StepStats:
    return StepStats(step, 0.5, 1.0, {("lstm", 0): LayerStats("lstm", 0, "LSTM", 1.0, 4.0, 0.1, 0.025)})


# ---------------------------------------------------------------------------------------- Severity
def test_severity_is_ordered_and_named():
    assert Severity.INFO < Severity.WARNING < Severity.CRITICAL
    assert [str(s) for s in sorted(Severity)] == ["info", "warning", "critical"]
    assert Severity.of("critical") is Severity.CRITICAL and Severity.of(Severity.INFO) is Severity.INFO
    assert max(structured(severity=s).level for s in ("warning", "critical", "info")) is Severity.CRITICAL


def test_the_suite_keeps_the_most_severe_of_one_step_by_severity_rank():
    class Two:
        signs = ("norm_spike",)

        def update(self, stats):
            return [structured(severity="critical", step=stats.step), structured(severity="warning", step=stats.step)]

        def reset(self):
            pass

    (only,) = DetectorSuite(DetectorConfig(), detectors=[Two()]).update(record(0))
    assert only.severity == "critical"


# ---------------------------------------------------------------------------------------- fields and text
def test_message_is_rendered_from_the_fields_as_in_v1():
    alert = structured()
    assert alert.message == f"{EVIDENCE} Remedy: {REMEDY}"
    assert structured(remedy="").message == EVIDENCE
    escalated = structured(escalated_from=Escalation("info", 19))
    assert escalated.message == f"Escalated from info (step 19). {EVIDENCE} Remedy: {REMEDY}"
    assert escalated.evidence == EVIDENCE  # the escalation is a field, not text in the evidence


def test_an_evidence_that_mentions_remedy_is_kept_as_written():
    """The gradwatch 1.0 one-string form ("evidence Remedy: remedy") is no longer split: text is never parsed back."""
    alert = structured(evidence=f"{EVIDENCE} Remedy: {REMEDY}", remedy="")
    assert alert.evidence == f"{EVIDENCE} Remedy: {REMEDY}" and alert.remedy == ""


def test_jsonl_keeps_the_v1_keys_in_order_and_adds_the_parts():
    d = structured(escalated_from=Escalation("info", 19)).to_dict()
    assert list(d)[:10] == ["problem", "sign", "severity", "step", "module", "layer", "timestep", "value",
                            "threshold", "message"]
    assert d["message"].startswith("Escalated from info (step 19). ")
    assert (d["evidence"], d["remedy"], d["escalated_from"]) == (EVIDENCE, REMEDY, {"severity": "info", "step": 19})
    line = json.loads(json.dumps(step_record(record(30), [structured()])))
    assert line["alerts"][0]["message"] == structured().message and line["alerts"][0]["escalated_from"] is None


def test_where_in_words_is_written_once():
    assert Location("lstm", 0, 13).words() == "'lstm' layer 0, timestep 13"
    assert Location(None).words() == "whole model" and Location(None).words(article=True) == "the model"
    assert Location("", 1).words() == "root module layer 1" and Location("", 1).words(article=True) == "the root module layer 1"
    assert (Location("lstm", 0).key(), Location("lstm").key(), Location().key()) == ("lstm:0", "lstm", "model")
    assert structured(timestep=4).location == Location("lstm", 0, 4)


def test_console_and_logging_render_the_same_alert_identically(caplog):
    alert = structured(severity="critical")
    logger = logging.getLogger("gradwatch.test_alerts")
    with caplog.at_level(logging.INFO, logger=logger.name):
        LoggingSink(logger, width=100).on_step(record(30), [alert])
    con = Console(record=True, width=100, file=io.StringIO(), force_terminal=False, color_system=None)
    RichConsoleSink(con, live=False).on_step(record(30), [alert])
    logged = caplog.records[0].getMessage().splitlines()
    assert con.export_text().splitlines() == logged == alert_lines(alert, 100)
    assert logged[0].startswith(f"CRITICAL exploding/norm_spike at step 30 ('lstm' layer 0): {EVIDENCE[:20]}")
    assert logged[-1].startswith("    Remedy: clip the gradient norm")
    assert alert_line(alert) == f"CRITICAL exploding/norm_spike at step 30 ('lstm' layer 0): {alert.message}"


def test_an_escalation_is_named_in_the_head_not_capitalised_mid_sentence():
    alert = structured(escalated_from=Escalation("info", 19))
    head = alert_lines(alert)[0]
    assert head.startswith("WARNING exploding/norm_spike at step 30 ('lstm' layer 0; escalated from info at step 19): total")
    assert "Escalated" not in head
    assert "escalated from info at step 19" in _markdown(alert) and "**Remedy:** clip" in _markdown(alert)


def test_the_suite_marks_an_escalation_as_a_field():
    def rec(step, ratio):
        ls = LayerStats("rnn", 0, "RNN", 1.0, 4.0, ratio * 4.0, ratio)
        return StepStats(step, None, 1.0, {("rnn", 0): ls})

    suite = DetectorSuite(DetectorConfig(cooldown=100), detectors=[LargeUpdatesDetector(DetectorConfig())])
    shown = [a for i, r in enumerate([0.6, 0.7, 0.8, 5.0, 6.0]) for a in suite.update(rec(i, r))]
    assert [(a.severity, a.escalated_from) for a in shown] == [("warning", None), ("critical", Escalation("warning", 1))]
    entry = suite.summary().entries[0]
    assert entry.escalated_from == Escalation("warning", 1) and entry.remedy == shown[-1].remedy


def test_summary_lines_carry_their_kind_and_the_panel_styles_from_it():
    class One:
        signs = ("norm_spike",)

        def update(self, stats):
            return [structured(severity="critical", step=stats.step)]

        def reset(self):
            pass

    suite = DetectorSuite(DetectorConfig(), detectors=[One()])
    suite.update(record(30))
    summary = suite.summary()
    parts = summary_parts(summary, {"critical": 1}, width=80)
    assert [p.kind for p in parts] == ["headline", "sign", "remedy"]
    assert parts[1].severity == "critical" and parts[2].text.startswith("    remedy: clip")
    panel = render_summary(summary, {"critical": 1}, width=80)
    styles = {str(span.style) for span in panel.renderable.spans}
    assert {"bold red", "green"} <= styles


# ---------------------------------------------------------------------------------------- constant_clipping
def clip_records(coefs: list[float], start: int = 0) -> list[StepStats]:
    return [StepStats(step=start + i, loss=None, grad_norm=2.0, layers={},
                      clip=ClipEvent("norm", 2.0, 2.0 * c, c, 1.0)) for i, c in enumerate(coefs)]


def test_constant_clipping_is_a_registered_sign():
    assert "constant_clipping" in SIGNS
    assert DetectorConfig.from_options({"disable": "constant_clipping"}).disable == ("constant_clipping",)


def test_disable_constant_clipping_raised_unknown_sign():
    """gradwatch 1.0: watch(disable="constant_clipping") raised GradwatchError (unknown sign)."""
    torch.manual_seed(0)
    m = nn.GRU(3, 4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, clip=1e-4, console=False, disable="constant_clipping", constant_clip_window=5)
    x = torch.randn(5, 2, 3)
    for _ in range(8):
        loss = m(x)[0].pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step(); mon.step(loss)
    mon.close()
    assert [s.clip is not None and s.clip.coefficient < 0.5 for s in mon.history] == [True] * 8
    assert not [a for a in mon.alerts if a.sign == "constant_clipping"]


def test_constant_clipping_thresholds_come_from_the_detector_config():
    coefs = [0.2] * 8 + [1.0] * 2  # 80 % clipped, hard
    assert constant_clipping(clip_records(coefs), window=10).severity == "info"
    cfg = DetectorConfig(constant_clip_window=10, constant_clip_warning_share=0.8)
    detector = ConstantClippingDetector(cfg)
    fired = [a for s in clip_records(coefs) for a in detector.update(s)]
    assert [a.severity for a in fired] == ["warning"] and fired[0].remedy.startswith("the threshold is probably")
    assert fired[0].message == f"{fired[0].evidence} Remedy: {fired[0].remedy}"
    with pytest.raises(GradwatchError, match="constant_clip_window"):
        DetectorConfig.from_options({"constant_clip_window": 0})


def test_constant_clipping_cooldown_is_an_option():
    coefs = [0.2] * 40
    quiet = ConstantClippingDetector(DetectorConfig(constant_clip_window=10, constant_clip_cooldown=100))
    chatty = ConstantClippingDetector(DetectorConfig(constant_clip_window=10, constant_clip_cooldown=10))
    assert [a.step for s in clip_records(coefs) for a in quiet.update(s)] == [9]
    assert [a.step for s in clip_records(coefs) for a in chatty.update(s)] == [9, 19, 29, 39]


def test_detectors_do_not_import_actions():
    for path in (ROOT / "gradwatch" / "detectors").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("actions") and "actions" not in (node.module or "").split(
                    "."), f"{path.name} imports {node.module}"
