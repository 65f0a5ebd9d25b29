"""One command for gradwatch's three benchmarks: overhead, detection quality, clipping efficacy.

    gradwatch bench --quick --out bench-out         # about 2 minutes of CPU time
    python benchmarks/bench.py --out bench-out      # the full run (longer)
    gradwatch bench --device cuda                   # the overhead part on a GPU

Writes `results.json`, `results.md` (the tables) and PNG plots into `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import overhead
from benchmarks.heatmaps import heatmap_runs, plot_heatmaps

__all__ = ["run", "main"]

PARTS = ("overhead", "detection", "clipping", "heatmaps")


def _overhead(quick: bool, device: str, progress: Callable[[str], None]) -> dict[str, Any]:
    grid = overhead.GRID_QUICK if quick else overhead.GRID_FULL
    configs = dict(overhead.CONFIGS)
    if quick:
        configs = {k: v for k, v in configs.items() if k != "baseline: detect_anomaly"}
    rows = []
    for case in grid:
        progress(f"overhead {case.cell} T={case.seq_len} H={case.hidden} L={case.layers}")
        result = overhead.measure(case, configs, reps=3 if quick else 7, block=10, device=device)
        rows.append({"case": asdict(case), "result": result})
    syncs = count_syncs(device) if device == "cuda" else None
    return {"machine": overhead.machine(), "device": device, "rows": rows, "syncs_per_step": syncs,
            "table": overhead.table([(overhead.Case(**r["case"]), r["result"]) for r in rows])}


def count_syncs(device: str) -> dict[str, int]:
    """Host-device syncs per step with default options, counted by CUDA's sync debug mode."""
    import warnings

    case = overhead.Case(hidden=128, seq_len=32, batch=16)
    counts = {}
    for name in ("default", "default + clip='auto'"):
        torch.manual_seed(0)
        model = overhead._Model(case).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(case.seq_len, case.batch, case.features, device=device)
        monitor = overhead.CONFIGS[name](model, opt)
        for _ in range(3):  # warm-up outside the count
            loss = torch.nn.functional.mse_loss(model(x), x)
            opt.zero_grad(); loss.backward(); opt.step(); monitor.step(loss)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            for _ in range(10):
                loss = torch.nn.functional.mse_loss(model(x), x)
                opt.zero_grad(); loss.backward(); opt.step(); monitor.step(loss)
            torch.cuda.set_sync_debug_mode("default")
        monitor.close()
        counts[name] = sum("synchroniz" in str(w.message) for w in caught) // 10
    return counts


