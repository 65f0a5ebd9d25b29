"""When a step ends and which loss it records: optimizer subclasses, several optimizers, replaced
optimizers, `monitor.step()` without a loss, LBFGS closures, losses that are not one number.

Every loop runs twice, watched and unwatched, and must train bit for bit the same."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.cli import main
from models import SeqClassifier, lm_batch


def _loss(model, x, y):
    out = model(x)
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _run(loop, watch, **options):
    """Run `loop(model, monitor_or_None)` on a fresh seeded model; returns (parameters, losses, monitor)."""
    torch.manual_seed(0)
    model = SeqClassifier(nn.LSTM)
    box: dict = {}

    def make(optimizers):
        if watch:
            box["mon"] = gradwatch.watch(model, optimizers, console=False, **options)
        return box.get("mon")

    losses = loop(model, make)
    mon = box.get("mon")
    if mon is not None:
        mon.close()
    return [p.detach().clone() for p in model.parameters()], losses, mon


def _bitwise_same(loop, **options):
    """Train with and without watching; assert bit-identical parameters and losses; return the monitor."""
    plain_params, plain_losses, _ = _run(loop, False)
    params, losses, mon = _run(loop, True, **options)
    assert all(torch.equal(a, b) for a, b in zip(plain_params, params))
    assert all(torch.equal(a, b) for a, b in zip(plain_losses, losses))
    return mon


# ------------------------------------------------------------------ optimizer subclasses
class CountingAdam(torch.optim.Adam):
    """A user's optimizer subclass whose step() calls super().step()."""

    def step(self, closure=None):
        return super().step(closure)


def test_optimizer_subclass_calling_super_step_counts_one_step_per_update():
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])  # the parent class used anywhere: torch hooks its step too

    def loop(model, make):
        opt = CountingAdam(model.parameters(), lr=1e-3)
        mon, losses = make(opt), []
        for _ in range(4):
            loss = _loss(model, *lm_batch())
            opt.zero_grad(); loss.backward(); opt.step()
            if mon:
                mon.step(loss)
            losses.append(loss.detach())
        return losses

    mon = _bitwise_same(loop, every=1, strict=True)
    assert mon.steps == 4
    assert [s.step for s in mon.history] == [0, 1, 2, 3]
    assert all(s.loss is not None for s in mon.history)


def test_a_step_that_raised_does_not_swallow_the_next_steps():
    m = SeqClassifier(nn.GRU)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, console=False, strict=True)
    calls = {"n": 0}

    def flaky(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the user's own pre-hook fails once")

    handle = opt.register_step_pre_hook(flaky)
    for _ in range(3):
        loss = _loss(m, *lm_batch())
        opt.zero_grad(); loss.backward()
        try:
            opt.step()
        except RuntimeError:
            continue  # the loop skips that batch
        mon.step(loss)
    handle.remove()
    mon.close()
    assert mon.steps == 2 and all(s.loss is not None for s in mon.history)


# ------------------------------------------------------------------ several optimizers
def _two_optimizers(model):
    rnn = torch.optim.SGD(model.rnn.parameters(), lr=0.05)
    rest = torch.optim.Adam(list(model.emb.parameters()) + list(model.head.parameters()), lr=1e-3)
    return rnn, rest


@pytest.mark.parametrize("feed_loss", [True, False], ids=["with-monitor-step", "optimizers-only"])
def test_two_optimizers_stepping_different_numbers_of_times_give_one_record_per_iteration(feed_loss):
    """The rnn optimizer steps twice per iteration (two half batches), the other once."""

    def loop(model, make):
        rnn, rest = _two_optimizers(model)
        mon, losses = make([rnn, rest]), []
        for _ in range(5):
            x, y = lm_batch()
            for half in (slice(0, 2), slice(2, 4)):
                loss = _loss(model, x[:, half], y[:, half])
                rnn.zero_grad(); loss.backward(); rnn.step()
            rest.step(); rest.zero_grad()
            if mon and feed_loss:
                mon.step(loss)
            losses.append(loss.detach())
        return losses

    mon = _bitwise_same(loop, strict=True)
    assert mon.steps == 5 and len(mon.history) == 5
    assert [s.loss is not None for s in mon.history] == [feed_loss] * 5


def test_an_optimizer_stepping_every_other_iteration_with_monitor_step():
    def loop(model, make):
        rnn, rest = _two_optimizers(model)
        mon, losses = make([rnn, rest]), []
        for i in range(6):
            loss = _loss(model, *lm_batch())
            rnn.zero_grad(); loss.backward(); rnn.step()
            if i % 2 == 1:
                rest.step(); rest.zero_grad()
            if mon:
                mon.step(loss)
            losses.append(loss.detach())
        return losses

    mon = _bitwise_same(loop, strict=True)
    assert mon.steps == 6
    assert [s.loss for s in mon.history] == pytest.approx([float(v) for v in _run(loop, False)[1]])


def test_each_step_measures_every_update_of_the_iteration():
    """The record's update norm is the parameters' change over the whole iteration, both updates."""
    torch.manual_seed(0)
    m = SeqClassifier(nn.GRU)
    rnn, rest = _two_optimizers(m)
    mon = gradwatch.watch(m, [rnn, rest], console=False, strict=True)
    layer0 = [p for name, p in m.rnn.named_parameters() if name.endswith("_l0")]
    before = [p.detach().clone() for p in layer0]
    x, y = lm_batch()
    for half in (slice(0, 2), slice(2, 4)):
        loss = _loss(m, x[:, half], y[:, half])
        rnn.zero_grad(); loss.backward(); rnn.step()
    rest.step()
    mon.step(loss)
    mon.close()
    change = torch.linalg.vector_norm(torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(layer0, before)]))
    assert mon.history[0].layers[("rnn", 0)].update_norm == pytest.approx(float(change), rel=1e-5)


