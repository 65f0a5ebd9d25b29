"""The plug-in Protocols: each built-in part has the shape of its Protocol (mypy checks the types,
tests/test_typing.py); the monitor hands them typed records, never itself."""

from __future__ import annotations

import inspect

import pytest

from gradwatch.actions import Actions
from gradwatch.actions.base import StepActions
from gradwatch.detectors.protocol import Detectors
from gradwatch.detectors.suite import DetectorSuite
from gradwatch.distributed import StepReducer
from gradwatch.stream.reducer import Reducer

PAIRS = [(Actions, StepActions, ("before_read", "before_step")),
         (DetectorSuite, Detectors, ("update", "summary")),
         (StepReducer, Reducer, ("start", "start_loss"))]


def _parameters(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()][1:]  # without self


@pytest.mark.parametrize("cls, protocol, methods", PAIRS, ids=[p[1].__name__ for p in PAIRS])
def test_built_in_parts_have_their_protocols_methods(cls, protocol, methods):
    for method in methods:
        assert _parameters(getattr(cls, method)) == _parameters(getattr(protocol, method)), (cls.__name__, method)


def test_actions_get_the_optimizers_not_the_monitor():
    import torch
    from torch import nn

    from gradwatch.actions import build_actions
    from gradwatch.actions.base import ActionRecord

    p = nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 4.0)
    record = build_actions(1.0, False).before_step([torch.optim.SGD([p], lr=0.1)])
    assert isinstance(record, ActionRecord) and record.policy == "norm" and not record.skipped
    assert record.clip is not None and torch.allclose(p.grad, torch.full((3,), 4.0) / float(record.clip[0]))
