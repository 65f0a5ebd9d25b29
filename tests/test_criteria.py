"""The chance level inferred from the criterion's targets (issue #13): the estimators against numpy, the wrapped
criteria (counted calls, the identity rule, no_grad, close() in any order), bitwise-identical training, `gradwatch run`."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwatch
from gradwatch.capture.criteria import WATCHED_CRITERIA, CriterionTargets
from gradwatch.cli import main
from gradwatch.monitor import CHANCE_EVERY
from gradwatch.stats.chance import MISSING_MASS, NO_ESTIMATE, ClassCounts, TargetMoments

ORIGINALS = {name: getattr(F, name) for name in WATCHED_CRITERIA}


def entropy_reference(labels: np.ndarray) -> float | None:
    """Miller–Madow entropy of the labels' frequencies, in float64 numpy; None when more than 1 % of the labels
    are of classes seen once (Good–Turing unseen mass)."""
    _, counts = np.unique(labels, return_counts=True)
    n = counts.sum()
    if (counts == 1).sum() > MISSING_MASS * n:
        return None
    p = counts / n
    return float(-(p * np.log(p)).sum() + (len(counts) - 1) / (2 * n))


class Tagger(nn.Module):
    """A GRU over (B, T, 4) inputs and a read-out of `out` classes/values at every timestep or the last one."""

    def __init__(self, out: int = 5, dense: bool = False) -> None:
        super().__init__()
        self.rnn, self.head, self.dense = nn.GRU(4, 8, batch_first=True), nn.Linear(8, out), dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rnn(x)[0]
        return self.head(y if self.dense else y[:, -1])


def watched_steps(loss_of, steps=30, batch=6, out=5, seed=0, **watch):
    """Train a Tagger under gradwatch with `loss_of(prediction, step) -> (fed loss, targets)`; (monitor, targets)."""
    torch.manual_seed(seed)
    model = Tagger(out)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = gradwatch.watch(model, opt, console=False, strict=True, **watch)
    seen = []
    for step in range(steps):
        loss, targets = loss_of(model(torch.randn(batch, 7, 4)), step)
        seen.append(targets)
        opt.zero_grad(); loss.backward(); opt.step()
        monitor.step(loss)
    monitor.close()
    return monitor, seen


def measured_by(seen: list, step: int) -> np.ndarray:
    """The targets the record of `step` was estimated from: those up to the latest step that computed the estimate
    (every `CHANCE_EVERY` steps; the records in between carry it)."""
    return torch.cat(seen[: step // CHANCE_EVERY * CHANCE_EVERY + 1]).numpy()


def skewed_labels(batch: int, step: int, classes: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    return torch.multinomial(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05][:classes]), batch, True, generator=g)


# ---------------------------------------------------------------------------------------- estimators
@pytest.mark.parametrize("classes,batches,batch", [(3, 40, 1), (7, 12, 32), (50, 20, 64)], ids=["k3-b1", "k7-b32", "k50-b64"])
def test_class_entropy_matches_a_numpy_reference_of_all_targets_seen(classes, batches, batch):
    rng = np.random.default_rng(classes)
    probs = rng.dirichlet(np.ones(classes))
    counts, seen = ClassCounts(classes), []
    for _ in range(batches):
        labels = rng.choice(classes, size=batch, p=probs)
        seen.append(labels)
        counts.add(torch.from_numpy(labels))
        expected = entropy_reference(np.concatenate(seen))
        value = float(counts.chance())
        if expected is None:
            assert value == NO_ESTIMATE
        else:
            assert value == pytest.approx(expected, rel=1e-6)
    assert expected is not None  # every case reaches an estimate


def test_class_entropy_waits_while_classes_seen_once_hold_more_than_1_percent_of_the_targets():
    # a word vocabulary after a few hundred tokens: the plug-in entropy (and Miller–Madow) are far too low
    counts = ClassCounts(1000)
    counts.add(torch.arange(300))
    assert float(counts.chance()) == NO_ESTIMATE
    counts.add(torch.arange(300).repeat(5))
    assert float(counts.chance()) == pytest.approx(math.log(300) + 299 / 3600, rel=1e-6)


@pytest.mark.parametrize("shape", [(1,), (), (3, 2)], ids=["one-output", "scalar-per-sample", "3x2-outputs"])
def test_target_variance_matches_numpy_per_element_then_averaged(shape):
    rng = np.random.default_rng(1)
    moments, seen = TargetMoments(shape), []
    assert float(moments.chance()) == NO_ESTIMATE
    for _ in range(9):
        y = rng.normal(2.0, rng.uniform(0.5, 3.0, size=shape), size=(5, *shape))
        seen.append(y)
        moments.add(torch.from_numpy(y).float())
    all_y = np.concatenate(seen).astype(np.float32).astype(np.float64)
    assert float(moments.chance()) == pytest.approx(float(np.var(all_y, axis=0, ddof=1).mean()), rel=1e-5)


# ---------------------------------------------------------------------------------------- live, through watch()
def test_a_watched_cross_entropy_run_records_the_entropy_of_all_its_targets_so_far():
    monitor, seen = watched_steps(lambda p, i: (nn.CrossEntropyLoss()(p, y := skewed_labels(6, i)), y))
    chances = [r.chance_loss for r in monitor.history]
    for i, value in enumerate(chances):
        expected = entropy_reference(measured_by(seen, i))
        assert (value is None) == (expected is None), i
        if expected is not None:
            assert value == pytest.approx(expected, rel=1e-6)
    assert chances[-1] is not None and chances[-1] < math.log(5) - 0.1  # the skew shows


def test_nll_targets_equal_to_ignore_index_do_not_count():
    def loss_of(pred, step):
        y = skewed_labels(6, step)
        y[::3] = 4  # padding class, ignored by the loss
        return F.nll_loss(F.log_softmax(pred, -1), y, ignore_index=4), y[y != 4]

    monitor, seen = watched_steps(loss_of)
    assert monitor.history[-1].chance_loss == pytest.approx(entropy_reference(measured_by(seen, 29)), rel=1e-6)
    # the default ignore_index, -100
    monitor, seen = watched_steps(lambda p, i: (F.cross_entropy(p, torch.cat([skewed_labels(4, i), torch.tensor([-100, -100])])),
                                                skewed_labels(4, i)))
    assert monitor.history[-1].chance_loss == pytest.approx(entropy_reference(measured_by(seen, 29)), rel=1e-6)


def test_mse_records_the_per_element_target_variance():
    def loss_of(pred, step):
        y = torch.randn(6, 5, generator=torch.Generator().manual_seed(step)) * torch.arange(1.0, 6.0) + 3
        return F.mse_loss(pred, y), y

    monitor, seen = watched_steps(loss_of)
    expected = np.var(measured_by(seen, 29).astype(np.float64), axis=0, ddof=1).mean()
    assert monitor.history[-1].chance_loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("compose", [
    lambda ce, pred: ce + 1e-3 * pred.square().mean(),  # a regularised loss: several terms
    lambda ce, pred: ce / 2,  # scaled for gradient accumulation
    lambda ce, pred: ce.reshape(1),  # a view of it is another tensor
], ids=["sum-of-terms", "scaled", "view"])
def test_a_loss_that_is_not_the_criterion_output_itself_gets_no_inferred_chance(compose):
    monitor, _ = watched_steps(lambda p, i: (compose(F.cross_entropy(p, y := skewed_labels(6, i)), p), y))
    assert [r.chance_loss for r in monitor.history] == [None] * 30


def test_a_loss_fed_as_a_float_gets_no_inferred_chance():
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradwatch.watch(model, opt, console=False, strict=True) as monitor:
        for i in range(30):
            loss = F.cross_entropy(model(torch.randn(6, 7, 4)), skewed_labels(6, i))
            opt.zero_grad(); loss.backward(); opt.step()
            monitor.step(loss.item())
    assert monitor.history[-1].loss is not None and monitor.history[-1].chance_loss is None


def test_calls_under_no_grad_and_other_reductions_are_not_counted():
    def loss_of(pred, step):
        y = skewed_labels(6, step)
        with torch.no_grad():  # validation on another label distribution
            F.cross_entropy(pred, torch.full((6,), 4))
        F.cross_entropy(pred.detach(), torch.full((6,), 3))  # a metric on a detached prediction
        F.cross_entropy(pred, torch.full((6,), 2), reduction="sum")
        F.cross_entropy(pred, torch.full((6,), 1), label_smoothing=0.1)
        F.cross_entropy(pred, torch.full((6,), 0), weight=torch.ones(5))
        return F.cross_entropy(pred, y), y

    monitor, seen = watched_steps(loss_of)
    assert monitor.history[-1].chance_loss == pytest.approx(entropy_reference(measured_by(seen, 29)), rel=1e-6)


def test_watch_infer_chance_false_wraps_nothing():
    torch.manual_seed(0)
    with gradwatch.watch(Tagger(), console=False, infer_chance=False):
        assert all(getattr(F, name) is fn for name, fn in ORIGINALS.items())


@pytest.mark.parametrize("first_closed", [0, 1], ids=["first-watched-closes-first", "last-watched-closes-first"])
def test_close_unwraps_the_criteria_whichever_monitor_closes_first(first_closed):
    torch.manual_seed(0)
    models = [Tagger(), Tagger()]
    monitors = [gradwatch.watch(m, console=False, strict=True) for m in models]
    assert F.cross_entropy is not ORIGINALS["cross_entropy"]
    monitors[first_closed].close()
    other, model = monitors[1 - first_closed], models[1 - first_closed]
    for i in range(30):  # the monitor still open still sees its criterion
        loss = F.cross_entropy(model(torch.randn(6, 7, 4)), skewed_labels(6, i))
        loss.backward()
        other.step(loss)
    assert other.history[-1].chance_loss is not None
    other.close()
    assert all(getattr(F, name) is fn for name, fn in ORIGINALS.items())
    assert nn.CrossEntropyLoss()(torch.zeros(2, 3), torch.tensor([0, 1])).item() == pytest.approx(math.log(3))


def test_a_failure_while_counting_targets_never_stops_training(monkeypatch, caplog):
    def broken(self, target, ignore_index=-100):
        raise RuntimeError("boom")

    monkeypatch.setattr(ClassCounts, "add", broken)
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = gradwatch.watch(model, opt, console=False)
    for i in range(5):
        loss = F.cross_entropy(model(torch.randn(6, 7, 4)), skewed_labels(6, i))
        opt.zero_grad(); loss.backward(); opt.step()
        monitor.step(loss)
    monitor.close()
    assert len(monitor.history) == 5 and all(r.chance_loss is None for r in monitor.history)
    assert sum("chance-level inference" in r.message for r in caplog.records) == 1
    assert all(getattr(F, name) is fn for name, fn in ORIGINALS.items())


def test_criterion_targets_returns_exactly_what_the_criterion_returns():
    errors = []
    criteria = CriterionTargets(lambda *a, **k: errors.append(a))
    try:
        pred = torch.randn(4, 3, requires_grad=True)
        y = torch.tensor([0, 2, 1, 2])
        assert torch.equal(F.cross_entropy(pred, y), ORIGINALS["cross_entropy"](pred, y))
        assert torch.equal(F.mse_loss(pred, pred.detach() * 2), ORIGINALS["mse_loss"](pred, pred.detach() * 2))
        with pytest.raises(IndexError):  # the criterion's own errors reach the caller unchanged
            F.nll_loss(pred, torch.tensor([0, 5, 1, 2]))
    finally:
        criteria.close()
    assert errors == []


def test_a_run_watched_with_inference_trains_bit_for_bit_as_unwatched():
    def run(watch: bool):
        torch.manual_seed(0)
        model = Tagger(out=5, dense=True)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        monitor = gradwatch.watch(model, opt, console=False, strict=True) if watch else None
        losses = []
        for i in range(8):
            pred = model(torch.randn(3, 7, 4))
            y = skewed_labels(21, i).reshape(3, 7)
            y[0, :2] = -100
            loss = (nn.CrossEntropyLoss()(pred.reshape(-1, 5), y.reshape(-1)) if i % 2 else
                    F.mse_loss(pred, torch.ones_like(pred)))
            opt.zero_grad(); loss.backward(); opt.step()
            losses.append(loss.detach())
            if monitor is not None:
                monitor.step(loss)
        if monitor is not None:
            monitor.close()
            assert monitor.history[-1].chance_loss is not None  # the wrapped path was taken
        return losses, [p.detach().clone() for p in model.parameters()]

    plain, watched = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain[0], watched[0]))
    assert all(torch.equal(a, b) for a, b in zip(plain[1], watched[1]))


# ---------------------------------------------------------------------------------------- gradwatch run
def test_gradwatch_run_records_the_inferred_chance_of_an_unmodified_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        torch.manual_seed(0)
        rnn, head = nn.LSTM(3, 8), nn.Linear(8, 4)
        params = list(rnn.parameters()) + list(head.parameters())
        opt = torch.optim.SGD(params, lr=0.1)
        criterion = nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(1)
        for step in range(40):
            x = torch.randn(5, 16, 3)
            y = torch.randint(0, 4, (16,), generator=g)
            loss = criterion(head(rnn(x)[0][-1]), y)
            opt.zero_grad(); loss.backward(); opt.step()
    """))
    jsonl = tmp_path / "run.jsonl"
    assert main(["run", "--no-live", "--jsonl", str(jsonl), str(script)]) == 0
    steps = [r for r in map(json.loads, jsonl.read_text().splitlines()) if r["type"] == "step"]
    g = torch.Generator().manual_seed(1)
    labels = [torch.randint(0, 4, (16,), generator=g) for _ in range(40)]
    assert steps[-1]["chance_loss"] == pytest.approx(entropy_reference(measured_by(labels, 39)), rel=1e-6)


