"""The fast subset of the labelled scenario suite (benchmarks/scenarios.py --quick), 3 seeds each.

Real training runs through `gradwatch.watch`: every labelled sign is raised, healthy runs raise
no warning, the diverging run is warned about ≥ 3 steps before its loss turns non-finite, the
step-0 explosion is reported at step 0, and the injected NaN is located exactly.
"""

from __future__ import annotations

import pytest

from benchmark_modules import load_benchmark

scenarios = load_benchmark("scenarios")
QUICK = [s.name for s in scenarios.SCENARIOS if s.quick]


@pytest.fixture(scope="module")
def results():
    return scenarios.run_suite(quick=True)


def test_quick_subset_covers_every_problem():
    labels = {s.label for s in scenarios.SCENARIOS if s.quick}
    assert labels == {"healthy", "vanishing", "exploding"}
    quick = [s for s in scenarios.SCENARIOS if s.quick]
    assert any(s.diverges for s in quick) and any(s.at_step0 for s in quick) and any(s.nan for s in quick)


@pytest.mark.parametrize("name", QUICK)
def test_scenario_meets_every_criterion(results, name):
    summary = results["scenarios"][name]
    runs = [r for r in results["runs"] if r["scenario"] == name]
    assert len(runs) == 3
    assert summary["ok"], runs
    assert summary["false_alarms"] == 0
    if summary["recall"] is not None:
        assert summary["recall"] == 1.0
    if summary["min_lead_time"] is not None:
        assert summary["min_lead_time"] >= scenarios.LEAD_TIME
    if summary["nan_ok"] is not None:
        assert summary["nan_ok"] == 3


def test_markdown_table(results):
    table = scenarios.markdown(results)
    assert table.startswith("| scenario | label |")
    for name in QUICK:
        assert f"| {name} |" in table
    assert "false alarms on healthy runs: 0" in table and "all criteria met: yes" in table


def test_a_missed_sign_fails_the_verdict():
    sc = next(s for s in scenarios.SCENARIOS if s.name == "exploding_lr_warmup")
    rec = scenarios.RunRecord(sc.name, 0, alerts=[], losses=[1.0, float("nan")], steps=2, first_nonfinite_loss=1,
                              seconds=0.0)
    verdict = scenarios.judge(sc, rec)
    assert not verdict["ok"] and set(verdict["missed"]) == set(sc.signs) and verdict["lead_time"] is None
