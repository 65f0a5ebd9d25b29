"""benchmarks/cuda_checks.py: the one-command CUDA check script, exercised by its CPU dry run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks import cuda_checks

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_runs_every_check_and_writes_json_and_markdown(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "benchmarks/cuda_checks.py", "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "cuda_checks.json").read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    # what needs CUDA skips (tests, sync detection, GPU timings); the rest runs on the CPU and passes
    assert status == {"tests": "skip", "sync": "skip", "overhead": "skip", "amp": "pass", "dropout": "pass"}
    checks = {c["name"]: c["details"] for c in report["checks"]}
    assert all(case["status"] == "ran" for case in checks["sync"]["cases"].values())  # no sync detection on a CPU
    assert checks["sync"]["cases"]["default LSTM"]["probed_steps"] == [0, 10]  # the default every=10 probes
    assert checks["amp"]["default"]["records"] == cuda_checks.AMP_STEPS - 1  # the Inf step left no record
    assert checks["dropout"]["dropout=0.3"]["every=1"]["params_bitwise_equal"]
    assert "| LSTM |" in checks["overhead"]["table"]
    assert "## dropout: pass" in (tmp_path / "cuda_checks.md").read_text()
    assert proc.stdout.strip().splitlines()[-1].strip().startswith("- dropout=0.3")  # the summary comes last


def test_cuda_tests_are_the_ones_marked_needs_cuda():
    expected = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        if path.name == "test_cuda_checks.py":
            continue
        # independent of the script's AST walk: the test function that follows each CUDA skipif line
        for match in re.finditer(r"skipif\(not torch\.cuda\.is_available\(\).*?\ndef (test_\w+)", path.read_text(), re.S):
            expected.add(f"tests/{path.name}::{match.group(1)}")
    assert expected and set(cuda_checks.cuda_test_ids()) == expected


def test_a_check_past_its_limit_is_reported_as_a_timeout_and_keeps_its_log(tmp_path):
    result = cuda_checks._run_child("sync", tmp_path, True, 0.01)
    assert result["status"] == "timeout" and "stopped after" in result["error"]
    assert (tmp_path / "sync.log").exists()


def test_dropout_check_fails_when_the_replay_draws_other_masks_than_the_fused_kernel(monkeypatch, tmp_path):
    """What cuDNN would do: its fused kernel draws dropout masks from its own state, not from the
    F.dropout the replay calls. Here F.dropout draws one extra number first, so its masks differ
    from the fused CPU kernel's; the check must see the parameters part."""
    plain_dropout = torch.nn.functional.dropout

    def other_masks(x, p=0.5, training=True, inplace=False):
        torch.rand(1, device=x.device)
        return plain_dropout(x, p, training, inplace)

    monkeypatch.setattr(torch.nn.functional, "dropout", other_masks)
    details: dict = {}
    assert cuda_checks.check_dropout("cpu", details, lambda: None, tmp_path) == "fail"
    assert details["dropout=0.0"]["status"] == "pass"  # no dropout, no masks to differ
    assert details["dropout=0.3"]["replay_matches_autograd"]  # the reference uses the same F.dropout
    assert not details["dropout=0.3"]["every=1"]["params_bitwise_equal"]
    assert "dropout masks" in details["diagnosis"]


def test_sync_check_reports_each_case_that_converts_a_tensor_inside_the_guard(monkeypatch, tmp_path):
    """On the GPU `set_sync_debug_mode("error")` raises at a sync; here a guard that forbids `.item()`
    stands in for it. gradwatch's CPU path reads its norms on the host by design (host_group_sumsq),
    so every watched "error" case must fail with the exception, the unwatched control must pass, and
    one failing case must not stop the next."""
    def forbid(*args, **kwargs):
        raise RuntimeError("tensor.item() inside the guarded steps")

    @contextlib.contextmanager
    def item_guard(device, mode):
        item = torch.Tensor.item
        if mode == "error":
            torch.Tensor.item = forbid
        try:
            yield []
        finally:
            torch.Tensor.item = item

    monkeypatch.setattr(cuda_checks, "_sync_guard", item_guard)
    details: dict = {}
    cuda_checks.check_sync("cpu", details, lambda: None, tmp_path)
    cases = details["cases"]
    assert cases["control: unwatched LSTM"]["status"] == "ran"
    watched = {name: case for name, case in cases.items() if name.startswith(("default", "clip"))}
    assert len(watched) == 12  # 4 default models, 6 policies, auto on a GRUCell and under a LambdaLR warm-up
    assert all(case["status"] == "fail" and "tensor.item()" in case["error"] for case in watched.values())
