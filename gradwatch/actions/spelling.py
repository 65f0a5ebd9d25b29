"""`--clip` on the command line: every clipping policy by name, with its parameters.

    >>> parse_clip("norm:0.25")          # Norm(max_norm=0.25); a bare "0.25" means the same
    >>> parse_clip("zclip")              # ZClip() with its published defaults
    >>> parse_clip("zclip:z_threshold=3,alpha=0.95")
    >>> parse_clip("agc:0.01")           # AGC(clip_factor=0.01)

The spelling is `NAME`, `NAME:VALUE` (the policy's main parameter) or `NAME:KEY=VALUE,...`.
Errors list these spellings, not Python constructors: a shell user cannot type `ZClip()`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from ..errors import GradwatchError
from .auto import Auto
from .clipping import AGC, AutoClip, Norm, Value, ZClip

__all__ = ["parse_clip", "cli_spelling", "CLI_SPELLINGS"]

_POLICIES: dict[str, tuple[type, str | None]] = {
    "auto": (Auto, None),
    "norm": (Norm, "max_norm"),
    "value": (Value, "clip_value"),
    "zclip": (ZClip, "z_threshold"),
    "autoclip": (AutoClip, "percentile"),
    "agc": (AGC, "clip_factor"),
}
"""CLI name: (policy class, the parameter a bare `NAME:VALUE` sets)."""

CLI_SPELLINGS = (
    "auto | norm:MAX_NORM (or just a number, e.g. 0.25) | value:CLIP_VALUE | zclip[:Z_THRESHOLD] | "
    "autoclip[:PERCENTILE] | agc[:CLIP_FACTOR]; other parameters as NAME:KEY=VALUE,..., e.g. "
    "zclip:alpha=0.95,z_threshold=3 or auto:max_update=0.02"
)


def _number(text: str, what: str, given: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise GradwatchError(f"--clip {given}: {what} must be a number, got {text!r}. Supported: {CLI_SPELLINGS}.") from None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() and math.isfinite(value) else value


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def parse_clip(text: str) -> Any:
    """The clipping policy for `--clip TEXT` (a policy object for `watch(clip=...)`)."""
    given = text
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:  # a bare number is a max norm, as before
        if not (0 < number < math.inf):
            raise GradwatchError(f"--clip {given}: a max norm must be a positive finite number, e.g. --clip 1.0 "
                                 f"(or norm:1.0). Supported: {CLI_SPELLINGS}.")
        return Norm(number)
    name, _, rest = text.partition(":")
    entry = _POLICIES.get(name.strip().lower())
    if entry is None:
        _reject(given)
    cls, main = entry  # type: ignore[misc]
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            if main is None or kwargs:
                raise GradwatchError(f"--clip {given}: {name} takes KEY=VALUE parameters ({', '.join(_fields(cls))}), "
                                     f"got {part!r}. Supported: {CLI_SPELLINGS}.")
            key, value = main, part
        key = key.strip()
        if key not in _fields(cls):
            raise GradwatchError(f"--clip {given}: {name} has no parameter {key!r}; its parameters: "
                                 f"{', '.join(_fields(cls))}.")
        kwargs[key] = _number(value.strip(), key, given)
    if main is not None and main not in kwargs and cls in (Norm, Value):
        raise GradwatchError(f"--clip {given}: {name} needs its threshold, e.g. --clip {name}:1. Supported: {CLI_SPELLINGS}.")
    try:
        return cls(**kwargs)
    except GradwatchError as exc:
        raise GradwatchError(f"--clip {given}: {_cli_message(str(exc))} Supported: {CLI_SPELLINGS}.") from None


def _cli_message(message: str) -> str:
    """A policy's own validation message, with the Python constructor spelled as the CLI option."""
    message = re.sub(r"gradwatch\.actions\.\w+\((\w+)=\.\.\.\)", r"\1", message)  # Norm(max_norm=...) → max_norm
    return re.sub(r"gradwatch\.actions\.(\w+)", lambda m: m.group(1).lower(), message)


def _reject(given: str) -> Any:
    raise GradwatchError(f"--clip {given!r} is not a clipping policy. Supported: {CLI_SPELLINGS}.")


def cli_spelling(policy: Any) -> str:
    """How to ask for `policy` on the command line (`Norm(0.25)` → 'norm:0.25'); the inverse of `parse_clip`."""
    for name, (cls, main) in _POLICIES.items():
        if type(policy) is cls:
            changed = {f.name: getattr(policy, f.name) for f in dataclasses.fields(cls)
                       if getattr(policy, f.name) != f.default}
            if not changed:
                return name
            if main is not None and list(changed) == [main]:
                return f"{name}:{changed[main]:g}"
            return f"{name}:" + ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                         for k, v in changed.items())
    raise GradwatchError(f"{policy!r} has no --clip spelling.")
