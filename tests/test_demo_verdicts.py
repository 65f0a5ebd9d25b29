"""`gradwatch demo`: the default shows a vanishing warning with its remedy; every scenario warns before its failure."""

from __future__ import annotations

import math

import pytest

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


@pytest.mark.parametrize("name", ["vanishing", "healthy", "exploding", "nan"])
def test_demo_chance_loss_is_the_mse_of_predicting_the_targets_mean(name):
    # reference: the per-timestep target mean over many batches, and the MSE it scores (what an input-blind model
    # reaches), measured on the demo's own data
    import torch

    from gradwatch.cli.demo import adding_batch

    scenario = SCENARIOS[name]
    generator = torch.Generator().manual_seed(1)
    x, y = adding_batch(scenario.timesteps, 20000, generator)
    if scenario.short_memory:
        y = x[..., 0] + torch.cat([torch.zeros_like(x[:1, :, 0]), x[:-1, :, 0]])
    if not scenario.dense_target:
        y = y[-1:]
    blind_mse = (y - y.mean(dim=1, keepdim=True)).pow(2).mean().item()
    assert scenario.chance_loss == pytest.approx(blind_mse, rel=0.02)


def test_default_demo_says_its_loss_sits_at_the_chance_level():
    # the demo passes its task's chance loss: the vanishing warning says the loss it is stuck at is the chance level
    monitor = run_demo("vanishing", steps=30, console=False)
    (stuck,) = [a for a in monitor.alerts if a.sign == "slow_progress"]
    assert "stuck at its starting level, the chance level (chance loss 0.167 you gave)" in stuck.message
    assert "Remedy:" in stuck.message and "LSTM" in stuck.message


def test_exploding_demo_is_not_given_the_chance_loss():
    # after its early spike the mean of its last 30 losses stays above chance: a slow_progress warning about the
    # explosion's aftermath would crowd the demo of an explosion
    monitor = run_demo("exploding", steps=52, console=False)
    assert [a for a in monitor.alerts if a.sign == "slow_progress"] == []
