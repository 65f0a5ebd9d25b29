"""A rich live panel of every watched layer, with warnings printed above it.

    >>> from rich.console import Console
    >>> monitor = gradwatch.watch(model, opt, console=Console(width=120))   # or console="rich"
    >>> sink = RichConsoleSink(Console(record=True, width=100), live=False)  # tests: render, then read
    >>> sink.on_step(stats, alerts); Console(width=100).print(sink.panel())

One row per watched layer: the gradient norm with a sparkline of recent steps, a heat strip
of the latest per-timestep gradient norms (earliest timestep on the left, one character
level per decade below the row's maximum, so a vanishing gradient fades out to the left and
an exploding one peaks there), the update ratio, the dead/saturated share and a coloured
status. The panel is rebuilt by rich's own refresh thread from the records collected here
(never from inside a hook), so training is not slowed by drawing. Alerts of warning level
or worse print above the panel; `close()` prints the one-screen summary. An uncaught exception
(Ctrl-C) or the end of the program without `close()` stops the display first: cursor back,
traceback below the panel.

`console="auto"` picks this sink when stdout is a terminal and `LoggingSink` otherwise.
Under `torch.distributed` only rank 0 gets a console sink (`gradwatch.distributed.is_main_process`).
"""

from __future__ import annotations

import atexit
import collections
import math
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from rich.console import Console, Group, RenderableType
from rich.errors import LiveError
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..records import Alert, LayerKey, Severity, StepStats

if TYPE_CHECKING:
    from ..detectors.suite import AlertSummary
from ..detectors.suite import severity_counts
from .logging_sink import SUMMARY_LINES, alert_lines, summary_headline, summary_parts

__all__ = ["RichConsoleSink", "sparkline", "heat_strip", "render_summary", "SEVERITY_STYLE"]

BARS = "▁▂▃▄▅▆▇█"
SHADES = " ▁▂▃▄▅▆▇█"
"""Heat strip levels: index = decades above (max − 8 decades); blank is 8+ decades below the max."""
SEVERITY_STYLE = {"info": "blue", "warning": "bold yellow", "critical": "bold red"}
_STATUS_MARK = {"info": "i", "warning": "!", "critical": "✖"}
MIN_SPARK, MIN_STRIP = 10, 16
"""Narrowest useful sparkline (steps) and heat strip (cells): what an 80-column console keeps."""


def sparkline(values: list[float]) -> Text:
    """One bar per value on a log scale between the smallest and largest; '!' for non-finite, ' ' for 0.

    A flat series (one distinct value) draws mid-height bars.
    """
    logs = [math.log10(v) for v in values if math.isfinite(v) and v > 0]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 0.0)
    out = Text()
    for v in values:
        if not math.isfinite(v):
            out.append("!", style="bold red")
        elif v <= 0:
            out.append(" ")
        else:
            level = 3 if hi == lo else round((math.log10(v) - lo) / (hi - lo) * (len(BARS) - 1))  # flat: mid bar
            out.append(BARS[level], style="cyan")
    return out


