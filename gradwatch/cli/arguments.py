"""Argument types shared by the commands: a bad value is a usage error (exit status 2) with one line.

    >>> parser.add_argument("--steps", type=positive_int, default=150)
    $ gradwatch demo --steps -5
    gradwatch demo: error: argument --steps: -5 is not a positive whole number (see gradwatch demo --help)
"""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "non_negative_float"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds ≥ 0 (e.g. 0.05)")
    return value
