"""nn.DataParallel: the wrapper is seen through, and replicas never run gradwatch's adapter.

On several GPUs DataParallel copies each module with `_replicate_for_data_parallel` (a copy of
its `__dict__`, where gradwatch's forward adapter lives) and gives each copy its own parameters
(differentiable copies of the originals). `cpu_replicate` below does the same on the CPU.
"""

from __future__ import annotations

import copy
import json
import pickle
import textwrap

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.capture.stack import installed_adapter
from gradwatch.cli import main
from models import CellDecoder, SeqClassifier, lm_batch


def cpu_replicate(network: nn.Module, scale: float) -> nn.Module:
    """What `torch.nn.parallel.replicate` builds for one device, on the CPU: every module replicated,
    every parameter replaced by `scale * parameter` (differentiable, as DataParallel's broadcast)."""
    modules = list(network.modules())
    copies = {id(m): m._replicate_for_data_parallel() for m in modules}
    for m in modules:
        replica = copies[id(m)]
        for key, child in m._modules.items():
            setattr(replica, key, None if child is None else copies[id(child)])
        for key, param in m._parameters.items():
            setattr(replica, key, None if param is None else param * scale)
    return copies[id(network)]


class Wrapped(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        out = self.rnn(x)
        return out[0] if isinstance(out, tuple) else out


RECURRENT = {
    "lstm-2-layers-bidir": lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True),
    "lstm-proj": lambda: nn.LSTM(3, 5, num_layers=2, proj_size=2),
    "gru-batch-first": lambda: nn.GRU(3, 4, batch_first=True),
    "rnn-relu": lambda: nn.RNN(3, 4, nonlinearity="relu"),
    "gru-cell": lambda: nn.GRUCell(3, 4),
}


def _input(rnn):
    if isinstance(rnn, nn.RNNCellBase):
        return torch.randn(2, 3)
    return torch.randn(2, 6, 3) if rnn.batch_first else torch.randn(6, 2, 3)


def _with_parameters(module, scale):
    """An unwatched copy of `module` whose parameters are `scale` times its own: the reference."""
    ref = copy.deepcopy(module)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(scale)
    return ref


def _assert_unwatched(replica):
    for m in replica.modules():
        assert "forward" not in m.__dict__ and "_replicate_for_data_parallel" not in m.__dict__


@pytest.mark.parametrize("name", list(RECURRENT))
def test_a_replica_computes_with_its_own_parameters_and_no_probe(name):
    torch.manual_seed(0)
    model = Wrapped(RECURRENT[name]())
    reference = _with_parameters(model, 1.5)
    x = _input(model.rnn)
    mon = gradwatch.watch(model, every=1, console=False, strict=True)
    assert installed_adapter(model.rnn) is not None
    replica = cpu_replicate(model, 1.5)
    _assert_unwatched(replica)
    out = replica(x)
    torch.testing.assert_close(out, reference(x), rtol=0, atol=0)
    assert not torch.equal(out, model(x).detach())  # the original's forward uses the original's weights
    # the replica's gradient reaches the original parameters, where gradwatch reads it
    model.zero_grad()
    replica(x).pow(2).sum().backward()
    mon.step()
    reference(x).pow(2).sum().backward()
    for p, r in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, 1.5 * r.grad)
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    s = mon.history[0]
    assert s.grad_norm == pytest.approx(float(total), rel=1e-5)
    assert all(layer.timestep_grad_norms is None for layer in s.layers.values())  # replicas are not probed
    # the original module is still measured when it runs itself
    model(x).pow(2).sum().backward()
    mon.step()
    mon.close()
    assert all(layer.timestep_grad_norms is not None for layer in mon.history[1].layers.values())
    _assert_unwatched(model)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_replicas_of_a_copied_watched_model_use_their_own_parameters(how):
    """A copy of a watched model is the unwatched model (no gradwatch entry at all); its replicas use its own parameters."""
    torch.manual_seed(0)
    model = Wrapped(nn.LSTM(3, 4, num_layers=2))
    reference = _with_parameters(model, 0.5)
    mon = gradwatch.watch(model, console=False)
    clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    mon.close()
    assert not {"forward", "_replicate_for_data_parallel", "__getstate__"} & set(clone.rnn.__dict__)
    x = _input(clone.rnn)
    replica = cpu_replicate(clone, 0.5)
    _assert_unwatched(replica)
    torch.testing.assert_close(replica(x), reference(x), rtol=0, atol=0)
    with gradwatch.watch(clone, every=1, console=False, strict=True) as watched_clone:  # watching the copy works
        clone(x).sum().backward()
        watched_clone.step()
        _assert_unwatched(cpu_replicate(clone, 0.5))
    assert watched_clone.history[0].layers[("rnn", 1)].timestep_grad_norms is not None
    assert not {"forward", "_replicate_for_data_parallel", "__getstate__"} & set(clone.rnn.__dict__)