@pytest.mark.parametrize("feed_loss", [True, False], ids=["with-monitor-step", "optimizers-only"])
def test_an_optimizer_recreated_mid_run_and_added_replaces_the_old_one(feed_loss):
    def loop(model, make):
        opt = torch.optim.Adam(model.rnn.parameters(), lr=1e-3)
        head = torch.optim.SGD(list(model.emb.parameters()) + list(model.head.parameters()), lr=0.1)
        mon, losses = make([opt, head]), []
        for i in range(6):
            if i == 3:  # switch Adam -> SGD for the recurrent part
                opt = torch.optim.SGD(model.rnn.parameters(), lr=0.05)
                if mon:
                    mon.add_optimizer(opt)
            loss = _loss(model, *lm_batch())
            opt.zero_grad(); head.zero_grad(); loss.backward(); opt.step(); head.step()
            if mon and feed_loss:
                mon.step(loss)
            losses.append(loss.detach())
        return losses

    mon = _bitwise_same(loop, strict=True)
    assert mon.steps == 6 and [s.step for s in mon.history] == list(range(6))
    assert all(s.layers[("rnn", 0)].update_norm > 0 for s in mon.history)
    assert len(mon.optimizers) == 0  # closed; while open: the SGD and the head's optimizer


def test_an_optimizer_recreated_after_unfreezing_replaces_the_old_one():
    torch.manual_seed(0)
    m = SeqClassifier(nn.LSTM)
    m.rnn.requires_grad_(False)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    mon = gradwatch.watch(m, opt, console=False, strict=True)
    for i in range(5):
        if i == 2:
            m.rnn.requires_grad_(True)
            opt = torch.optim.Adam(m.parameters(), lr=1e-3)
            mon.add_optimizer(opt)
            assert mon.optimizers == [opt]
        loss = _loss(m, *lm_batch())
        opt.zero_grad(); loss.backward(); opt.step()
    mon.close()
    assert mon.steps == 5
    assert [s.layers[("rnn", 0)].has_grad for s in mon.history] == [False, False, True, True, True]


def test_optimizers_given_together_over_shared_parameters_are_all_kept():
    m = SeqClassifier(nn.GRU)
    a = torch.optim.SGD(m.parameters(), lr=0.1)
    b = torch.optim.SGD(m.rnn.parameters(), lr=0.1)
    mon = gradwatch.watch(m, [a, b], console=False)
    assert mon.optimizers == [a, b]
    mon.close()


# ------------------------------------------------------------------ monitor.step() without a loss
def test_monitor_step_without_a_loss_releases_the_step_at_once_on_cpu():
    def loop(model, make):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon, losses = make(opt), []
        for i in range(3):
            loss = _loss(model, *lm_batch())
            opt.zero_grad(); loss.backward(); opt.step()
            if mon:
                mon.step()
                assert len(mon.history) == i + 1 and mon.history[-1].step == i and mon.history[-1].loss is None
            losses.append(loss.detach())
        return losses

    assert _bitwise_same(loop, strict=True).steps == 3


# ------------------------------------------------------------------ LBFGS
def _lbfgs_loop(model, make):
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    mon, losses = make(opt), []
    x, y = lm_batch()
    evaluations = []

    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        evaluations.append(loss.detach().clone())
        return loss

    for _ in range(3):
        evaluations.clear()
        returned = opt.step(closure)
        assert len(evaluations) > 1 and torch.equal(returned, evaluations[0])
        if mon:
            mon.step(returned)
        losses.append(returned.detach())
    return losses


