"""The tables in docs/ that list code facts, generated from the code so that they cannot drift.

    $ python docs/generate.py            # rewrite every generated block in docs/*.md
    $ python docs/generate.py --check    # exit 1 if a block is out of date (tests/test_docs.py does this)

A generated block sits between `<!-- generated: NAME -->` and `<!-- end: NAME -->` in a page;
everything outside the markers is written by hand. Field and option descriptions come from the
docstrings next to each field in the code (records.py, detectors/config.py), the `watch()`
docstring and the command-line parsers, so a new field or option shows up in the docs by
running this script.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


# ---------------------------------------------------------------------------------------------- helpers
def value_text(value: Any) -> str:
    """A default as a reader types it: 100, 0.5, 1e-5, (), 'auto', None."""
    if isinstance(value, float):
        text = repr(value)
        return re.sub(r"e([+-])0*(\d)", lambda m: f"e{'-' if m.group(1) == '-' else ''}{m.group(2)}", text)
    if isinstance(value, str):
        return repr(value).replace("'", '"')
    return repr(value)


def field_docs(path: Path, cls_name: str) -> dict[str, str]:
    """{field: docstring} for the attribute docstrings of a class (a string right after a field)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls_name)
    docs, last = {}, None
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            last = node.target.id
        elif last and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):
            docs[last] = " ".join(node.value.value.split())
            last = None
        else:
            last = None
    return docs


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not the one of "e.g.")."""
    match = re.match(r"(.+?)\.(?=\s+[A-Z]|$)", text)
    return (match.group(1) if match else text).rstrip(".")


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def _type_text(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("gradwatch.records.", "")


# ---------------------------------------------------------------------------------------------- blocks
def records_table(cls_name: str) -> Callable[[], str]:
    def make() -> str:
        from gradwatch import records

        cls = getattr(records, cls_name)
        docs = field_docs(Path(records.__file__), cls_name)
        rows = ["| field | type | definition |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            rows.append(f"| `{f.name}` | `{cell(_type_text(f.type))}` | {cell(docs.get(f.name, ''))} |")
        return "\n".join(rows) + "\n"

    return make


def detector_options() -> str:
    from gradwatch.detectors import config

    docs = field_docs(Path(config.__file__), "DetectorConfig")
    defaults = config.DetectorConfig()
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(config.DetectorConfig):
        rows.append(f"| `{f.name}` | `{value_text(getattr(defaults, f.name))}` | "
                    f"{cell(first_sentence(docs.get(f.name, '')))} |")
    return "\n".join(rows) + "\n"


def _watch_arg_docs() -> dict[str, str]:
    from gradwatch.watch import watch

    doc = inspect.getdoc(watch) or ""
    args = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    found: dict[str, str] = {}
    name = None
    for line in args.splitlines():
        match = re.match(r"\s{4}(\*{0,2}\w+): (.*)", line)
        if match:
            name = match.group(1).lstrip("*")
            found[name] = match.group(2).strip()
        elif name and line.strip():
            found[name] += " " + line.strip()
    return found


def watch_options() -> str:
    from gradwatch.watch import watch

    docs = _watch_arg_docs()
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for p in inspect.signature(watch).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            rows.append(f"| `**thresholds` | | every detector threshold, by name: [detectors.md](detectors.md#thresholds) |")
            continue
        default = "required" if p.default is p.empty else f"`{value_text(p.default)}`"
        rows.append(f"| `{p.name}` | {default} | {cell(docs.get(p.name, ''))} |")
    return "\n".join(rows) + "\n"


def cli_options(command: str) -> Callable[[], str]:
    def make() -> str:
        from gradwatch.cli import build_parser

        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        usage = " ".join(sub.format_usage().split()).removeprefix("usage: ")
        rows = ["```console", f"$ {usage}", "```", "", "| option | default | meaning |", "|---|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = ", ".join(action.option_strings) or (action.metavar or action.dest)
            if action.option_strings and action.nargs != 0:
                name += f" {action.metavar or action.dest.upper()}"
            if action.choices:
                name += " {" + ",".join(map(str, action.choices)) + "}"
            default = "" if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings \
                else f"`{action.default}`"
            rows.append(f"| `{name}` | {default} | {cell(action.help or '')} |")
        return "\n".join(rows) + "\n"

    return make


BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "step-stats": ("records.md", records_table("StepStats")),
    "layer-stats": ("records.md", records_table("LayerStats")),
    "direction-stats": ("records.md", records_table("DirectionStats")),
    "non-finite": ("records.md", records_table("NonFinite")),
    "clip-event": ("records.md", records_table("ClipEvent")),
    "alert": ("records.md", records_table("Alert")),
    "detector-options": ("detectors.md", detector_options),
    "watch-options": ("watch.md", watch_options),
    **{f"cli-{c}": ("cli.md", cli_options(c)) for c in ("demo", "run", "plot", "bench")},
}


# ---------------------------------------------------------------------------------------------- files
def generated(text: str) -> dict[str, str]:
    """The generated blocks of a page, by name."""
    return {m.group("name"): m.group("body") for m in MARK.finditer(text)}


def refresh(text: str) -> str:
    """`text` with every known generated block rewritten."""
    def replace(m: re.Match[str]) -> str:
        name = m.group("name")
        body = BLOCKS[name][1]() if name in BLOCKS else m.group("body")
        return f"{m.group(1)}{body}{m.group(4)}"

    return MARK.sub(replace, text)


def stale() -> list[str]:
    """'page: block' for every block that is missing or out of date."""
    problems = []
    for name, (page, _) in BLOCKS.items():
        text = (DOCS / page).read_text(encoding="utf-8")
        if name not in generated(text):
            problems.append(f"{page}: no '{name}' block")
        elif refresh(text) != text:
            problems.append(f"{page}: '{name}' is out of date")
    return sorted(set(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks, change nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        print("\n".join(problems) or "docs are up to date")
        return 1 if problems else 0
    for page in sorted({page for page, _ in BLOCKS.values()}):
        path = DOCS / page
        text = path.read_text(encoding="utf-8")
        new = refresh(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
