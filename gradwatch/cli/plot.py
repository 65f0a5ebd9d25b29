"""`gradwatch plot RUN.jsonl -o report.png`: one picture of a run, from its JSONL stream.

    $ gradwatch plot run.jsonl -o report.png
    >>> run = load_run("run.jsonl"); render(run, "report.png")

Top: per recurrent layer, a heatmap of the per-timestep gradient norms ‖∂L/∂x_t‖ (y: timestep,
x: step, log colour scale, magenta = NaN/Inf) over the probe steps; when the run has no probe
step, the gradient reaching each module's output, ‖∂L/∂y_t‖, recorded every step. Below: the
gradient norm (whole model and per layer), the update ratio ‖Δθ‖/‖θ‖ per layer, and the loss.
Alerts are marked on every panel: vertical lines coloured by severity, and a cross on the
heatmap cell (step, timestep) when the alert names one.

The file is read as JSON only (`json.loads`, one object per line); a malformed or truncated line
stops with an error that names it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import GradwatchError
from ..sinks.jsonl import SCHEMA_VERSION

__all__ = ["add_arguments", "main", "Run", "load_run", "heatmaps", "render", "figure", "tick_text"]

SEVERITY_COLOURS = {"info": "#4C72B0", "warning": "#DD8452", "critical": "#C44E52"}
MAX_HEATMAPS = 8
LOG_LOSS_SPAN = 100.0
"""The loss axis is logarithmic when the (all positive) losses span at least this factor."""
VANISHED = 1e-12
"""Heatmap cells below this fraction of the largest norm are drawn black."""
LINE_STYLES = ["--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("jsonl", metavar="RUN.jsonl", help="a JSONL stream written by watch(jsonl=...) or --jsonl")
    parser.add_argument("-o", "--output", default=None, metavar="FILE",
                        help="image to write (png, pdf, svg...; default: RUN.png next to the input)")
    parser.add_argument("--title", default=None, help="figure title (default: the file name)")
    parser.add_argument("--dpi", type=int, default=110, help="resolution of raster images (default: 110)")


def main(args: argparse.Namespace) -> int:
    run = load_run(args.jsonl)
    output = args.output or os.path.splitext(args.jsonl)[0] + ".png"
    render(run, output, title=args.title or os.path.basename(args.jsonl), dpi=args.dpi)
    alerts = len(run.alerts)
    print(f"gradwatch plot: wrote {output} ({len(run.steps)} steps, {alerts} alert{'' if alerts == 1 else 's'})")
    return 0


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Run:
    """The records of one JSONL stream."""

    path: str
    header: dict[str, Any] | None
    steps: list[dict[str, Any]]
    """Step records in file order; floats decoded ("nan"/"inf" strings become floats)."""
    end: dict[str, Any] | None = None
    """The closing record, or None when the run stopped without closing its monitor."""
    alerts: list[dict[str, Any]] = field(default_factory=list)


def _float(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)  # also parses the "nan", "inf", "-inf" strings the writer uses


def _floats(values: Any) -> list[float] | None:
    return None if values is None else [_float(v) for v in values]


def _bad(path: str, number: int, problem: str) -> GradwatchError:
    return GradwatchError(f"{path} line {number}: {problem}")


def _check_step(path: str, number: int, record: dict[str, Any]) -> dict[str, Any]:
    for name in ("step", "grad_norm", "layers"):
        if name not in record:
            raise _bad(path, number, f"step record without the '{name}' field; is this a gradwatch JSONL stream?")
    try:
        record["step"] = int(record["step"])
        record["grad_norm"] = _float(record["grad_norm"])
        record["loss"] = None if record.get("loss") is None else _float(record["loss"])
        for key, layer in record["layers"].items():
            for name in ("grad_norm", "weight_norm", "update_norm", "update_ratio"):
                layer[name] = _float(layer.get(name))
            layer["timestep_grad_norms"] = _floats(layer.get("timestep_grad_norms"))
        record["timestep_output_grad_norms"] = {
            k: _floats(v) for k, v in (record.get("timestep_output_grad_norms") or {}).items()
        }
    except (TypeError, ValueError, AttributeError) as exc:
        raise _bad(path, number, f"a field has the wrong type ({exc}).") from exc
    return record


def text_line_of(path: str, offset: int) -> int:
    """1-based line number of byte `offset` in the file at `path`."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def load_run(path: str) -> Run:
    """Read a JSONL stream; raises `GradwatchError` naming the first line that is not a valid record."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise GradwatchError(f"cannot read {path}: {exc.strerror}.") from exc
    except UnicodeDecodeError as exc:
        at = text_line_of(path, exc.start)
        raise _bad(path, at, "not UTF-8 text: this is a binary file, not a JSONL stream written by "
                               "watch(jsonl=...) or gradwatch run --jsonl.") from exc
    lines = text.split("\n")
    run = Run(path=path, header=None, steps=[])
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except RecursionError as exc:
            raise _bad(path, number, "JSON nested too deeply to be a gradwatch record.") from exc
        except json.JSONDecodeError as exc:
            cut = number == len(lines) and not text.endswith("\n")
            hint = (" The line is cut short: the run was interrupted while writing it. Delete that line "
                    "to plot the steps before it.") if cut else ""
            raise _bad(path, number, f"not valid JSON ({exc.msg} at column {exc.colno}).{hint}") from exc
        if not isinstance(record, dict) or "schema" not in record or "type" not in record:
            raise _bad(path, number, "not a gradwatch record (expected a JSON object with 'schema' and 'type'); "
                                     "pass a file written by watch(jsonl=...) or gradwatch run --jsonl.")
        if not isinstance(record["schema"], int) or record["schema"] > SCHEMA_VERSION:
            raise _bad(path, number, f"schema {record['schema']!r} is newer than this gradwatch reads "
                                     f"({SCHEMA_VERSION}); upgrade gradwatch.")
        kind = record["type"]
        if kind == "run":
            run.header = record
        elif kind == "end":
            run.end = record
        elif kind == "step":
            step = _check_step(path, number, record)
            run.steps.append(step)
            run.alerts.extend(step.get("alerts") or [])
    if not run.steps:
        raise GradwatchError(f"{path}: no step records to plot (the run ended before its first step finished).")
    return run


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Heatmap:
    """Per-timestep norms of one layer (or module output) over the steps that have them."""

    title: str
    module: str
    layer: int | None
    steps: list[int]
    columns: list[list[float]]
    """columns[i][t]: the norm at timestep t in steps[i]."""


def heatmaps(run: Run) -> list[Heatmap]:
    """The heatmaps to draw: per layer over probe steps, else per module output over every step."""
    by_layer: dict[str, Heatmap] = {}
    for rec in run.steps:
        for key, layer in rec["layers"].items():
            norms = layer.get("timestep_grad_norms")
            if not norms:
                continue
            module, index = layer.get("module", key.rsplit(":", 1)[0]), int(layer.get("layer", key.rsplit(":", 1)[-1]))
            hm = by_layer.setdefault(key, Heatmap(f"{module or 'model'} layer {index}: ‖∂L/∂x_t‖", module, index, [], []))
            hm.steps.append(rec["step"])
            hm.columns.append(norms)
    if by_layer:
        return list(by_layer.values())
    by_module: dict[str, Heatmap] = {}
    for rec in run.steps:
        for module, norms in rec["timestep_output_grad_norms"].items():
            if not norms:
                continue
            hm = by_module.setdefault(module, Heatmap(f"{module or 'model'} output: ‖∂L/∂y_t‖", module, None, [], []))
            hm.steps.append(rec["step"])
            hm.columns.append(norms)
    return list(by_module.values())


def _edges(steps: list[int]) -> list[float]:
    if len(steps) == 1:
        return [steps[0] - 0.5, steps[0] + 0.5]
    mids = [(a + b) / 2 for a, b in zip(steps, steps[1:])]
    return [steps[0] - (mids[0] - steps[0])] + mids + [steps[-1] + (steps[-1] - mids[-1])]


# ---------------------------------------------------------------------------------------------- drawing
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_MATHDEFAULT = re.compile(r"\$\\mathdefault\{(.*)\}\$")


def tick_text(label: str) -> str:
    """matplotlib's log-axis label written out in plain Unicode: '$\\mathdefault{2\\times10^{-5}}$'
    becomes '2×10⁻⁵'. The figure is drawn with mathtext off (module names are text, never
    mathtext), and without this the labels would show their raw TeX."""
    match = _MATHDEFAULT.fullmatch(label)
    if match is None:
        return label
    body = match.group(1).replace("\\times", "×").replace("\\cdot", "·").replace("\\,", "")
    body = re.sub(r"\^\{([^}]*)\}", lambda m: m.group(1).translate(_SUPERSCRIPT), body)
    return body.replace("\\minus", "−").replace("{", "").replace("}", "")


def _plain_tick_labels(fig: Any) -> None:
    """Every axis of `fig` (colour bars included) labels its ticks in plain Unicode; a log axis
    spanning a decade or more labels fewer minor ticks (2×10⁻³, 3×10⁻³, 4×10⁻³... crowd each other)."""
    from matplotlib import ticker

    class Plain(ticker.Formatter):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def set_axis(self, axis: Any) -> None:
            super().set_axis(axis)
            self.inner.set_axis(axis)

        def set_locs(self, locs: Any) -> None:
            self.inner.set_locs(locs)

        def __call__(self, x: float, pos: int | None = None) -> str:
            return tick_text(self.inner(x, pos))

        def format_ticks(self, values: Any) -> list[str]:
            return [tick_text(t) for t in self.inner.format_ticks(values)]

        def get_offset(self) -> str:
            return tick_text(self.inner.get_offset())

    def two_and_five(x: float, pos: int | None = None) -> str:
        exponent = math.floor(math.log10(x))
        mantissa = round(x / 10.0**exponent)
        return f"{mantissa}×10{str(exponent).translate(_SUPERSCRIPT)}" if mantissa in (2, 5) else ""

    for ax in fig.axes:
        low, high = sorted(ax.get_ylim())
        if ax.get_yscale() == "log" and low > 0 and high >= 10 * low:
            # one to two decades: 2× and 5× between them; more: the decades alone
            ax.yaxis.set_minor_formatter(ticker.FuncFormatter(two_and_five) if high < 100 * low
                                         else ticker.NullFormatter())
        for axis in (ax.xaxis, ax.yaxis):
            for get, put in ((axis.get_major_formatter, axis.set_major_formatter),
                             (axis.get_minor_formatter, axis.set_minor_formatter)):
                if not isinstance(get(), Plain):
                    put(Plain(get()))


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise GradwatchError("gradwatch plot needs matplotlib: pip install 'gradwatch[plot]'.") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _draw_heatmap(fig: Any, ax: Any, cax: Any, hm: Heatmap, alerts: list[dict[str, Any]]) -> tuple[bool, bool]:
    """Draw one heatmap; returns whether it has vanished (black) cells and NaN/Inf (magenta) ones."""
    import numpy as np
    from matplotlib.colors import ListedColormap, LogNorm

    height = max(len(c) for c in hm.columns)
    grid = np.full((height, len(hm.columns)), np.nan)
    for i, col in enumerate(hm.columns):
        grid[: len(col), i] = col
    nonfinite = np.isinf(grid) | (np.isnan(grid) & _present(hm.columns, height))
    positive = grid[np.isfinite(grid) & (grid > 0)]
    x = _edges(hm.steps)
    y = np.arange(height + 1) - 0.5
    vanished = False
    if positive.size:
        vmax = float(positive.max())
        vmin = max(float(positive.min()), vmax * VANISHED)
        cmap = _colormap().with_extremes(under="black")
        shown = np.where(np.isfinite(grid) & (grid <= 0), vmin / 10, grid)
        mesh = ax.pcolormesh(x, y, np.ma.masked_invalid(shown), cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax),
                             shading="flat")
        vanished = bool((shown < vmin).any())
        fig.colorbar(mesh, cax=cax, extend="min" if vanished else "neither")
    else:
        cax.set_axis_off()
    if nonfinite.any():
        ax.pcolormesh(x, y, np.ma.masked_where(~nonfinite, np.ones_like(grid)),
                      cmap=ListedColormap(["magenta"]), shading="flat")
    ax.set_ylabel("timestep")
    ax.set_title(hm.title, fontsize=9, loc="left")
    for a in alerts:
        if a.get("module") != hm.module or (hm.layer is not None and a.get("layer") not in (None, hm.layer)):
            continue
        colour = SEVERITY_COLOURS.get(str(a.get("severity")), "grey")
        if a.get("timestep") is not None:
            ax.plot([a["step"]], [a["timestep"]], marker="X", color=colour, markersize=9, mec="white", mew=1)
        else:
            ax.axvline(a["step"], color=colour, lw=0.8, alpha=0.8)
    return vanished, bool(nonfinite.any())


def _present(columns: list[list[float]], height: int) -> Any:
    import numpy as np

    mask = np.zeros((height, len(columns)), dtype=bool)
    for i, col in enumerate(columns):
        mask[: len(col), i] = True
    return mask


def _colormap() -> Any:
    import matplotlib

    return matplotlib.colormaps["viridis"]


def _positive(values: list[float]) -> list[float]:
    return [v if (math.isfinite(v) and v > 0) else math.nan for v in values]


def _log_scale_if_positive(ax: Any) -> None:
    """Log scale when the axis has a positive finite value to show (all-zero update ratios of a frozen run do not)."""
    import numpy as np

    if any(np.isfinite(np.asarray(line.get_ydata(), dtype=float)).any() for line in ax.get_lines()):
        ax.set_yscale("log")


def smoothing_width(n: int) -> int:
    """Steps of the running mean drawn over the loss: 0 (none) below 200 losses, else n / 50 (at least 10)."""
    return 0 if n < 200 else max(10, n // 50)


def running_mean(values: list[float], width: int) -> list[float]:
    """Mean of each `width` consecutive values (NaN where the window holds a NaN; non-finite losses arrive as NaN)."""
    import numpy as np

    return [float(v) for v in np.convolve(np.asarray(values, dtype=float), np.ones(width) / width, mode="valid")]


def _draw_curves(ax_norm: Any, ax_ratio: Any, ax_loss: Any, run: Run) -> None:
    steps = [r["step"] for r in run.steps]
    ax_norm.plot(steps, _positive([r["grad_norm"] for r in run.steps]), color="black", lw=1.4, label="whole model")
    keys = list(dict.fromkeys(k for r in run.steps for k in r["layers"]))
    for key in keys:
        rows = [(r["step"], r["layers"][key]) for r in run.steps if key in r["layers"]]
        label = key if not key.startswith(":") else "model" + key
        ax_norm.plot([s for s, _ in rows], _positive([l["grad_norm"] for _, l in rows]), lw=0.9, label=label)
        ax_ratio.plot([s for s, _ in rows], _positive([l["update_ratio"] for _, l in rows]), lw=0.9, label=label)
    for s in (r["step"] for r in run.steps if not math.isfinite(r["grad_norm"])):
        ax_norm.axvspan(s - 0.5, s + 0.5, color="magenta", alpha=0.25, lw=0)
    _log_scale_if_positive(ax_norm)
    ax_norm.set_ylabel("gradient norm")
    ax_norm.legend(fontsize=7, loc="upper right", ncol=2)
    _log_scale_if_positive(ax_ratio)
    ax_ratio.set_ylabel("update ratio\n‖Δθ‖/‖θ‖")
    losses = [(r["step"], r["loss"]) for r in run.steps if r.get("loss") is not None]
    if losses:
        xs, ys = [s for s, _ in losses], [v if math.isfinite(v) else math.nan for _, v in losses]
        smooth = smoothing_width(len(losses))
        ax_loss.plot(xs, ys, color="#bbb" if smooth else "#555", lw=0.6 if smooth else 1.5)
        if smooth:  # many noisy steps (batch size 1): the trend is what the eye needs
            ax_loss.plot(xs[smooth - 1:], running_mean(ys, smooth), color="#222", lw=1.2, label=f"mean of {smooth} steps")
            ax_loss.legend(fontsize=7, loc="upper right")
    positive = [v for _, v in losses if math.isfinite(v) and v > 0]
    if positive and len(positive) == len([v for _, v in losses if math.isfinite(v)]) and \
            max(positive) >= LOG_LOSS_SPAN * min(positive):
        ax_loss.set_yscale("log")  # an explosion would flatten everything before it on a linear axis
    ax_loss.set_ylabel("loss")
    ax_loss.set_xlabel("step")


def _mark_alerts(axes: list[Any], alerts: list[dict[str, Any]]) -> list[Any]:
    """Vertical lines: colour = severity, line style = sign. Returns their legend handles."""
    from matplotlib.lines import Line2D

    styles: dict[str, Any] = {}
    handles = []
    for a in alerts:
        colour = SEVERITY_COLOURS.get(str(a.get("severity")), "grey")
        label = f"{a.get('severity')}: {a.get('problem')}/{a.get('sign')}"
        if label not in styles:
            styles[label] = LINE_STYLES[len(styles) % len(LINE_STYLES)]
            handles.append(Line2D([], [], color=colour, lw=1.2, ls=styles[label], label=label))
        for ax in axes:
            ax.axvline(a["step"], color=colour, lw=0.9, alpha=0.7, ls=styles[label])
    return handles


def _legend(fig: Any, alert_handles: list[Any], run: Run, marks: dict[str, bool]) -> int:
    """One legend under the figure: the alerts, then what the marks mean. Returns its entries."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = list(alert_handles) or [Line2D([], [], ls="", label="no alerts")]
    if any(a.get("timestep") is not None for a in run.alerts):
        handles.append(Line2D([], [], ls="", marker="X", color="grey", mec="white", markersize=9,
                              label="alert at that timestep"))
    if marks["vanished"]:
        handles.append(Patch(color="black", label=f"below {VANISHED:.0e} × the largest norm (vanished)"))
    if marks["nonfinite"]:
        handles.append(Patch(color="magenta", label="NaN/Inf"))
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=7, frameon=False)
    return len(handles)


