"""`stream.build`: the record builder's shortcut for an all-finite step names every NaN/Inf the full search names."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradwatch
import gradwatch.monitor as monitor_module
from gradwatch.stream.build import PendingStep, build_step_stats, locate_nonfinite, split_values


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(3, 4)
        self.rnn = nn.LSTM(4, 5, num_layers=2, bidirectional=True)
        self.head = nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.emb(x))[0])


def captured_steps(monkeypatch: pytest.MonkeyPatch, every: int) -> list[tuple[PendingStep, list[float], float | None]]:
    """(pending step, read-back values, loss) of a few real steps, as the monitor hands them to the builder.

    Every slot is measured (no finite-sum shortcut for a module's input and output): the test puts a
    NaN/Inf into each of them."""
    monkeypatch.setattr("gradwatch.stream.accumulator._host_checkable", lambda x: False)
    seen: list[tuple[PendingStep, list[float], float | None]] = []

    def capture(p: PendingStep, flat: list[float], loss: float | None, **carried: float | None) -> object:
        seen.append((p, list(flat), loss))
        return build_step_stats(p, flat, loss, **carried)

    monkeypatch.setattr(monitor_module, "build_step_stats", capture)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradwatch.watch(model, opt, every=every, console=False)
    for _ in range(2):
        loss = model(torch.randn(6, 2, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss)
    monitor.close()
    return seen


@pytest.mark.parametrize("every", [1, 10], ids=["probe_step", "plain_step"])
def test_a_nan_or_inf_anywhere_in_the_read_back_values_is_located_as_the_full_search_locates_it(monkeypatch, every):
    steps = captured_steps(monkeypatch, every)
    p, flat, loss = steps[-1]
    assert build_step_stats(p, flat, loss).nonfinite is None  # a healthy step: the shortcut
    located = set()
    for i in range(len(flat)):
        for bad in (math.nan, math.inf):
            values = flat[:i] + [bad] + flat[i + 1:]
            stats = build_step_stats(p, values, loss)
            assert stats.nonfinite == locate_nonfinite(p, split_values(p.layout, p.segments, values), stats.layers, loss)
            located.add(None if stats.nonfinite is None else stats.nonfinite.where)
    assert {"weights", "input", "forward", "backward"} <= located


def test_a_sum_that_overflows_is_searched_and_a_non_finite_loss_is_located(monkeypatch):
    p, flat, loss = captured_steps(monkeypatch, 10)[-1]
    huge = [1e308] * len(flat)  # every value finite, their sum is not: the full search finds no NaN/Inf
    stats = build_step_stats(p, huge, loss)
    assert stats.nonfinite == locate_nonfinite(p, split_values(p.layout, p.segments, huge), stats.layers, loss)
    assert build_step_stats(p, flat, math.nan).nonfinite.where == "loss"
