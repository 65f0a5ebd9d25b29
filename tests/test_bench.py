"""`gradwatch bench --quick` runs end to end and writes its tables and plots (a smoke run, not a measurement)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from extras import needs_matplotlib


@needs_matplotlib
def test_bench_quick_writes_results_tables_and_plots(tmp_path):
    out = tmp_path / "bench"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "gradwatch", "bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)  # not slowed by other jobs
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {"overhead", "detection", "clipping"} <= set(results)
    md = (out / "results.md").read_text()
    for heading in ("## Overhead", "## Detection quality", "## Clipping efficacy"):
        assert heading in md
    for plot in ("overhead_vs_T.png", "overhead_vs_size.png", "clipping_final_loss.png",
                 "heatmap_vanishing.png", "heatmap_exploding.png"):
        assert (out / plot).stat().st_size > 10_000, plot
    rows = results["overhead"]["rows"]
    assert all("default" in r["result"] and r["result"]["default"]["ratio"] > 0 for r in rows)
    assert cpu < 240, f"--quick took {cpu:.0f} s of CPU time"


def test_hook_time_benchmark_runs_and_restores_the_monitor(tmp_path):
    """`benchmarks/hook_time.py` (a smoke run): it times the monitor's hooks and puts them back."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import hook_time
    from gradwatch.monitor import Monitor

    before = {name: getattr(Monitor, name) for name in hook_time.TIMED}
    assert hook_time.measure(8, blocks=7, block=2) > 0
    assert {name: getattr(Monitor, name) for name in hook_time.TIMED} == before


def test_bench_without_matplotlib_stops_at_once_with_one_clear_error(monkeypatch, capsys):
    """It used to run the benchmarks for minutes, then die with a raw ModuleNotFoundError."""
    from gradwatch.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    started = time.perf_counter()
    status = main(["bench", "--quick", "--parts", "detection"])
    err = capsys.readouterr().err
    assert status == 2
    assert time.perf_counter() - started < 5
    assert err.count("\n") == 1 and "matplotlib" in err and "pip install 'gradwatch[plot]'" in err
    assert err.startswith("gradwatch bench: error: ") and err.count("gradwatch bench") == 1
