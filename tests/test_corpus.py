"""The labelled run corpus (benchmarks/corpus.py): labels from raw losses, the family split, offline replay."""

from __future__ import annotations

import math

import pytest

from benchmark_modules import load_benchmark
from gradwatch import GradwatchError

corpus = load_benchmark("corpus")


@pytest.mark.parametrize("losses, chance, label, step", [
    ([1.0, 1.1, 2.0, math.nan], 1.0, "diverged", 3),
    ([1.0, 1.2, 150.0, 1.0], 1.0, "diverged", 2),
    ([1.39] * 100, 1.386, "stuck", None),
    ([1.2] + [0.168] * 99, 1 / 6, "stuck", None),          # dropped to chance: still no better than chance
    ([1.0] * 50 + [0.3, 0.3, 0.9, 0.9, 0.9, 0.3, 0.3, 0.3, 0.3, 0.3, 0.9, 0.9, 0.9, 0.9, 0.9] * 3 + [0.3] * 5,
     1.0, "oscillating", None),
    ([1.0 * 0.97**i for i in range(100)], 1.0, "healthy", None),
    ([1.0 - 0.0015 * i for i in range(100)], 1.0, "slow", None),
    ([1.0, 1.0, 1.0] + [4.0] * 6 + [1.0 * 0.95**i for i in range(91)], 1.0, "recovered", None),
    ([1.0, 1.0, 1.0, 30.0] + [1.0 * 0.97**i for i in range(96)], 1.0, "healthy", None),
], ids=["nan", "x100", "at-chance", "drop-to-chance", "oscillating", "healthy", "slow", "recovered",
        "one-hard-sample-is-still-healthy"])
def test_labels_come_from_raw_losses(losses, chance, label, step):
    assert corpus.label_run(losses, chance) == (label, step)


@pytest.mark.parametrize("batch, one_step, label", [
    (32, True, "recovered"), (4, True, "recovered"), (1, True, "healthy"), (32, False, "healthy"),
], ids=["batch-32", "batch-4", "batch-1-one-hard-sample", "session-4-labels"])
def test_one_step_loss_jump_at_batch_4_or_more_is_recovered_not_healthy(batch, one_step, label):
    # issue #13 session 5: held-out 245 (batch 32, loss 1.41 -> 2.46 -> 6.5 -> 4.2, then converged) was "healthy" because
    # 'recovered' needed a 5-step median >= 3x the start; a batch mean tripled by one step is an instability it survived
    losses = [1.41, 2.46, 6.5, 4.2, 2.72, 2.64, 1.54] + [1.0 * 0.95**i for i in range(93)]
    assert corpus.label_run(losses, math.log(4), batch=batch, one_step=one_step) == (label, None)


def test_run_label_applies_the_named_label_rules():
    run = {"losses": [1.0, 3.5] + [0.9**i for i in range(98)], "chance": 1.0, "spec": {"batch": 8}}
    assert [corpus.run_label(run, labels)[0] for labels in corpus.LABEL_SETS] == ["recovered", "healthy", "healthy"]
    with pytest.raises(ValueError, match="session5"):
        corpus.run_label(run, "session6")


def test_families_split_into_two_stable_halves():
    specs = corpus.make_specs(330)
    assert len(specs) == 330 and len({s.name for s in specs}) == 330
    halves = {s.half for s in specs}
    assert halves == {"calibration", "held-out"}
    by_family: dict[str, set[str]] = {}
    for s in specs:
        by_family.setdefault(s.family, set()).add(s.half)
    assert all(len(h) == 1 for h in by_family.values())  # a family never straddles the split
    assert {s.task for s in specs} == set(corpus.TASKS) and {s.cell for s in specs} == set(corpus.CELLS)
    assert {s.batch for s in specs} >= {1, 64} and max(s.timesteps for s in specs) == 500


@pytest.mark.parametrize("split", ["fresh", "fresh2", "fresh3", "fresh4", "fresh5"])
def test_fresh_splits_hold_no_calibration_family_and_new_seeds(split):
    # issue #13 session 4: a fresh split judges the detectors on runs nobody tuned on: no family of the calibration
    # half, no (family, seed) of the main corpus, some families the main corpus never ran
    main = corpus.make_specs(330)
    fresh = corpus.make_specs(corpus.FRESH_N, fresh=split)
    assert len({s.name for s in fresh}) == corpus.FRESH_N and {s.half for s in fresh} == {split}
    calibration = {s.family for s in main if s.half == "calibration"}
    assert not {s.family for s in fresh} & calibration
    assert not {(s.family, s.seed) for s in fresh} & {(s.family, s.seed) for s in main}
    assert {s.optimizer for s in fresh} >= set(corpus.FRESH_OPTIMIZERS)
    assert not {s.name for s in fresh} & {s.name for s in main}  # distinct cache files


def test_chance_option_reaches_the_detectors():
    spec = corpus.make_specs(12, quick=True)[0]
    run = corpus.record_run(spec)
    result, verdicts, _ = corpus.report([run], half="all", chance=True)
    assert result["runs"] == 1 and verdicts[0]["name"] == spec.name
    corpus.report([dict(run, chance=-1.0)], half="all")  # without --chance the run's chance loss is not used
    with pytest.raises(GradwatchError, match="chance_loss"):  # with it, each run's own chance loss is passed
        corpus.report([dict(run, chance=-1.0)], half="all", chance=True)


def test_offline_replay_reproduces_the_live_alerts():
    spec = corpus.make_specs(12, quick=True)[8]
    run = corpus.record_run(spec)
    assert run["records"] and len(run["records"]) == len(run["losses"])
    live = [(a.step, a.sign, a.severity, a.message) for a in run["live_alerts"]]
    assert [(a.step, a.sign, a.severity, a.message) for a in corpus.replay(run["records"])] == live


def test_quick_report_runs_in_seconds(tmp_path, capsys):
    assert corpus.main(["report", "--quick", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| problem | target | measured |" in text and "stuck runs warned as vanishing" in text
    assert (tmp_path / "corpus.md").read_text().strip() == text.strip()
    assert (tmp_path / "corpus.png").stat().st_size > 10_000
