"""No import cycle in gradwatch: every module imports on its own, and the package-level graph is acyclic.

The capture ↔ stream cycle (capture/session.py imported stream/accumulator.py while stream/build.py
imported capture/params.py for `GroupKey`) and the stats ↔ stream one (stats/tensor_stats.py
imported a test-only mark from stream/readback.py) both fail `test_subpackages_import_one_way`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import gradwatch

PACKAGE = Path(gradwatch.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def module_imports(path: Path) -> set[str]:
    """The gradwatch modules `path` imports when it is imported (top-level statements only: imports
    inside functions run later, and `if TYPE_CHECKING:` blocks never)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            submodules = {f"{base}.{a.name}" for a in node.names} & set(MODULES)
            found |= submodules or {base}
    return {m for m in found if m == "gradwatch" or m.startswith("gradwatch.")}


def _part(module: str) -> str:
    """The top-level part a module belongs to: `capture` for gradwatch.capture.session."""
    return module.split(".")[1] if "." in module else module


def part_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = _part(_module_name(path))
        graph.setdefault(source, set()).update(_part(m) for m in module_imports(path) if _part(m) != source)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_cycle_finder_finds_a_two_part_cycle():
    assert _cycle({"capture": {"stream"}, "stream": {"capture", "records"}}) == ["capture", "stream", "capture"]
    assert _cycle({"capture": {"stream"}, "stream": {"records"}}) is None


def test_subpackages_import_one_way():
    graph = {part: deps for part, deps in part_graph().items() if part != "gradwatch"}
    graph.pop("__main__", None)
    assert _cycle(graph) is None, f"import cycle between gradwatch's parts: {' -> '.join(_cycle(graph) or [])}"


def test_inner_modules_never_import_the_package_root():
    # gradwatch/__init__.py imports watch(), which imports every part: a part importing it loops
    offenders = {_module_name(p) for p in PACKAGE.rglob("*.py")
                 if "gradwatch" in module_imports(p) and _part(_module_name(p)) not in {"__main__", "watch", "gradwatch"}}
    assert not offenders


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # torch is imported once; before each module every gradwatch module is dropped, so each import
    # starts from nothing of gradwatch (a module that works only after another one fails here)
    script = ("import sys, importlib, traceback, torch\n"
              "failed = []\n"
              "for name in sys.argv[1:]:\n"
              "    for loaded in [m for m in sys.modules if m == 'gradwatch' or m.startswith('gradwatch.')]:\n"
              "        del sys.modules[loaded]\n"
              "    try:\n"
              "        importlib.import_module(name)\n"
              "    except Exception:\n"
              "        failed.append(name + ': ' + traceback.format_exc().strip().splitlines()[-1])\n"
              "print('\\n'.join(failed)); sys.exit(1 if failed else 0)\n")
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
    result = subprocess.run([sys.executable, "-c", script, *MODULES], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(MODULES) > 40 and "gradwatch.torch_compat" in MODULES