def test_the_estimate_is_computed_every_10_steps_and_carried_in_between():
    monitor, seen = watched_steps(lambda p, i: (F.cross_entropy(p, y := skewed_labels(6, i)), y), steps=25)
    chances = [r.chance_loss for r in monitor.history]
    assert chances[20:] == [chances[20]] * 5 and chances[10:20] == [chances[10]] * 10 and chances[10] != chances[20]


def test_a_step_whose_loss_comes_from_another_criterion_gets_that_criterions_level():
    def loss_of(pred, step):
        if step % 2:
            return F.cross_entropy(pred, y := skewed_labels(6, step)), y
        y = 10 * torch.randn(6, 5, generator=torch.Generator().manual_seed(step))
        return F.mse_loss(pred, y), y

    monitor, _ = watched_steps(loss_of)
    classes = [r.chance_loss for r in monitor.history if r.step % 2]
    variances = [r.chance_loss for r in monitor.history if not r.step % 2]
    assert all(c is not None and c > 50 for c in variances)
    assert all(c is None or c < math.log(5) for c in classes) and sum(c is not None for c in classes) >= 10


def test_bce_with_logits_records_the_binary_entropy_of_the_mean_targets():
    def loss_of(pred, step):
        g = torch.Generator().manual_seed(step)
        y = (torch.rand(6, 5, generator=g) < torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])).float()
        return nn.BCEWithLogitsLoss()(pred, y), y

    monitor, seen = watched_steps(loss_of)
    y = measured_by(seen, 29).astype(np.float64)
    p, n = y.mean(0), y.shape[0]
    expected = np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p)) + ((p > 0) & (p < 1)) / (2 * n))
    assert monitor.history[-1].chance_loss == pytest.approx(expected, rel=1e-6)
    weighted, _ = watched_steps(lambda pred, i: (F.binary_cross_entropy_with_logits(
        pred, y := torch.ones(6, 5), pos_weight=torch.full((5,), 2.0)), y))
    assert weighted.history[-1].chance_loss is None  # pos_weight: not the plain mean


