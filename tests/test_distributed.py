"""DistributedDataParallel on 2 CPU processes (gloo): every rank gets the same, global records."""

from __future__ import annotations

import gc
import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

WORLD = 2
STEPS = 4
NAN_STEP = 3


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 5, num_layers=2)
        self.head = nn.Linear(5, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0]).pow(2).mean()


def _worker(rank, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=WORLD)
    try:
        _train(rank, out_dir)
        # drop the DDP model and the monitor (its gloo work objects) before the group is destroyed, not at
        # interpreter shutdown. Suspected, not reproduced: rank 0 died with SIGABRT ("terminate called
        # without an active exception") in about 1 of 8 full-suite runs, never when this file ran alone
        gc.collect()
    finally:
        dist.destroy_process_group()


def _train(rank, out_dir):
    """Train `STEPS` watched DDP steps on this rank and write what it saw to rank{rank}.json."""
    import gradwatch

    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(Net())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = gradwatch.watch(model, opt, every=2, console=False, strict=True,
                              jsonl=os.path.join(out_dir, "run.jsonl"))
    generator = torch.Generator().manual_seed(100 + rank)
    local = []
    for step in range(STEPS):
        x = torch.randn(6 + rank + step % 2, 2, 3, generator=generator)  # ranks see different lengths
        if step == NAN_STEP and rank == 1:
            x[4, 0, 0] = math.nan  # only rank 1 meets the bad batch
        x.requires_grad_()
        loss = model(x)
        opt.zero_grad(); loss.backward(); opt.step()
        monitor.step(loss)
        local.append({"xgrad_sq": x.grad.pow(2).sum(dim=(1, 2)).tolist(), "loss": loss.item()})
    monitor.close()
    result = {"history": [s.to_dict() for s in monitor.history], "local": local,
              "sinks": len(monitor._sinks), "alerts": [a.to_dict() for a in monitor.alerts]}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f, default=str)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    mp.spawn(_worker, args=(out_dir,), nprocs=WORLD, join=True)
    results = []
    for rank in range(WORLD):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
            results.append(json.load(f))
    return out_dir, results


def test_every_rank_gets_identical_records_and_alerts(ranks):
    _, (r0, r1) = ranks
    assert len(r0["history"]) == STEPS
    assert json.dumps(r0["history"]) == json.dumps(r1["history"])  # bit-identical, NaN included
    assert r0["alerts"] == r1["alerts"]


def test_per_timestep_norms_cover_the_global_batch(ranks):
    _, (r0, r1) = ranks
    for step in range(0, NAN_STEP, 2):  # probe steps before the NaN
        a, b = r0["local"][step]["xgrad_sq"], r1["local"][step]["xgrad_sq"]
        padded = [(a[t] if t < len(a) else 0.0) + (b[t] if t < len(b) else 0.0) for t in range(max(len(a), len(b)))]
        measured = r0["history"][step]["layers"]["rnn:0"]["timestep_grad_norms"]
        assert measured == pytest.approx([math.sqrt(v) for v in padded], rel=1e-5)


def test_loss_is_the_mean_over_ranks(ranks):
    _, (r0, r1) = ranks
    for step in range(NAN_STEP):
        expected = (r0["local"][step]["loss"] + r1["local"][step]["loss"]) / 2
        assert r0["history"][step]["loss"] == pytest.approx(expected, rel=1e-6)


def test_a_nan_on_one_rank_is_located_on_every_rank(ranks):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        assert r["history"][NAN_STEP]["nonfinite"] == {"where": "input", "module": "rnn", "layer": 0, "timestep": 4}


def test_only_rank_0_writes(ranks):
    out_dir, (r0, r1) = ranks
    assert r0["sinks"] == 1 and r1["sinks"] == 0
    with open(os.path.join(out_dir, "run.jsonl")) as f:
        types = [json.loads(line)["type"] for line in f]
    assert types == ["run"] + ["step"] * STEPS + ["end"]
