"""Argument types shared by the commands: a bad value is a usage error (exit status 2) with one line.

    >>> parser.add_argument("--steps", type=positive_int, default=150)
    $ gradwatch demo --steps -5
    gradwatch demo: error: argument --steps: -5 is not a positive whole number (see gradwatch demo --help)
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from typing import Any

from ..errors import GradwatchError

__all__ = ["positive_int", "non_negative_float", "chance_loss", "detector_setting"]


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


def chance_loss(text: str) -> float:
    """`--chance-loss X`: the loss of an input-blind model of the task, a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"{text} is not a positive finite number: give the loss of a model that ignores its inputs, "
            "e.g. 2.303 (ln 10, 10 balanced classes with cross-entropy) or the target's variance for MSE")
    return value


def detector_setting(text: str) -> tuple[str, Any]:
    """`--detector KEY=VALUE`: one `DetectorConfig` field with a value of its type, checked as watch() checks it.

        >>> detector_setting("cooldown=50")
        ('cooldown', 50)
        >>> detector_setting("disable=oscillation,norm_spike")
        ('disable', ('oscillation', 'norm_spike'))
    """
    from ..detectors.config import DetectorConfig

    key, eq, raw = (part.strip() for part in text.partition("="))
    names = DetectorConfig.option_names()
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. --detector cooldown=50")
    if key not in names:
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise argparse.ArgumentTypeError(
            f"{text}: no detector option {key!r}{hint}; the options (docs/detectors.md#thresholds): {', '.join(names)}")
    default = getattr(DetectorConfig(), key)
    value: Any
    if isinstance(default, tuple):
        value = tuple(filter(None, (s.strip() for s in raw.split(","))))
    elif isinstance(default, int):
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text}: {key} takes a positive whole number, got {raw!r}") from None
    else:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text}: {key} takes a positive number, got {raw!r}") from None
    try:
        DetectorConfig.from_options({key: value})
    except GradwatchError as exc:  # watch()'s own check, spelled for the command line
        message = re.sub(r"gradwatch\.watch\((\w+)=\.\.\.\)", r"\1", str(exc)).rstrip(".")
        raise argparse.ArgumentTypeError(f"{text}: {message}") from None
    return key, value