def render(run: Run, output: str, *, title: str | None = None, dpi: int = 110) -> None:
    """Draw `run` to the image file `output` (format from its extension)."""
    plt = _require_matplotlib()
    with plt.rc_context({"text.parse_math": False}):  # module names are text, never mathtext
        fig = _figure(plt, run, title=title)
        try:
            fig.savefig(output, dpi=dpi)
        except (OSError, ValueError) as exc:
            raise GradwatchError(f"gradwatch plot cannot write {output}: {exc}") from exc
        finally:
            plt.close(fig)


def figure(run: Run, *, title: str | None = None) -> Any:
    """The report as a matplotlib Figure (what `render` saves); close it with `plt.close(fig)`."""
    plt = _require_matplotlib()
    with plt.rc_context({"text.parse_math": False}):
        fig = _figure(plt, run, title=title)
        fig.canvas.draw()  # lay the text out under the same settings
    return fig


def _figure(plt: Any, run: Run, *, title: str | None) -> Any:
    maps = heatmaps(run)
    shown = maps[:MAX_HEATMAPS]
    n = len(shown) + 3
    ratios = [2.2] * len(shown) + [1.6, 1.2, 1.0]
    # A narrow second column holds the colour bars, so that every panel shares the same step axis.
    fig, grid = plt.subplots(n, 2, figsize=(11, 1.9 * sum(ratios) / 1.6 + 0.8), squeeze=False,
                             gridspec_kw={"height_ratios": ratios, "width_ratios": [60, 1]})
    axes = [row[0] for row in grid]
    for ax in axes[1:]:
        ax.sharex(axes[0])
    marks = {"vanished": False, "nonfinite": any(not math.isfinite(r["grad_norm"]) for r in run.steps)}
    for row, hm in zip(grid, shown):
        vanished, nonfinite = _draw_heatmap(fig, row[0], row[1], hm, run.alerts)
        marks["vanished"] |= vanished
        marks["nonfinite"] |= nonfinite
    for row in grid[len(shown):]:
        row[1].set_axis_off()
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    if not maps:
        fig.text(0.5, 0.98, "no per-timestep norms in this file", ha="center", fontsize=8)
    elif len(maps) > len(shown):
        axes[0].text(1.0, 1.15, f"first {len(shown)} of {len(maps)} layers shown", transform=axes[0].transAxes,
                     ha="right", fontsize=7)
    ax_norm, ax_ratio, ax_loss = axes[len(shown):]
    _draw_curves(ax_norm, ax_ratio, ax_loss, run)
    alert_handles = _mark_alerts([ax_norm, ax_ratio, ax_loss], run.alerts)
    status = "" if run.end is not None else "  (no end record: the run did not finish cleanly)"
    fig.suptitle(f"{title or os.path.basename(run.path)}: {len(run.steps)} steps, "
                 f"{len(run.alerts)} alert{'' if len(run.alerts) == 1 else 's'}{status}", fontsize=10)
    entries = _legend(fig, alert_handles, run, marks)
    _plain_tick_labels(fig)
    rows = (entries + 2) // 3
    fig.tight_layout(rect=(0, 0.012 + 0.16 * rows / fig.get_figheight(), 1, 1))
    return fig
