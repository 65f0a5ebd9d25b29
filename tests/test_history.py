"""`monitor.history` can be read while training goes on, from the training thread or another one."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.stream.history import History
from models import SeqClassifier, lm_batch


def _train_step(m, opt, mon):
    x, y = lm_batch()
    loss = nn.functional.cross_entropy(m(x).reshape(-1, 20), y.reshape(-1))
    opt.zero_grad(); loss.backward(); opt.step(); mon.step(loss)


def _watched(history=5):
    torch.manual_seed(0)
    m = SeqClassifier(nn.GRU, hidden=8)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    return m, opt, gradwatch.watch(m, opt, console=False, history=history, strict=True)


def test_iterating_history_while_steps_finish_does_not_raise_deque_mutated():
    m, opt, mon = _watched()
    for _ in range(6):
        _train_step(m, opt, mon)
    seen = []
    for record in mon.history:  # a step finishes in the middle of the walk
        seen.append(record.step)
        _train_step(m, opt, mon)
    mon.close()
    assert seen == [1, 2, 3, 4, 5]  # the records as they were when the walk began


def test_iterating_history_from_another_thread_while_training():
    m, opt, mon = _watched()
    errors, walks, stop = [], [0], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                steps = [r.step for r in mon.history]
                assert steps == sorted(steps) and len(steps) <= 5
                walks[0] += 1
            except Exception as exc:  # noqa: BLE001 - any failure is the bug
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(60):
            _train_step(m, opt, mon)
    finally:
        stop.set()
        thread.join()
    mon.close()
    assert not errors, errors[:1]
    assert walks[0] > 0


def test_history_is_a_bounded_sequence_with_snapshots():
    m, opt, mon = _watched(history=3)
    for _ in range(5):
        _train_step(m, opt, mon)
    history = mon.history
    assert isinstance(history, History) and history.maxlen == 3 and len(history) == 3
    assert history[-1].step == 4 and history[0].step == 2
    assert [r.step for r in history[1:]] == [3, 4]
    assert [r.step for r in reversed(history)] == [4, 3, 2]
    frozen = history.snapshot()
    _train_step(m, opt, mon)
    mon.close()
    assert [r.step for r in frozen] == [2, 3, 4] and [r.step for r in mon.history] == [3, 4, 5]
    with pytest.raises(IndexError):
        History(2)[0]