def test_watch_sees_through_dataparallel_on_cpu():
    """Without GPUs DataParallel calls the module itself: watching it is watching the inner model."""

    def run(wrap):
        torch.manual_seed(0)
        model = SeqClassifier(nn.LSTM)
        net = nn.DataParallel(model) if wrap else model
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = gradwatch.watch(net, opt, every=1, console=False, strict=True)
        assert [w.name for w in mon.watched] == ["rnn"]  # names relative to the inner module
        torch.manual_seed(1)
        for _ in range(3):
            x, y = lm_batch()
            loss = nn.functional.cross_entropy(net(x).reshape(-1, 20), y.reshape(-1))
            opt.zero_grad(); loss.backward(); opt.step(); mon.step(loss)
        mon.close()
        return mon, model

    plain_mon, plain_model = run(False)
    dp_mon, dp_model = run(True)
    assert list(dp_mon.history[0].layers) == [("rnn", 0), ("rnn", 1)]
    for a, b in zip(plain_mon.history, dp_mon.history):
        assert a.to_dict() == b.to_dict()
    assert all(torch.equal(p, q) for p, q in zip(plain_model.parameters(), dp_model.parameters()))
    _assert_unwatched(dp_model)


def test_cells_in_a_dataparallel_model_replicate_plainly():
    torch.manual_seed(0)
    model = CellDecoder()
    reference = _with_parameters(model, 2.0)
    mon = gradwatch.watch(nn.DataParallel(model), console=False)
    replica = cpu_replicate(model, 2.0)
    _assert_unwatched(replica)
    x = torch.randn(4, 2, 4)
    torch.testing.assert_close(replica(x), reference(x), rtol=0, atol=0)
    mon.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_replicate_and_parallel_apply_on_one_gpu():
    """The real DataParallel path (replicate -> parallel_apply -> gather) on one device."""
    from torch.nn.parallel import gather, parallel_apply, replicate

    torch.manual_seed(0)
    model = Wrapped(nn.LSTM(3, 4, num_layers=2)).cuda()
    x = torch.randn(6, 2, 3, device="cuda")
    expected = model(x).detach()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradwatch.watch(model, opt, every=1, console=False, strict=True)
    replicas = replicate(model, [0])
    _assert_unwatched(replicas[0])
    out = gather(parallel_apply(replicas, [(x,)]), 0)
    torch.testing.assert_close(out, expected)
    opt.zero_grad(); out.pow(2).sum().backward(); opt.step(); mon.step()
    mon.close()
    assert mon.history[0].grad_norm > 0


def test_gradwatch_run_of_a_dataparallel_script(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = nn.LSTM(2, 4, num_layers=2)
                self.head = nn.Linear(4, 1)
            def forward(self, x):
                return self.head(self.lstm(x)[0])
        net = nn.DataParallel(Net())
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(4):
            opt.zero_grad(); net(torch.randn(5, 2, 2)).pow(2).mean().backward(); opt.step()
    """))
    jsonl = tmp_path / "run.jsonl"
    assert main(["run", "--no-live", "--every", "2", "--jsonl", str(jsonl), str(script)]) == 0
    assert "watching DataParallel: lstm (LSTM, 2 layers)" in capsys.readouterr().err
    steps = [r for r in map(json.loads, jsonl.read_text().splitlines()) if r["type"] == "step"]
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    assert list(steps[0]["layers"]) == ["lstm:0", "lstm:1"]
    assert steps[0]["layers"]["lstm:1"]["timestep_grad_norms"] is not None
