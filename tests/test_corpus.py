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


@pytest.mark.parametrize("split", ["fresh", "fresh2", "fresh3", "fresh4", "fresh5", "fresh6", "fresh7", "fresh8"])
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


# issue #13 session 5: "ambiguous at step 40" — the stuck label rule on the losses of steps 0-40 (raw losses only)
_SLOW_STARTER = [1.39] * 45 + [1.39 * 0.95**i for i in range(1, 76)]        # at chance until step 44, then learns
_FALLS_THEN_STUCK = [1.39 * 0.97**i for i in range(41)] + [1.39] * 79       # learning at 40, back at chance later
# steps 0-2 at 1.0, 3-20 at 0.5; steps 21-40 hold eleven 1.0 and nine 0.5 (the last 1.0 at step 40): the median of
# steps 21-40 is 1.0 (stuck), that of steps 20-39 is 0.75 (not): only a rule that sees the loss of step 40 says stuck
_BELOW_CHANCE = [3.6] * 3 + [2.7] * 38 + [2.7 * 0.97**i for i in range(1, 80)]  # a character model under chance
_STEP_40_DECIDES = [1.0] * 3 + [0.5] * 18 + [1.0, 0.5] * 9 + [1.0, 1.0] + [0.3] * 79


@pytest.mark.parametrize("losses, chance, full_label, stuck_at_40", [
    (_SLOW_STARTER, math.log(4), "healthy", True),
    (_FALLS_THEN_STUCK, math.log(4), "stuck", False),
    ([1.0] * 3 + [0.9] * 38 + [0.5] * 79, 1.0, "healthy", True),             # at 0.9 x the reference: the margin is >=
    ([1.0] * 3 + [0.89] * 38 + [0.5] * 79, 1.0, "healthy", False),           # just under it
    ([1.0] * 3 + [0.7] * 38 + [0.5] * 79, 0.75, "healthy", True),            # the reference is min(start, chance)
    (_STEP_40_DECIDES, 1.0, "healthy", True),
    ([1.0] * 30 + [float("nan")] * 2, 1.0, "diverged", False),                # diverged by step 40 is not stuck
], ids=["slow-starter-at-chance", "falls-then-stuck", "at-the-0.9-margin", "under-the-margin", "chance-below-start",
        "step-40-included", "diverged"])
def test_stuck_at_step_40_applies_the_stuck_label_rule_to_the_first_41_losses(losses, chance, full_label, stuck_at_40):
    assert corpus.label_run(losses, chance)[0] == full_label
    assert corpus.stuck_at(losses, chance) is stuck_at_40
    assert corpus.stuck_at(losses, chance) == (corpus.label_run(losses[:41], chance)[0] == "stuck")


@pytest.mark.parametrize("losses, chance, flat", [
    (_SLOW_STARTER, math.log(4), True),                                     # 1.39 >= log 4 = 1.386
    ([1.39] * 45 + [0.5] * 75, 1.39, True),                                  # at the reference itself
    ([1.0] * 3 + [0.9] * 38 + [0.5] * 79, 1.0, False),                       # stuck with the margin, not without it
    ([3.6] * 3 + [2.83] * 38 + [2.0] * 79, 2.83, True),                      # at chance, below the start
    ([3.6] * 3 + [2.7] * 38 + [2.0] * 79, 2.83, False),                      # a character model just below chance
    ([1.0] * 30 + [float("nan")] * 2, 1.0, False),
], ids=["slow-starter-above-chance", "at-the-reference", "inside-the-margin", "at-chance", "below-chance",
        "diverged"])
def test_stuck_at_step_40_without_the_margin_needs_the_median_of_steps_21_to_40_at_the_reference(losses, chance, flat):
    assert corpus.stuck_at(losses, chance, margin=False) is flat


@pytest.mark.parametrize("stuck, not_yet, healthy_ambiguous, bound", [
    (93, 3, 6, 6 * 86 / 90),        # fresh5's counts: 89 stuck runs needed, 3 of them given free, 86 of 90 ambiguous
    (20, 0, 4, 4 * 19 / 20),
    (20, 1, 4, 4 * 18 / 19),
    (20, 2, 4, 4 * 17 / 18),
    (40, 2, 0, 0.0),                 # no ambiguous healthy run: nothing forced
    (20, 19, 4, 0.0),                # the runs not stuck at 40 are enough on their own
    (0, 0, 3, 0.0),
], ids=["fresh5", "none-not-yet", "one-not-yet", "two-not-yet", "no-ambiguous-healthy", "enough-not-yet", "no-stuck"])
def test_healthy_warned_bound_is_the_share_of_ambiguous_stuck_runs_still_needed(stuck, not_yet, healthy_ambiguous,
                                                                                bound):
    assert corpus.healthy_warned_bound(stuck, not_yet, healthy_ambiguous) == pytest.approx(bound)


def test_report_counts_ambiguous_runs_and_names_the_false_alarms_they_do_not_explain():
    spec = corpus.make_specs(12, quick=True)[0]

    def run(losses, chance):
        return {"spec": dict(spec.__dict__), "losses": losses, "chance": chance, "records": []}

    def warning(step):
        return corpus.Alert(problem="vanishing", sign="slow_progress", severity="warning", step=step, module=None,
                            layer=None, timestep=None, value=0.0, threshold=0.0, evidence="")

    verdicts = [corpus.judge(run(_SLOW_STARTER, math.log(4)), [warning(39)]),               # ambiguous, warned
                corpus.judge(run([1.0 * 0.97**i for i in range(120)], 1.0), [warning(60)]),  # clear, warned
                corpus.judge(run(_BELOW_CHANCE, 2.83), []),                                     # ambiguous, not warned
                corpus.judge(run(_FALLS_THEN_STUCK, math.log(4)), [warning(38)]),             # stuck, not yet at 40
                corpus.judge(run([1.39] * 120, math.log(4)), [warning(39)])]                  # stuck, stuck at 40
    assert [v["label"] for v in verdicts] == ["healthy", "healthy", "healthy", "stuck", "stuck"]
    result = corpus.evaluate(verdicts)
    assert result["healthy_ambiguous"] == (2, 3) and result["healthy_ambiguous_warned"] == (1, 2)
    assert result["stuck_not_yet"] == (1, 2) and result["stuck_not_yet_warned"] == (1, 1)
    assert result["healthy_warned_bound"] == pytest.approx(2 * (2 - 1) / 1)
    assert result["healthy_warned_clear"] == [spec.name]
    text = corpus.markdown(result, half="all")
    assert result["healthy_flat"] == (1, 3) and result["stuck_not_flat"] == (1, 2)
    assert result["healthy_warned_bound_flat"] == pytest.approx(1 * (2 - 1) / 1)
    assert "stuck runs not yet stuck by that rule at step 40" in text and "| 2.0 / 1.0 vs 2 of 3 |" in text
    assert f"not ambiguous at step 40 (not stuck by the label rule on steps 0-40): {spec.name}." in text


def test_the_rebuilt_chance_levels_equal_what_live_runs_recorded():
    # issue #13 session 6: cached runs predate StepStats.chance_loss; `report` rebuilds it from the runs' batches
    specs = corpus.make_specs(12, quick=True)
    picked = list({s.task: s for s in specs}.values())[:3]
    assert len({s.task for s in picked}) == 3
    assert corpus.check_inferred(picked, log=lambda line: None) < 1e-6
    run = corpus.record_run(picked[0])
    assert corpus.inferred_chances(run) == [r.chance_loss for r in run["records"]]
    assert [r.chance_loss for r in corpus.with_chances(run, inferred=False)] == [None] * len(run["records"])
