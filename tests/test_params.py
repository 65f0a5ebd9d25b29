"""`ParameterMap`'s one norm pass before the update against per-tensor references and against the
separate passes it replaced (same bits on the CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch.capture.modules import find_recurrent
from gradwatch.capture.params import ParameterMap
from gradwatch.stats.tensor_stats import group_sumsq, stack_scalars


class _Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 6)
        self.lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(10, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.lstm(self.emb(tokens))[0])[0])


def _mapped(frozen: str | None = None) -> tuple[_Tagger, ParameterMap]:
    torch.manual_seed(0)
    model = _Tagger()
    if frozen:
        model.get_parameter(frozen).requires_grad_(False)
    pmap = ParameterMap(model, find_recurrent(model))
    pmap.take_snapshot()
    model(torch.randint(0, 30, (7, 3))).pow(2).mean().backward()
    return model, pmap


def _f64(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).sum())


def _t(sums) -> torch.Tensor:
    """A read's sums as a float64 tensor (CPU reads give Python floats, device reads tensors)."""
    return torch.tensor(sums, dtype=torch.float64) if isinstance(sums, (list, float)) else sums


@pytest.mark.parametrize("frozen", [None, "gru.weight_hh_l0", "head.bias"], ids=["all-train", "watched-frozen", "head-frozen"])
def test_one_pass_read_matches_per_tensor_references(frozen):
    model, pmap = _mapped(frozen)
    read = pmap.read_before_update()
    expected_g = [0.0] * len(pmap.groups)
    expected_w = [0.0] * len(pmap.groups)
    for p, g in zip(pmap.params, pmap.group_of):
        expected_w[g] += _f64(p)
        if p.grad is not None:
            expected_g[g] += _f64(p.grad)
    assert _t(read.grad_sumsq).tolist() == pytest.approx(expected_g, rel=1e-6)
    assert _t(read.weight_sumsq).tolist() == pytest.approx(expected_w, rel=1e-6)
    clip_total = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], float("inf"))
    assert float(read.total) == pytest.approx(float(clip_total) ** 2, rel=1e-5)
    outside = [(n, p) for n, p in model.named_parameters() if n.startswith(("emb.", "head."))]
    assert read.outside_names == [n for n, _ in outside]
    assert _t(read.outside_weight_sumsq).tolist() == pytest.approx([_f64(p) for _, p in outside], rel=1e-6)
    assert read.has_grad == [any(p.grad is not None for p, g in zip(pmap.params, pmap.group_of) if g == k)
                             for k in range(len(pmap.groups))]


@pytest.mark.parametrize("host", [True, False], ids=["host-floats", "device-tensors"])
def test_one_pass_read_gives_the_bits_of_the_separate_passes(host, monkeypatch):
    """Both representations: Python floats for CPU tensors, the device path (forced here) elsewhere."""
    if not host:
        monkeypatch.setattr("gradwatch.capture.params._on_cpu", lambda tensors: False)
    model, pmap = _mapped("gru.weight_hh_l0")
    read = pmap.read_before_update()
    assert isinstance(read.grad_sumsq, list) == host
    groups = len(pmap.groups)
    by_id = {id(p): g for p, g in zip(pmap.params, pmap.group_of)}
    grads = [(p.grad, by_id.get(id(p), groups)) for p in model.parameters() if p.grad is not None]
    sums = group_sumsq([g for g, _ in grads], torch.tensor([s for _, s in grads]), groups + 1)
    assert torch.equal(_t(read.grad_sumsq), sums[:groups])
    assert torch.equal(_t(read.total), sums.sum())
    outside = [p.detach() for p in model.parameters() if id(p) not in by_id]
    assert torch.equal(_t(read.outside_weight_sumsq), stack_scalars(torch._foreach_norm(outside), dtype=torch.float64).square())
    assert torch.equal(_t(read.weight_sumsq), group_sumsq(pmap.snapshot, torch.tensor(pmap.group_of), groups))


def test_update_read_reuses_the_weights_measured_before_the_update_with_the_same_bits():
    model, pmap = _mapped()
    read = pmap.read_before_update()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.1 * p.grad)
    before = [s.clone() for s in pmap.snapshot]
    weight, update = pmap.weight_and_update_sumsq(read.weight_sumsq)
    pmap.snapshot = [s.clone() for s in before]
    weight_again, update_again = pmap.weight_and_update_sumsq()
    assert torch.equal(_t(weight), _t(weight_again)) and torch.equal(_t(update), _t(update_again))
    assert torch.equal(_t(update), group_sumsq([p.detach() - s for p, s in zip(pmap.params, before)],
                                               torch.tensor(pmap.group_of), len(pmap.groups)))
    expected = [0.0] * len(pmap.groups)
    for p, s, g in zip(pmap.params, before, pmap.group_of):
        expected[g] += _f64(p - s)
    assert _t(update).tolist() == pytest.approx(expected, rel=1e-5)


def test_a_resized_parameter_between_read_and_update_measures_the_new_snapshot():
    model, pmap = _mapped()
    read = pmap.read_before_update()
    with torch.no_grad():
        model.gru.bias_hh_l0.data = torch.ones(24)  # resized in place of the old one (same Parameter)
    weight, update = pmap.weight_and_update_sumsq(read.weight_sumsq)
    assert _t(update).tolist() == [0.0] * len(pmap.groups)  # measured against a fresh snapshot: no update
    assert _t(weight).tolist() != _t(read.weight_sumsq).tolist()
