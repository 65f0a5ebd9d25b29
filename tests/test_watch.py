"""Watching must not change training; close() leaves nothing behind; bad input is rejected clearly."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.capture.stack import installed_adapter
from models import CellDecoder, SeqClassifier, train


def _fresh(cls=nn.LSTM, **kw):
    torch.manual_seed(3)
    return SeqClassifier(cls, **kw)


@pytest.mark.parametrize("every", [1, 10], ids=["probe-every-step", "default-every-10"])
@pytest.mark.parametrize("cls,kw", [(nn.LSTM, {}), (nn.GRU, {"bidirectional": True}), (nn.RNN, {}),
                                    (nn.LSTM, {"proj_size": 4})],
                         ids=["lstm-dropout", "gru-bidir", "rnn", "lstm-proj"])
def test_watched_training_is_bit_identical(cls, kw, every):
    plain = train(_fresh(cls, **kw), 12)
    watched = train(_fresh(cls, **kw), 12,
                    monitor_factory=lambda m, o: gradwatch.watch(m, o, every=every, console=False, strict=True))
    for a, b in zip(plain[0], watched[0]):
        assert torch.equal(a, b)
    for a, b in zip(plain[1], watched[1]):
        assert torch.equal(a, b)
    for ga, gb in zip(plain[2], watched[2]):
        assert all(torch.equal(x, y) for x, y in zip(ga, gb))
    watched[3].close()
    assert len(watched[3].history) == 12


def test_cell_training_is_bit_identical():
    def run(watch):
        torch.manual_seed(0)
        m = CellDecoder()
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        mon = gradwatch.watch(m, opt, every=2, console=False, strict=True) if watch else None
        out = []
        for _ in range(5):
            x = torch.randn(7, 3, 4)
            loss = m(x).square().mean()
            opt.zero_grad(); loss.backward(); opt.step()
            out.append(loss.detach())
            if mon:
                mon.step(loss)
        return out, [p.detach().clone() for p in m.parameters()], mon

    a, pa, _ = run(False)
    b, pb, mon = run(True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    mon.close()
    assert len(mon.history[0].layers[("cell", 0)].timestep_grad_norms) == 7


def _hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_close_removes_every_hook_and_patch():
    m = _fresh()
    opt = torch.optim.Adam(m.parameters())
    before = (_hook_counts(m), len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks))
    mon = gradwatch.watch(m, opt, console=False)
    assert installed_adapter(m.rnn) is not None
    train(m, 2)
    mon.close()
    mon.close()  # twice is harmless
    assert "forward" not in m.rnn.__dict__
    assert (_hook_counts(m), len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)) == before
    assert mon.params.snapshot is None
    # nothing on the model refers back to the monitor: dropping the monitor frees it
    ref = weakref.ref(mon)
    del mon
    gc.collect()
    assert ref() is None
    gradwatch.watch(m, console=False).close()  # watching again after close works


def test_pickle_and_state_dict_unaffected_while_watched():
    m = _fresh()
    sd_before = {k: v.clone() for k, v in m.state_dict().items()}
    mon = gradwatch.watch(m, console=False)
    assert list(m.state_dict()) == list(sd_before)
    clone = pickle.loads(pickle.dumps(m))
    assert "forward" not in clone.rnn.__dict__
    x = torch.randint(0, 20, (5, 2))
    torch.testing.assert_close(clone.eval()(x), m.eval()(x), rtol=0, atol=0)
    deep = copy.deepcopy(m)
    assert "forward" not in deep.rnn.__dict__
    torch.save(m, __import__("io").BytesIO())
    mon.close()


def test_watching_twice_is_rejected():
    m = _fresh()
    mon = gradwatch.watch(m, console=False)
    with pytest.raises(gradwatch.GradwatchError, match="already watched"):
        gradwatch.watch(m, console=False)
    mon.close()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: (nn.Linear(3, 3), {}), "no recurrent module"),
        (lambda: (torch.jit.script(nn.LSTM(3, 3)), {}), "TorchScript"),
        (lambda: ("model", {}), "expects a torch.nn.Module"),
        (lambda: (nn.LSTM(3, 3), {"every": 0}), "positive integer"),
        (lambda: (nn.LSTM(3, 3), {"console": "loud"}), "console"),
        (lambda: (nn.LSTM(3, 3), {"optimizer": "adam"}), "torch.optim.Optimizer"),
        (lambda: (nn.LSTM(3, 3), {"no_such_option": 1}), "no_such_option"),
    ],
    ids=["no-rnn", "torchscript", "not-a-module", "every-0", "console-unknown", "optimizer-str", "unknown-option"],
)
def test_bad_input_gets_one_clear_error(make, match):
    model, kwargs = make()
    with pytest.raises(gradwatch.GradwatchError, match=match):
        gradwatch.watch(model, **kwargs)


def test_context_manager_closes():
    m = _fresh()
    with gradwatch.watch(m, console=False) as mon:
        assert isinstance(mon, gradwatch.Monitor)
    assert "forward" not in m.rnn.__dict__


def test_history_is_bounded():
    m = _fresh()
    mon = gradwatch.watch(m, torch.optim.SGD(m.parameters(), lr=0.01), console=False, history=5)
    opt = mon.optimizers[0]
    for _ in range(9):
        out = m(torch.randint(0, 20, (4, 2)))
        opt.zero_grad(); out.sum().backward(); opt.step()
    mon.close()
    assert [s.step for s in mon.history] == [4, 5, 6, 7, 8]


def test_no_grad_forwards_are_ignored():
    m = _fresh()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    mon = gradwatch.watch(m, opt, every=1, console=False, strict=True)
    x = torch.randint(0, 20, (6, 2))
    out = m(x)
    opt.zero_grad(); out.sum().backward()
    with torch.no_grad():
        m(torch.randint(0, 20, (9, 2)))  # evaluation pass of another length
    opt.step(); mon.step()
    mon.close()
    assert len(mon.history[0].layers[("rnn", 0)].timestep_grad_norms) == 6


def test_torch_compile_keeps_parameter_statistics():
    torch.manual_seed(0)
    m = SeqClassifier(nn.GRU)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    compiled = torch.compile(m, backend="eager")
    mon = gradwatch.watch(compiled, opt, every=1, console=False, strict=True)
    x = torch.randint(0, 20, (6, 2))
    loss = compiled(x).logsumexp(-1).mean()
    opt.zero_grad(); loss.backward()
    total = torch.nn.utils.clip_grad_norm_(m.parameters(), float("inf"))
    opt.step(); mon.step(loss)
    mon.close()
    s = mon.history[0]
    assert s.grad_norm == pytest.approx(float(total), rel=1e-5)
    assert s.layers[("rnn", 0)].timestep_grad_norms is None  # probes do not run inside compiled code
    assert "forward" not in m.rnn.__dict__


def test_weights_changed_since_step_sees_a_manual_update():
    """What `gradwatch run` asks at the end of a script that updates by hand (it read `params.snapshot` before)."""
    torch.manual_seed(0)
    m = nn.GRU(3, 4)
    mon = gradwatch.watch(m, console=False)
    m(torch.randn(5, 2, 3))[0].pow(2).mean().backward()
    mon.step()
    assert not mon.weights_changed_since_step()
    with torch.no_grad():
        m.weight_hh_l0[0, 0] += 1e-3
    assert mon.weights_changed_since_step()
    mon.close()