def test_lbfgs_records_the_loss_lbfgs_returns_the_first_closure_evaluation():
    mon = _bitwise_same(_lbfgs_loop, strict=True)
    plain = _run(_lbfgs_loop, False)[1]
    assert [s.loss for s in mon.history] == pytest.approx([float(v) for v in plain], rel=1e-6)


LBFGS_SCRIPT = """
    import json, sys
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.GRU(3, 5)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    x = torch.randn(6, 2, 3)
    first, calls = [], []

    def closure():
        opt.zero_grad()
        loss = model(x)[0].pow(2).mean()
        loss.backward()
        calls.append(float(loss.detach()))
        return loss

    for _ in range(3):
        calls.clear()
        opt.step(closure)
        first.append(calls[0])
    json.dump({"first": first, "calls": len(calls)}, open(sys.argv[1], "w"))
"""


def test_gradwatch_run_lbfgs_records_the_first_closure_loss_not_the_sum(tmp_path):
    import textwrap

    script = tmp_path / "lbfgs.py"
    script.write_text(textwrap.dedent(LBFGS_SCRIPT))
    jsonl, ref = tmp_path / "run.jsonl", tmp_path / "ref.json"
    assert main(["run", "--no-live", "--jsonl", str(jsonl), str(script), str(ref)]) == 0
    reference = json.loads(ref.read_text())
    assert reference["calls"] > 1
    with open(jsonl) as f:
        records = [r for r in map(json.loads, f) if r["type"] == "step"]
    assert [r["loss"] for r in records] == pytest.approx(reference["first"], rel=1e-6)


# ------------------------------------------------------------------ losses that are not one number
@pytest.mark.parametrize("bad", [torch.tensor([3.0, 4.0]), torch.zeros(2, 3), torch.tensor([]), "0.5", [1.0]],
                         ids=["vector", "matrix", "empty", "string", "list"])
def test_a_loss_that_is_not_one_number_is_refused_once_and_the_step_kept(bad, caplog):
    def loop(model, make):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon, losses = make(opt), []
        for i in range(3):
            loss = _loss(model, *lm_batch())
            opt.zero_grad(); loss.backward(); opt.step()
            if mon:
                mon.step(bad if i < 2 else loss)
            losses.append(loss.detach())
        return losses

    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        mon = _bitwise_same(loop)
    assert mon.steps == 3 and len(mon.history) == 3
    assert mon.history[0].loss is None and mon.history[1].loss is None and mon.history[2].loss is not None
    messages = [r.getMessage() for r in caplog.records if "monitor.step(loss)" in r.getMessage()]
    assert len(messages) == 1 and "one number" in messages[0]


def test_a_loss_that_is_not_one_number_raises_under_strict():
    m = SeqClassifier(nn.GRU)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, console=False, strict=True)
    loss = _loss(m, *lm_batch())
    opt.zero_grad(); loss.backward(); opt.step()
    with pytest.raises(gradwatch.GradwatchError, match=r"shape \(2,\)"):
        mon.step(torch.tensor([1.0, 2.0]))
    mon.close()


def test_one_element_losses_of_any_shape_and_numbers_are_recorded():
    import numpy as np

    m = SeqClassifier(nn.GRU)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = gradwatch.watch(m, opt, console=False, strict=True)
    for given in (torch.tensor([[2.5]]), np.float32(1.5), 0.25, 3):
        loss = _loss(m, *lm_batch())
        opt.zero_grad(); loss.backward(); opt.step()
        mon.step(given)
    mon.close()
    assert [s.loss for s in mon.history] == [2.5, 1.5, 0.25, 3.0]


def test_an_optimizer_recreated_without_add_optimizer_is_pointed_out_once(caplog):
    m = SeqClassifier(nn.GRU)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    mon = gradwatch.watch(m, opt, console=False)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)  # the loop forgot monitor.add_optimizer(opt)
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        for _ in range(45):
            loss = _loss(m, *lm_batch())
            opt.zero_grad(); loss.backward(); opt.step(); mon.step(loss)
    mon.close()
    messages = [r.getMessage() for r in caplog.records if "add_optimizer" in r.getMessage()]
    assert len(messages) == 1 and "Adam" in messages[0]


# ------------------------------------------------------------------ the state machine on its own
from gradwatch.stream.step_boundaries import LossRoute, Mode, StepBoundaries  # noqa: E402

A, B = 1, 2  # optimizer ids


