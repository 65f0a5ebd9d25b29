"""The README and docs/ say what the code does: generated tables are current, links resolve,
examples run, and CI runs the README's own install and test lines."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import records
from gradwatch.detectors.config import DetectorConfig
from gradwatch.detectors.suite import default_detectors

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
sys.path.insert(0, str(ROOT / "docs"))
import generate  # noqa: E402  (docs/generate.py)

NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def test_readme_fits_on_a_page():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_generated_tables_are_current():
    assert generate.stale() == [], "run: python docs/generate.py"


@pytest.mark.parametrize("cls", [records.StepStats, records.LayerStats, records.DirectionStats, records.NonFinite,
                                 records.ClipEvent, records.Alert], ids=lambda c: c.__name__)
def test_every_record_field_is_documented(cls):
    text = (ROOT / "docs" / "records.md").read_text(encoding="utf-8")
    section = text.split(f"## `{cls.__name__}`", 1)[1].split("\n## ", 1)[0]
    missing = [f.name for f in dataclasses.fields(cls) if f"| `{f.name}` |" not in section]
    assert missing == []


def test_every_detector_option_is_documented_with_its_default():
    text = (ROOT / "docs" / "detectors.md").read_text(encoding="utf-8")
    defaults = DetectorConfig()
    missing = [f.name for f in dataclasses.fields(DetectorConfig)
               if f"| `{f.name}` | `{generate.value_text(getattr(defaults, f.name))}` |" not in text]
    assert missing == []
    assert "| `spike_step_factor` | `3.0` |" in text or defaults.spike_step_factor != 3.0


def test_the_number_of_detectors_is_right():
    """The README said "nine detectors"; there are ten."""
    count = len(default_detectors(DetectorConfig()))
    for path in [README, ROOT / "docs" / "detectors.md"]:
        text = path.read_text(encoding="utf-8")
        said = re.findall(r"\b(\w+) detectors\b", text)
        assert said and all(word == NUMBERS[count] for word in said), (path.name, said)


# ---------------------------------------------------------------------------------------------- links
def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_links_and_images_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
    assert broken == []


# ---------------------------------------------------------------------------------------------- CI
def _commands(markdown: str, heading: str) -> list[str]:
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_install_and_test_lines():
    """CI used to install more extras than the README, so the README's lines failed on a fresh environment."""
    readme = README.read_text(encoding="utf-8")
    install, tests = _commands(readme, "Install"), _commands(readme, "Tests")
    cpu_torch = [c for c in install if "--index-url https://download.pytorch.org/whl/cpu" in c]
    assert cpu_torch == ["python -m pip install torch --index-url https://download.pytorch.org/whl/cpu"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    ci_commands = [line for line in ci if line.startswith("python -m p")]  # pip and pytest lines
    expected = [c for c in install + tests if c not in cpu_torch]
    assert ci_commands == ['python -m pip install "torch==2.13.0"', *expected]


# ---------------------------------------------------------------------------------------------- JSONL
@pytest.fixture
def jsonl_run(tmp_path):
    """A run whose last step is not a probe step (every=3, 5 steps) and has an alert."""
    torch.manual_seed(0)
    model = nn.Module()
    model.lstm = nn.LSTM(3, 4, num_layers=2)
    model.forward = lambda x: model.lstm(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.jsonl"
    with gradwatch.watch(model, opt, every=3, console=False, jsonl=str(path), large_update_critical=1e-9) as monitor:
        for _ in range(5):
            loss = model(torch.randn(6, 2, 3))[0].pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step(); monitor.step(loss)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert not lines[-2]["probed"] and any(r.get("alerts") for r in lines)
    return path, lines


def test_the_jsonl_example_runs_on_a_run_ending_between_probes(jsonl_run, tmp_path):
    """The example indexed timestep_grad_norms of the last step, which is None between probes."""
    text = (ROOT / "docs" / "jsonl.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^lstm:\d \[", proc.stdout, flags=re.M), proc.stdout  # the layer key and its norms


def test_every_jsonl_field_is_documented(jsonl_run):
    _, lines = jsonl_run
    text = (ROOT / "docs" / "jsonl.md").read_text(encoding="utf-8")
    step = next(r for r in lines if r["type"] == "step")
    layer = next(iter(step["layers"].values()))
    alert = next(r for r in lines if r.get("alerts"))["alerts"][0]
    keys = {*lines[0], *lines[-1], *step, *layer, *layer["directions"][0], *alert}
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert missing == []
