"""`gradwatch bench`: overhead, detection quality and clipping efficacy in one command.

    $ gradwatch bench --quick --out bench-out

The benchmark code lives in the repository's `benchmarks/` folder (outside the import path of
the library); this command finds it next to the installed package (a checkout install).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import GradwatchError

__all__ = ["add_arguments", "main", "run_bench"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench-out", help="output folder for results.json, results.md and plots")
    parser.add_argument("--quick", action="store_true", help="small grid: about 2 minutes of CPU time")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the overhead part runs")
    parser.add_argument("--parts", default="overhead,detection,clipping,heatmaps", help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def _benchmarks_folder() -> Path:
    root = Path(__file__).resolve().parents[2]
    if (root / "benchmarks" / "bench.py").is_file():
        return root
    raise GradwatchError(
        f"the benchmarks/ folder of a gradwatch checkout is needed (looked in {root}); "
        "install from a checkout with `pip install -e .` and run it there."
    )


def _require_matplotlib() -> None:
    """Fail before minutes of benchmarks, not at the first plot after them."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise GradwatchError(
            "the results are drawn with matplotlib, which is not installed: "
            "pip install 'gradwatch[plot]' (or pip install -e '.[dev]' in a checkout), then run it again."
        ) from exc


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmarks; returns the exit status."""
    _require_matplotlib()
    root = str(_benchmarks_folder())
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import bench

    argv = ["--out", args.out, "--device", args.device, "--parts", args.parts, "--threads", str(args.threads)]
    return bench.main(argv + (["--quick"] if args.quick else []))


def main(args: argparse.Namespace) -> int:
    return run_bench(args)
