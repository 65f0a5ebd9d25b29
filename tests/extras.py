"""Markers for tests that need an optional extra: without it they are skipped, not failed.

`pip install -e ".[dev]"` brings every extra the suite uses (CI installs exactly that), so in CI
none of these tests is skipped.
"""

from __future__ import annotations

import importlib.util

import pytest


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


needs_matplotlib = pytest.mark.skipif(
    _missing("matplotlib"), reason="needs matplotlib (pip install -e '.[dev]' or 'gradwatch[plot]')")
