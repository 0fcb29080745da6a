"""The picture of a run (``--plot``): one panel per workload, one row per contender,
fastest on top. Each panel has its own logarithmic time axis, wide enough for every p95,
so that 5 µs and 800 µs rows are both readable and equal ratios look equally far apart;
beside it, two labelled columns give each row's median and how it compares with the
workload's baseline. Needs matplotlib (the ``bench`` extra), imported only here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .._info import describe_machine
from ._format import comparison_of, format_seconds
from ._results import BenchResult, Cell
from ._table import sorted_cells
from ._workloads import WORKLOADS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOT_FORMATS", "make_figure", "tick_text", "time_ticks", "write_plot"]

PLOT_FORMATS: Final = (".png", ".svg", ".pdf")

_COLOURS: Final = {"loopshim": "#1f66b3", "peer": "#7f7f7f", "baseline": "#d9661f"}
_STRIPE: Final = "#f0f0f0"
_FONT: Final = 9
#: Inches: per row, per panel (title, axis, tick labels), and the figure's width.
_ROW_IN: Final = 0.25
_PANEL_IN: Final = 1.0
_WIDTH_IN: Final = 11.0
#: Widths of the three columns: the time axis, the median, the comparison.
_COLUMNS: Final = (6.0, 1.0, 1.5)
#: The axis reaches this factor beyond the fastest median and the slowest p95.
_MARGIN: Final = 1.25
_DPI: Final = 120


def _reference(result: BenchResult, name: str) -> Cell | None:
    """The one row every row of *name* is compared with, if there is one."""
    common = comparison_of(WORKLOADS[name]).common
    return None if common is None else result.measured_cell(name, common)


def _colour(cell: Cell, reference: Cell | None) -> str:
    return _COLOURS["baseline"] if cell is reference else _COLOURS[cell.contender.kind]


def tick_text(seconds: float) -> str:
    """A tick label: ``10 µs``, ``2.5 ms``, ``1 s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def time_ticks(low: float, high: float) -> list[float]:
    """Round times between *low* and *high* for a log axis: 1-2-5 steps (or coarser)
    over several decades, evenly spaced round values over a narrow range."""
    if high / low >= 4:
        decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        for steps in ((1, 2, 5), (1, 3), (1,)):
            ticks = [m * 10.0**e for e in decades for m in steps if low <= m * 10.0**e <= high]
            if len(ticks) <= 8:
                return ticks
        return ticks
    from matplotlib.ticker import MaxNLocator

    values = MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
    return [float(v) for v in values if low <= v <= high]


def _stripes(ax: Axes, rows: int) -> None:
    for row in range(1, rows, 2):
        ax.axhspan(row - 0.5, row + 0.5, color=_STRIPE, zorder=0, linewidth=0)
    ax.set_ylim(rows - 0.5, -0.5)  # row 0, the fastest, on top


def _time_axis(ax: Axes, result: BenchResult, name: str, cells: list[Cell]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    rows = range(len(cells))
    _stripes(ax, len(cells))
    medians = [c.median_s for c in cells]
    p95s = [c.p95_s for c in cells]
    ax.hlines(rows, medians, p95s, color="#b0b0b0", linewidth=1.2, zorder=2)
    ax.scatter(p95s, rows, marker="|", s=70, color="#303030", linewidths=1.2, zorder=3)
    base = _reference(result, name)
    ax.scatter(medians, rows, s=36, color=[_colour(c, base) for c in cells], zorder=4)
    if base is not None:
        ax.axvline(base.median_s, color=_COLOURS["baseline"], linestyle="--", linewidth=0.8)
    low, high = min(medians) / _MARGIN, max(p95s) * _MARGIN
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ax.xaxis.set_major_locator(FixedLocator(time_ticks(low, high)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: tick_text(x)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(axis="x", color="#d8d8d8", linewidth=0.6, zorder=1)
    ax.tick_params(axis="x", labelsize=_FONT - 1)
    ax.set_yticks(list(rows), [c.label for c in cells], fontsize=_FONT)
    for label, cell in zip(ax.get_yticklabels(), cells, strict=True):
        label.set_color(_colour(cell, base))
    ax.get_yticklabels()[0].set_fontweight("bold")
    ax.set_xlabel("time per call, log scale (● median, | p95)", fontsize=_FONT - 1)
    ax.set_title(f"{name}: {WORKLOADS[name].description}", fontsize=_FONT + 1, loc="left")


def _column(ax: Axes, heading: str, texts: list[str]) -> None:
    _stripes(ax, len(texts))
    ax.set_xlim(0, 1)
    for row, text in enumerate(texts):
        weight = "bold" if row == 0 else "normal"
        ax.text(0.92, row, text, ha="right", va="center", fontsize=_FONT, fontweight=weight)
    ax.set_title(heading, fontsize=_FONT, loc="right")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _panel(axes: Any, result: BenchResult, name: str, cells: list[Cell]) -> None:
    times, medians, compared = axes
    _time_axis(times, result, name, cells)
    _column(medians, "median", [format_seconds(c.median_s) for c in cells])
    comparison = comparison_of(WORKLOADS[name])
    _column(compared, comparison.title, [comparison.text(result, c) for c in cells])


def _legend(figure: Figure) -> None:
    from matplotlib.lines import Line2D

    def dot(colour: str, label: str) -> Line2D:
        return Line2D([], [], marker="o", linestyle="", color=colour, label=label)

    handles = [
        dot(_COLOURS["loopshim"], "loopshim"),
        dot(_COLOURS["peer"], "peers and hand-written recipes"),
        dot(
            _COLOURS["baseline"],
            "baseline (Flask's default; a plain app for sync views; "
            "awaiting directly for re-entrant calls)",
        ),
        Line2D([], [], marker="|", linestyle="", color="#303030", label="p95", markersize=9),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=_FONT)


def _subtitle(result: BenchResult) -> str:
    settings = result.settings
    budget = (
        f"{settings.repeat} calls per caller thread"
        if settings.repeat is not None
        else f"{settings.duration:g} s"
    )
    threads = f"{settings.threads} caller thread{'s' if settings.threads > 1 else ''}"
    return f"{describe_machine()}; {budget} per row in {settings.rounds} rounds, {threads}"


def make_figure(result: BenchResult) -> Figure:
    """The figure of *result*, not yet saved."""
    from matplotlib.figure import Figure

    panels = [
        (name, sorted_cells([c for c in result.cells_of(name) if c.measured]))
        for name in result.settings.workloads
    ]
    panels = [(name, cells) for name, cells in panels if cells]
    heights = [len(cells) * _ROW_IN + _PANEL_IN for _, cells in panels]
    figure = Figure(figsize=(_WIDTH_IN, sum(heights) + 1.0), layout="constrained")
    figure.suptitle(f"loopshim bench: {_subtitle(result)}", fontsize=_FONT + 1)
    if not panels:
        figure.text(0.5, 0.5, "nothing was measured", ha="center", va="center")
        return figure
    grid = figure.subplots(
        len(panels), 3, squeeze=False, width_ratios=_COLUMNS, height_ratios=heights
    )
    for axes, (name, cells) in zip(grid, panels, strict=True):
        _panel(axes, result, name, cells)
    _legend(figure)
    return figure


def write_plot(result: BenchResult, path: Path) -> None:
    """Draw *result* to *path* (the format follows the extension)."""
    make_figure(result).savefig(path, dpi=_DPI)