def test_binary_entropy_is_zero_free_for_a_constant_target_column():
    from gradwatch.stats.chance import BinaryTargets
    targets = BinaryTargets((2,))
    targets.add(torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))
    assert float(targets.chance()) == pytest.approx((0 + math.log(2) + 1 / 8) / 2, rel=1e-6)


class ScriptedLoss(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x, y) + F.mse_loss(x, x.detach())


def test_a_module_scripted_while_watched_compiles_the_original_criteria():
    # the first version wrapped the criteria with this module's globals: torch.jit.script compiled the original
    # source (found through __wrapped__) and could not resolve its names
    x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 0])
    with gradwatch.watch(Tagger(), console=False, strict=True):
        scripted = torch.jit.script(ScriptedLoss())
    assert torch.equal(scripted(x, y), ScriptedLoss()(x, y))


def test_a_compiled_criterion_is_not_counted_and_does_not_switch_inference_off(caplog):
    # the first version counted inside torch.compile's tracing: functionalization refused the in-place count, and
    # the failure switched inference off for the rest of the run
    compiled = torch.compile(lambda pred, y: nn.CrossEntropyLoss()(pred, y))
    monitor, _ = watched_steps(lambda p, i: (compiled(p, y := skewed_labels(6, i)), y) if i < 2
                               else (F.cross_entropy(p, y := skewed_labels(6, i)), y), steps=31)
    assert not [r for r in caplog.records if "chance-level inference" in r.message]
    assert monitor.history[-1].chance_loss is not None


def test_class_counting_stops_after_the_first_CLASS_TARGETS_targets_so_later_calls_cost_nothing():
    # counting is four tensor operations per call; after 10,000 targets the estimate is as good as it gets
    from gradwatch.stats.chance import CLASS_TARGETS

    rng = np.random.default_rng(3)
    counts, seen = ClassCounts(4), []
    while counts.offered < CLASS_TARGETS:
        labels = rng.choice(4, size=700, p=[0.7, 0.1, 0.1, 0.1])
        seen.append(labels)
        counts.add(torch.from_numpy(labels))
    before = counts.counts.clone()
    counts.add(torch.zeros(5000, dtype=torch.long))  # would pull the entropy down if it were counted
    assert torch.equal(counts.counts, before)
    assert float(counts.chance()) == pytest.approx(entropy_reference(np.concatenate(seen)), rel=1e-6)
    assert sum(len(s) for s in seen) == counts.offered >= CLASS_TARGETS