def test_manual_mode_every_loss_ends_a_step_and_nothing_is_held():
    steps = StepBoundaries(Mode.MANUAL)
    assert not steps.hooks_end_steps and not steps.update_ended(A, watched=[])
    assert [steps.loss_fed() for _ in range(3)] == [LossRoute.END_STEP] * 3
    assert not steps.holds_last_step(loss_fed=False)


def test_optimizers_mode_the_step_ends_once_every_optimizer_has_stepped():
    steps = StepBoundaries(Mode.OPTIMIZERS)
    assert steps.hooks_end_steps
    assert not steps.update_ended(A, watched=[A, B])
    assert not steps.update_ended(A, watched=[A, B])  # A stepping twice still waits for B
    assert steps.update_ended(B, watched=[A, B])
    steps.step_ended()
    assert steps.loss_fed() is LossRoute.TO_LAST_STEP
    assert steps.holds_last_step(loss_fed=False) and not steps.holds_last_step(loss_fed=True)


def test_optimizers_mode_a_loss_after_some_but_not_all_optimizers_ends_the_step():
    steps = StepBoundaries(Mode.OPTIMIZERS)
    assert not steps.update_ended(A, watched=[A, B])
    assert steps.loss_fed() is LossRoute.END_STEP
    steps.step_ended()
    assert not steps.update_ended(A, watched=[A, B])  # the next step starts with no optimizer stepped


def test_optimizers_mode_a_loss_without_an_update_is_dropped_and_counted():
    steps = StepBoundaries(Mode.OPTIMIZERS)
    assert steps.update_ended(A, watched=[A])
    steps.step_ended()
    assert steps.loss_fed() is LossRoute.TO_LAST_STEP
    assert [steps.loss_fed() for _ in range(3)] == [LossRoute.DROP] * 3  # GradScaler skipped the updates
    assert steps.calls_without_update == 3
    steps.update_ended(A, watched=[A])
    assert steps.calls_without_update == 0


def test_driver_mode_hooks_end_nothing_and_losses_go_to_the_last_step():
    steps = StepBoundaries(Mode.DRIVER)
    assert not steps.hooks_end_steps
    assert not steps.update_ended(A, watched=[A])
    assert [steps.loss_fed() for _ in range(2)] == [LossRoute.TO_LAST_STEP] * 2
    assert not steps.holds_last_step(loss_fed=False)
    steps.optimizer_added()
    assert steps.mode is Mode.DRIVER  # a driver's mode never changes


def test_an_added_optimizer_turns_manual_into_optimizers_and_a_replaced_one_is_not_waited_for():
    steps = StepBoundaries(Mode.MANUAL)
    steps.optimizer_added()
    assert steps.mode is Mode.OPTIMIZERS
    assert not steps.update_ended(A, watched=[A, B])
    steps.optimizer_added(replaced=[A])  # C replaces A: A's update no longer counts
    assert not steps.update_ended(B, watched=[B, 3])
    assert steps.update_ended(3, watched=[B, 3])


@pytest.mark.parametrize("optimizer, external, mode", [
    (False, False, Mode.MANUAL), (True, False, Mode.OPTIMIZERS), (True, True, Mode.DRIVER), (False, True, Mode.DRIVER),
], ids=["no-optimizer", "optimizer", "driver", "driver-no-optimizer"])
def test_watch_fixes_the_mode_at_construction(optimizer, external, mode):
    m = SeqClassifier(nn.GRU)
    opt = torch.optim.SGD(m.parameters(), lr=0.1) if optimizer else None
    mon = gradwatch.watch(m, opt, console=False, external_steps=external)
    assert mon.step_mode is mode
    with pytest.raises(AttributeError):
        mon.step_mode = Mode.MANUAL
    mon.close()


def test_watch_external_steps_must_be_a_bool():
    with pytest.raises(gradwatch.GradwatchError, match="external_steps"):
        gradwatch.watch(SeqClassifier(nn.GRU), console=False, external_steps="yes")


def test_external_steps_monitor_ends_steps_only_at_end_step():
    """What the Lightning callback relies on: optimizer.step() ends nothing; end_step() ends the step."""
    def loop(model, make):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon, losses = make(opt), []
        for i in range(3):
            loss = _loss(model, *lm_batch())
            opt.zero_grad(); loss.backward()
            if mon:
                mon.before_update()
            opt.step()
            if mon:
                assert mon.steps == i
                mon.end_step(loss)
            losses.append(loss.detach())
        return losses

    mon = _bitwise_same(loop, strict=True, external_steps=True)
    assert mon.steps == 3 and all(s.loss is not None for s in mon.history)
