"""`mypy --strict` over gradwatch/ (settings in pyproject.toml, [tool.mypy]): any error fails the suite.

The types are the contracts between the parts (records, Protocols for sinks, detectors, actions
and the reducer); this is where CI checks them. Skipped only where mypy is not installed
(`pip install -e ".[dev]"` installs it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mypy_strict_finds_no_error_in_the_package():
    """Run as CI runs it: `pip install -e` and no PYTHONPATH. (Regression: with the repository on
    PYTHONPATH mypy stayed silent about benchmarks/, which gradwatch/cli/bench.py imports; without
    it, as in CI, it reported 74 errors there until pyproject.toml told it to follow that import
    silently.)"""
    pytest.importorskip("mypy", reason="mypy is in the dev extra: pip install -e '.[dev]'")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)
    report = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, f"mypy --strict (pyproject.toml settings) failed:\n{report}"
    assert "Success: no issues found" in report, report
