"""`gradwatch demo`: the default shows a vanishing warning with its remedy; every scenario warns before its failure."""

from __future__ import annotations

import math

from gradwatch.cli.demo import SCENARIOS, run_demo


def _serious(monitor):
    return [a for a in monitor.alerts if a.severity in ("warning", "critical")]


def test_default_demo_shows_a_vanishing_warning_with_its_remedy():
    # issue #13: the default demo (the README's main command) ended with no warning at all
    import argparse

    from gradwatch.cli.demo import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).scenario == "vanishing"
    monitor = run_demo("vanishing", steps=40, console=False)
    vanishing = [a for a in _serious(monitor) if a.problem == "vanishing"]
    assert vanishing and vanishing[0].step < 40
    assert "Remedy:" in vanishing[0].message and "LSTM" in vanishing[0].message


def test_exploding_demo_warns_long_before_nan():
    # issue #13: the first alert came at step 48, one step before NaN
    monitor = run_demo("exploding", steps=52, console=False)
    losses = [r.loss for r in monitor.history]
    nan_at = next(i for i, v in enumerate(losses) if not math.isfinite(v))
    first = min(a.step for a in _serious(monitor) if a.problem == "exploding")
    assert nan_at - first >= 5


def test_healthy_demo_stays_quiet():
    assert _serious(run_demo("healthy", steps=150, console=False)) == []


def test_nan_demo_is_reported_at_the_corrupted_step():
    at = SCENARIOS["nan"].nan_at_step
    monitor = run_demo("nan", steps=at + 2, console=False)
    (first,) = [a for a in _serious(monitor) if a.step <= at]
    assert (first.sign, first.step) == ("non_finite", at)
