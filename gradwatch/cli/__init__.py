"""The `gradwatch` command: `run`, `demo`, `plot` and `bench`.

    $ gradwatch demo                                  # see it work in under a minute
    $ gradwatch run --jsonl run.jsonl train.py --lr 20
    $ gradwatch plot run.jsonl -o report.png

`main(argv)` runs a command and returns its exit status; `entry()`, the console script (also
`python -m gradwatch`), exits with it. Each command lives in its own module with `add_arguments(parser)` and
`main(args) -> int`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from importlib import import_module
from types import ModuleType
from typing import NoReturn, Sequence

from ..errors import GradwatchError

__all__ = ["main", "entry", "build_parser"]

COMMANDS = {
    "run": "run an unmodified training script and watch its recurrent layers",
    "demo": "a built-in synthetic run showing the live console and the warnings",
    "plot": "draw a report (heatmap of per-timestep gradient norms, curves, alerts) from a JSONL file",
    "bench": "benchmarks: overhead, detection quality and clipping efficacy",
}


def _command_module(name: str) -> ModuleType:
    return import_module(f"{__name__}.{name}")


class _UsageError(Exception):
    """A bad command line: `main` prints it as one line and returns 2."""


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit status 2 (argparse's usage block left out)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="gradwatch",
        description="See where the gradients of your recurrent network vanish or explode.",
        epilog="Start with `gradwatch demo`; `gradwatch COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"gradwatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        _command_module(name).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(_command_module(args.command).main(args))
    except GradwatchError as exc:
        prefix = f"gradwatch {args.command}"
        text = str(exc)
        if text.startswith(prefix + " "):  # a library message that already names the command
            text = text[len(prefix) + 1:]
        print(f"{prefix}: error: {text}", file=sys.stderr)
        return 2


def entry() -> None:
    """The `gradwatch` console script and `python -m gradwatch`: exit with `main()`'s status.

    When `gradwatch run`'s script was ended by Ctrl-C, this process ends by SIGINT, as Python
    itself does for an uncaught KeyboardInterrupt: the shell then sees "killed by SIGINT" (not a
    plain exit status 130) and stops a loop or a `&&` chain around the command.
    """
    from .run import ScriptInterrupted

    try:
        status = main()
    except ScriptInterrupted:
        sys.stdout.flush()
        sys.stderr.flush()
        if os.name == "posix":
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        status = 130
    sys.exit(status)