def _buckets(values: list[float], width: int) -> list[float]:
    """At most `width` cells: the largest value of each run of timesteps (NaN if any is non-finite)."""
    n = len(values)
    if n <= width:
        return list(values)
    cells = []
    for i in range(width):
        chunk = values[i * n // width : (i + 1) * n // width]
        cells.append(max(chunk) if all(math.isfinite(x) for x in chunk) else float("nan"))
    return cells


def heat_strip(values: list[float] | None, width: int) -> Text:
    """Per-timestep norms in at most `width` cells, earliest left; one level per decade below the max."""
    if not values:
        return Text("(no probe yet)", style="dim")
    cells = _buckets(values, width)
    finite = [v for v in cells if math.isfinite(v) and v > 0]
    top = max(finite, default=0.0)
    out = Text()
    for v in cells:
        if not math.isfinite(v):
            out.append("!", style="bold red")
            continue
        level = 0 if (v <= 0 or top <= 0) else max(0, min(8, 8 + round(math.log10(v / top))))
        out.append(SHADES[level], style="magenta" if level >= 6 else "blue")
    return out


def _num(x: float | None, spec: str = ".2e") -> Text:
    if x is None:
        return Text("–", style="dim")
    if not math.isfinite(x):
        return Text(str(x), style="bold red")
    return Text(format(x, spec))


def _share(dead: float | None, sat: float | None) -> Text:
    parts = []
    if dead is not None:
        parts.append(f"{dead * 100:.0f}%")
    if sat is not None:
        parts.append(f"{sat * 100:.0f}%")
    if not parts:
        return Text("–", style="dim")
    worst = max(v for v in (dead, sat) if v is not None)
    return Text("/".join(parts), style="bold yellow" if worst >= 0.5 else "")


def _status(alert: Alert | None) -> Text:
    if alert is None:
        return Text("ok", style="green")
    return Text(f"{_STATUS_MARK[alert.severity]} {alert.sign}", style=SEVERITY_STYLE[alert.severity])


def alert_text(alert: Alert, width: int | None = None) -> Text:
    """An alert as printed above the panel: the plain lines (evidence, then remedy, wrapped at
    `width` with a hanging indent) with the severity coloured."""
    line = "\n".join(alert_lines(alert, width))
    head, _, rest = line.partition(" ")
    return Text.assemble((head, SEVERITY_STYLE[alert.severity]), " ", rest)


def render_summary(summary: Any, counts: Mapping[str, int] | None = None, *, width: int = 80) -> RenderableType:
    """The closing summary as a rich panel `width` columns wide: the verdict, then two or three
    lines per sign (none of them wraps); at most 22 lines with the border."""
    verdict = summary_headline(summary, counts or {}).removeprefix("gradwatch: ")  # the title says it
    # the plain lines indent every sign by two spaces; inside the panel its border does that
    parts = summary_parts(summary, counts or {}, width=width - 2, max_lines=SUMMARY_LINES - 3, headline=False)
    body = Text(verdict + "\n", style="bold")
    for part in parts:
        style = SEVERITY_STYLE[part.severity] if part.kind == "sign" and part.severity else \
            "green" if part.kind == "remedy" else ""
        body.append(part.text[2:] + "\n", style=style)
    body.rstrip()
    return Panel(body, title="gradwatch", title_align="left", width=width,
                 border_style=SEVERITY_STYLE.get(summary.worst, "green"))


@dataclass
class _LayerView:
    """What the panel shows for one layer, updated from each record."""

    kind: str
    norms: collections.deque[float]
    grad_norm: float = float("nan")
    update_ratio: float | None = None
    timesteps: list[float] | None = None
    dead: float | None = None
    saturated: float | None = None
    alert: Alert | None = None


@dataclass
class _View:
    step: int | None = None
    loss: float | None = None
    grad_norm: float | None = None
    layers: dict[LayerKey, _LayerView] = field(default_factory=dict)
    model_alert: Alert | None = None
    counts: collections.Counter[str] = field(default_factory=collections.Counter)


class RichConsoleSink:
    """Live panel plus warnings above it, on a rich Console (injectable)."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        live: bool | None = None,
        refresh_per_second: float = 4.0,
        spark_steps: int = 20,
        strip_width: int = 24,
        status_steps: int = 200,
    ) -> None:
        self.console = console or Console()
        self.live = (self.console.is_terminal and not self.console.is_jupyter) if live is None else live
        self.refresh_per_second = refresh_per_second
        self.spark_steps = spark_steps
        self.strip_width = strip_width
        self.status_steps = status_steps
        self._view = _View()
        self._lock = threading.Lock()
        self._live: Live | None = None

    # ------------------------------------------------------------------ sink protocol
    def on_step(self, stats: StepStats, alerts: list[Alert]) -> None:
        with self._lock:
            self._collect(stats, alerts)
        for a in alerts:
            if a.level > Severity.INFO:
                self.console.print(alert_text(a, self.console.width), soft_wrap=True)  # above the live panel
        if self.live and self._live is None:
            self._start_live()

    def _start_live(self) -> None:
        live = Live(console=self.console, get_renderable=self.panel, refresh_per_second=self.refresh_per_second)
        try:
            live.start()  # prints from the training script now go above the panel
        except LiveError:  # the script already shows a rich Progress/Live: keep printing alerts only
            self.live = False
            return
        self._live = live
        # Ctrl-C or a crash without close(): stop the display before Python prints the traceback,
        # so the cursor comes back and the traceback lands below the panel, not inside it.
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self._stop_live)

    def _excepthook(self, *exc_info: Any) -> None:
        self._stop_live()
        self._previous_excepthook(*exc_info)

    def _stop_live(self) -> None:
        live, self._live = self._live, None
        atexit.unregister(self._stop_live)
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._previous_excepthook
        if live is not None:
            live.stop()

    def close(self, summary: AlertSummary | None) -> None:
        if self._live is not None:
            self._stop_live()
        elif self._view.step is not None and not self.live:
            self.console.print(self.panel())
        if summary is not None:
            self.console.print(render_summary(summary, self._view.counts, width=self.console.width))

    # ------------------------------------------------------------------ state
    def _collect(self, stats: StepStats, alerts: list[Alert]) -> None:
        v = self._view
        v.step, v.loss, v.grad_norm = stats.step, stats.loss, stats.grad_norm
        for key, ls in stats.layers.items():
            lv = v.layers.get(key)
            if lv is None:
                lv = v.layers[key] = _LayerView(ls.kind, collections.deque(maxlen=self.spark_steps))
            lv.norms.append(ls.grad_norm)
            lv.grad_norm, lv.update_ratio = ls.grad_norm, ls.update_ratio
            if ls.timestep_grad_norms is not None:
                lv.timesteps = list(ls.timestep_grad_norms)
            if ls.dead_fraction is not None or ls.saturated_fraction is not None:
                lv.dead, lv.saturated = ls.dead_fraction, ls.saturated_fraction
            if lv.alert is not None and stats.step - lv.alert.step > self.status_steps:
                lv.alert = None
        for a in alerts:
            v.counts[a.severity] += 1
            target = v.layers.get((a.module, a.layer)) if a.module is not None and a.layer is not None else None
            if target is None and a.module is not None:
                target = next((lv for k, lv in v.layers.items() if k[0] == a.module), None)
            if target is not None:
                if _outranks(a, target.alert):
                    target.alert = a
            elif _outranks(a, v.model_alert):
                v.model_alert = a

    # ------------------------------------------------------------------ rendering
    def panel(self) -> RenderableType:
        """The live panel for the records collected so far (called from rich's refresh thread)."""
        with self._lock:
            return self._render()

    def __rich__(self) -> RenderableType:
        return self.panel()

    def _layout(self, labels: list[str], statuses: list[Text], number_width: int) -> tuple[int, int, int]:
        """Widths of the layer column, the sparkline and the heat strip for this console's width.

        The fixed columns take what their content needs; the two plots share the rest (at least
        MIN_SPARK + MIN_STRIP cells: long layer names are cut first)."""
        status_width = max([len("status")] + [t.cell_len for t in statuses])
        fixed = 2 * number_width + len("dead/sat") + status_width + 6  # 6 one-cell gaps between 7 columns
        inner = self.console.width - 4  # panel border and padding
        label_width = min(max([len("layer")] + [len(x) for x in labels]), 24)
        room = inner - fixed - label_width
        if room < MIN_SPARK + MIN_STRIP:
            label_width = max(8, label_width - (MIN_SPARK + MIN_STRIP - room))
            room = inner - fixed - label_width
        spark = min(self.spark_steps, max(min(MIN_SPARK, room // 2), room * 2 // 5))
        strip = max(4, min(self.strip_width, room - spark))
        return label_width, spark, strip

    def _render(self) -> RenderableType:
        v = self._view
        wide = self.console.width >= 100
        spec, number_width = (".2e", 8) if wide else (".1e", 7)
        labels = [f"{module or '<root>'}:{layer}" + (f" {lv.kind}" if wide else "")
                  for (module, layer), lv in v.layers.items()]
        statuses = [_status(lv.alert) for lv in v.layers.values()]
        label_width, spark, strip = self._layout(labels, statuses, number_width)
        table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold")
        table.add_column("layer", no_wrap=True, max_width=label_width)
        table.add_column("‖g‖", justify="right", no_wrap=True, min_width=number_width)
        table.add_column(f"last {spark} steps" if spark >= 13 else f"last {spark}", no_wrap=True, width=spark)
        table.add_column("‖∂L/∂x_t‖ t=0→T, log" if strip >= 20 else "‖∂L/∂x_t‖", no_wrap=True, width=strip)
        table.add_column("update", justify="right", no_wrap=True, min_width=number_width)
        table.add_column("dead/sat", justify="right", no_wrap=True)
        table.add_column("status", no_wrap=True, overflow="ellipsis")
        for label, status, lv in zip(labels, statuses, v.layers.values()):
            table.add_row(
                Text(label if len(label) <= label_width else "…" + label[1 - label_width:]),  # keep ':layer' 
                _num(lv.grad_norm, spec),
                sparkline(list(lv.norms)[-spark:]),
                heat_strip(lv.timesteps, strip),
                _num(lv.update_ratio, spec),
                _share(lv.dead, lv.saturated),
                status,
            )
        title = f"gradwatch · step {v.step if v.step is not None else '–'}"
        if v.loss is not None:
            title += f" · loss {v.loss:.4g}"
        if v.grad_norm is not None:
            title += f" · ‖g‖ {v.grad_norm:.3g}"
        counts = severity_counts(v.counts)
        footer = Text(f"alerts: {counts}" if counts else "no alerts", style="dim")
        if v.model_alert is not None:
            footer = Text.assemble(footer, "  · model: ", _status(v.model_alert))
        worst = max((lv.alert for lv in v.layers.values() if lv.alert), key=_rank, default=v.model_alert)
        border = SEVERITY_STYLE[worst.severity] if worst is not None and worst.level > Severity.INFO else "green"
        return Panel(Group(table, footer), title=title, title_align="left", border_style=border)


def _rank(a: Alert | None) -> int:
    return -1 if a is None else a.level


def _outranks(new: Alert, old: Alert | None) -> bool:
    """A new alert replaces the shown one unless the shown one is more severe (and still recent)."""
    return old is None or _rank(new) >= _rank(old)
