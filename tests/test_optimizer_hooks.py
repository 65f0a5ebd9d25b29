"""`OptimizerHooks`: one call per update whatever the class nesting, replacement, removal."""

from __future__ import annotations

import torch
from torch import nn

from gradwatch.capture.optimizer_hooks import OptimizerHooks, closure_of, shares_parameters


class Outer(torch.optim.SGD):
    def step(self, closure=None):
        return super().step(closure)


class Outermost(Outer):
    def step(self, closure=None):
        return super().step(closure)


def _recording():
    calls = []
    hooks = OptimizerHooks(before=lambda o, a, k: calls.append(("before", o)),
                           after=lambda o: calls.append(("after", o)))
    return calls, hooks


def test_three_nested_step_classes_give_one_before_and_one_after_per_update():
    p = nn.Parameter(torch.ones(2))
    torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    Outer([nn.Parameter(torch.ones(1))], lr=0.1)  # every class in the chain hooked by torch
    opt = Outermost([p], lr=0.1)
    calls, hooks = _recording()
    hooks.add(opt)
    for _ in range(3):
        p.grad = torch.ones(2)
        opt.step()
    assert calls == [("before", opt), ("after", opt)] * 3
    hooks.close()
    opt.step()
    assert len(calls) == 6  # no hook left


def test_before_may_replace_the_step_arguments():
    p = nn.Parameter(torch.ones(1))
    opt = torch.optim.LBFGS([p], max_iter=1)
    seen = []

    def before(o, args, kwargs):
        closure = closure_of(args, kwargs)

        def wrapped():
            seen.append("wrapped")
            return closure()
        return (args[0], wrapped), kwargs

    hooks = OptimizerHooks(before=before, after=lambda o: None)
    hooks.add(opt)

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    hooks.close()
    assert seen and seen[0] == "wrapped"


def test_an_added_optimizer_replaces_those_it_shares_parameters_with():
    a, b = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    first, other = torch.optim.SGD([a], lr=0.1), torch.optim.SGD([b], lr=0.1)
    calls, hooks = _recording()
    hooks.add(first); hooks.add(other)
    new = torch.optim.Adam([a, b], lr=0.1)
    assert shares_parameters(first, new) and not shares_parameters(first, other)
    assert hooks.add(new) == [first, other] and hooks.optimizers == [new]
    a.grad = torch.ones(1)
    first.step()
    assert calls == []  # the replaced optimizer is no longer hooked
    assert hooks.add(new) == []  # adding it again changes nothing
    hooks.close()