def _detection(quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks import scenarios

    progress("detection scenarios")
    result = scenarios.run_suite(quick=quick, progress=progress)
    result["table"] = scenarios.markdown(result)
    return result


def _clipping(quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks import clipping

    progress("clipping efficacy")
    return clipping.run_benchmark(quick=quick, log=progress)


def _plot_overhead(result: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    files = []
    for axis, label, name in (("seq_len", "sequence length T", "overhead_vs_T.png"),
                              ("params", "parameters of the recurrent stack", "overhead_vs_size.png")):
        base = [r for r in rows if r["case"]["cell"] == "LSTM"]
        if axis == "seq_len":
            ref = {k: v for k, v in base[0]["case"].items() if k not in ("seq_len",)} if base else {}
            pts = [r for r in base if all(r["case"][k] == v for k, v in ref.items() if k not in ("batch",))]
            key = lambda r: r["case"]["seq_len"]  # noqa: E731
        else:
            pts = base
            key = lambda r: _params(r["case"])  # noqa: E731
        pts = sorted({key(r): r for r in pts}.values(), key=key)
        if len(pts) < 2:
            continue
        fig, ax = plt.subplots(figsize=(9, 4))
        for config in pts[0]["result"]:
            if config == "plain":
                continue
            ax.plot([key(r) for r in pts], [100 * (r["result"][config]["ratio"] - 1) for r in pts], marker="o",
                    label=config)
        ax.set_xscale("log")
        ax.set_xticks([key(r) for r in pts], [f"{key(r):,}" for r in pts])  # the measured points, plainly
        ax.minorticks_off()
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel(label)
        ax.set_ylabel("step-time overhead vs plain (%)")
        ax.set_title(f"gradwatch overhead ({result['device']}; median of interleaved repetitions)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def _params(case: dict[str, Any]) -> int:
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[case["cell"]]
    h, f = case["hidden"], case["features"]
    return sum(gates * h * ((f if layer == 0 else h) + h + 2) for layer in range(case["layers"]))


def _plot_clipping(result: dict[str, Any], out: Path) -> list[str]:
    """Final held-out loss per policy and task: blue bars; red where a seed diverged; a run that
    diverged in every seed has no loss, so its bar is red, hatched and as tall as the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = result.get("rows") or []
    if not rows:
        return []
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    ncols = min(5, len(tasks))  # a grid, so that ten tasks stay readable
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.3 * nrows + 0.5), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for k, (ax, task) in enumerate(zip(axes.flat, tasks)):
        cells = [next((r for r in rows if r["task"] == task and r["policy"] == p), None) for p in policies]
        losses = [c["final_loss"] for c in cells if c and c.get("final_loss") is not None]
        top = 1.15 * max(losses, default=1.0)
        for i, cell in enumerate(cells):
            if cell is None:
                continue
            diverged, seeds = cell.get("divergences") or 0, cell.get("seeds") or 0
            if cell.get("final_loss") is None:  # every seed diverged: no loss to show
                ax.bar(i, top, color="tab:red", alpha=0.35, hatch="//", edgecolor="tab:red")
                ax.text(i, top * 0.5, "diverged", rotation=90, ha="center", va="center", fontsize=7)
            else:
                ax.bar(i, cell["final_loss"], color="tab:red" if diverged else "tab:blue")
                if diverged:
                    ax.text(i, cell["final_loss"], f"{diverged}/{seeds}", ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, top)
        ax.set_xticks(range(len(policies)))
        ax.set_xticklabels(policies, rotation=60, ha="right", fontsize=7)
        ax.set_title(task, fontsize=9)
        if k % ncols == 0:
            ax.set_ylabel("final held-out loss\n(mean over seeds)", fontsize=8)
    fig.legend(handles=[Patch(color="tab:blue", label="no seed diverged"),
                        Patch(color="tab:red", label="diverged in k of n seeds (mean of the others)"),
                        Patch(facecolor="tab:red", alpha=0.35, hatch="//", edgecolor="tab:red",
                              label="diverged in every seed")],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.5 / (3.3 * nrows + 0.5), 1, 1))
    fig.savefig(out / "clipping_final_loss.png", dpi=110)
    plt.close(fig)
    return ["clipping_final_loss.png"]


def run(out: Path, *, quick: bool = False, device: str = "cpu", parts: tuple[str, ...] = PARTS,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the selected parts, write results.json / results.md / plots into `out`, return the results."""
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"quick": quick, "device": device, "machine": overhead.machine(),
                               "torch": torch.__version__}
    plots: list[str] = []
    started = time.perf_counter()
    if "overhead" in parts:
        results["overhead"] = _overhead(quick, device, progress)
        plots += _plot_overhead(results["overhead"], out)
    if "detection" in parts:
        results["detection"] = _detection(quick, progress)
    if "clipping" in parts:
        results["clipping"] = _clipping(quick, progress)
        plots += _plot_clipping(results["clipping"], out)
    if "heatmaps" in parts:
        progress("heatmaps")
        plots += plot_heatmaps(heatmap_runs(quick=quick), out)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["plots"] = plots
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.md").write_text(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# gradwatch benchmarks ({'quick' if results['quick'] else 'full'} run)", "",
             f"Machine: {results['machine']}; device: {results['device']}; took {results.get('seconds')} s.", ""]
    if "overhead" in results:
        lines += ["## Overhead (median step-time ratio vs plain training, interleaved blocks)", "",
                  results["overhead"]["table"], ""]
        if results["overhead"].get("syncs_per_step") is not None:
            lines += [f"Host-device syncs per step (CUDA): {results['overhead']['syncs_per_step']}", ""]
    for part, title in (("detection", "Detection quality"), ("clipping", "Clipping efficacy")):
        if part in results:
            lines += [f"## {title}", "", results[part].get("table", ""), ""]
    for plot in results.get("plots", []):
        lines.append(f"![{plot}]({plot})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradwatch bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out", help="output folder (default: bench-out)")
    parser.add_argument("--quick", action="store_true", help="small grid: about 2 minutes of CPU time")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gradwatch bench: --device cuda asked for, but CUDA is not available", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = set(parts) - set(PARTS)
    if unknown:
        print(f"gradwatch bench: unknown part(s) {sorted(unknown)}; choose from {PARTS}", file=sys.stderr)
        return 2
    results = _run_with_progress(Path(args.out), args.quick, args.device, parts)
    print(markdown(results))
    return 0


def _run_with_progress(out: Path, quick: bool, device: str, parts: tuple[str, ...]) -> dict[str, Any]:
    try:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    except ImportError:  # pragma: no cover
        return run(out, quick=quick, device=device, parts=parts)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("benchmarks", total=None)
        return run(out, quick=quick, device=device, parts=parts,
                   progress=lambda text: bar.update(task, description=text))


if __name__ == "__main__":
    raise SystemExit(main())
