"""What ``loopshim bench`` shows: the table, loopshim's performance targets checked as ratios,
the JSON document, the plot, and the progress line on a terminal."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final

from ._bench import BASELINE, WORKLOADS, BenchResult, Cell, Workload
from ._core import BUILTIN_BACKENDS

__all__ = [
    "JSON_SCHEMA",
    "PLOT_FORMATS",
    "Target",
    "TerminalProgress",
    "check_targets",
    "format_table",
    "library_versions",
    "machine",
    "to_json",
    "write_json",
    "write_plot",
]

JSON_SCHEMA: Final = 1
PLOT_FORMATS: Final = (".png", ".svg", ".pdf")

#: The distributions whose versions a run records.
LIBRARIES: Final = ("loopshim", "flask", "werkzeug", "asgiref", "anyio", "trio", "uvloop")


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str]:
    """``{distribution: version}`` for those of *names* that are installed."""
    found: dict[str, str] = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def machine() -> dict[str, Any]:
    """The machine and interpreter a run measured."""
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


def describe_machine() -> str:
    m = machine()
    return f"{m['implementation']} {m['python']} on {m['system']} {m['machine']}, {m['cpus']} CPUs"


# --- targets ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One of loopshim's performance targets, checked as a ratio measured in this run."""

    text: str
    ok: bool
    measured: str
    #: The same ratio for the hand-rolled recipe that does the least the target's
    #: contender must do, when this run measured it: what the target is up against.
    reference: str = ""


_RUN_PEER: Final = {name: f"{name}.run" for name in BUILTIN_BACKENDS}


#: Per scope, the peer (for a backend) doing the least that loopshim's call must do too:
#: a loop reused in the calling thread, or a hop to a loop in another thread and back.
#: trio has no loop to keep per thread, so no thread-scope peer: that cell is not found.
_FLOOR_PEER: Final = {"thread": "loop-per-thread-{}", "process": "loop-thread-{}"}


def _per_call_targets(result: BenchResult, backend: str) -> list[Target]:
    targets = []
    base = result.baseline("noop")
    thread = result.measured_cell("noop", f"loopshim-{backend}-thread")
    process = result.measured_cell("noop", f"loopshim-{backend}-process")
    call = result.measured_cell("noop", f"loopshim-{backend}-call")
    if base is not None and thread is not None:
        need = 20 if backend == "trio" else 30
        ratio = base.median_s / thread.median_s
        text = f"noop: {backend} thread >= {need}x faster than Flask's default"
        targets.append(Target(text, ratio >= need, f"{ratio:.1f}x"))
    if base is not None and process is not None:
        ratio = base.median_s / process.median_s
        text = f"noop: {backend} process >= 5x faster than Flask's default"
        targets.append(Target(text, ratio >= 5, f"{ratio:.1f}x"))
    portal = result.measured_cell("noop", f"anyio-portal-{backend}")
    if portal is not None and process is not None:
        ratio = portal.median_s / process.median_s
        text = f"noop: {backend} process faster than anyio's portal on {backend}"
        targets.append(Target(text, ratio > 1, f"{ratio:.2f}x"))
    peer = result.measured_cell("noop", _RUN_PEER[backend])
    if peer is not None and call is not None:
        ratio = call.median_s / peer.median_s
        text = f"noop: {backend} call within 10% of {peer.label}"
        targets.append(Target(text, ratio <= 1.10, f"{ratio:.2f} of it"))
    return targets


def _flask_targets(result: BenchResult, backend: str) -> list[Target]:
    sync_view = result.baseline("flask-sync")
    if sync_view is None:
        return []
    targets = []
    for scope, limit in (("thread", 1.15), ("process", 1.5)):
        cell = result.measured_cell("flask-async", f"loopshim-{backend}-{scope}")
        if cell is None:
            continue
        ratio = cell.median_s / sync_view.median_s
        text = f"flask-async: {backend} {scope} <= {limit}x a sync view"
        floor = result.measured_cell("flask-async", _FLOOR_PEER[scope].format(backend))
        reference = ""
        if floor is not None:
            reference = f"{floor.label}: {floor.median_s / sync_view.median_s:.2f}x"
        targets.append(Target(text, ratio <= limit, f"{ratio:.2f}x", reference))
    return targets


def _fanout_targets(result: BenchResult) -> list[Target]:
    return [
        Target(
            f"fanout: {cell.label} answers in <= 20 ms",
            cell.median_s <= 0.020,
            f"{cell.median_s * 1e3:.1f} ms",
        )
        for cell in result.cells
        if cell.workload.name == "fanout" and cell.contender.kind == "loopshim" and cell.measured
    ]


def check_targets(result: BenchResult) -> list[Target]:
    """The performance targets that this run measured both sides of."""
    targets: list[Target] = []
    for backend in _RUN_PEER:
        targets.extend(_per_call_targets(result, backend))
    for backend in _RUN_PEER:
        targets.extend(_flask_targets(result, backend))
    targets.extend(_fanout_targets(result))
    return targets


# --- the table --------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    """``12.3 us``, ``4.56 ms`` or ``1.23 s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _workload_heading(result: BenchResult, workload: Workload) -> str:
    settings = result.settings
    if settings.repeat is not None:
        budget = f"{settings.repeat} call{'s' if settings.repeat > 1 else ''} per caller thread"
    else:
        budget = f"{settings.duration:g} s"
    threads = f"{settings.threads} caller thread{'s' if settings.threads > 1 else ''}"
    return (
        f"{workload.name}: {workload.description} "
        f"[{threads}, {budget} per row in {settings.rounds} "
        f"round{'s' if settings.rounds > 1 else ''}]"
    )


def _row(result: BenchResult, cell: Cell, width: int) -> str:
    if not cell.measured:
        status = cell.status if cell.status != "ok" else "no calls measured"
        detail = f" ({cell.detail})" if cell.detail else ""
        return f"  {cell.label:{width}}  {status}{detail}"
    speedup = result.speedup(cell)
    ratio = "-" if speedup is None else f"{speedup:.2f}x" if speedup < 10 else f"{speedup:.1f}x"
    return (
        f"  {cell.label:{width}}  {format_seconds(cell.median_s):>10}  "
        f"{format_seconds(cell.p95_s):>10}  {cell.calls_per_s:>10,.0f}  {ratio:>10}"
    )


def _sorted(cells: list[Cell]) -> list[Cell]:
    measured = sorted((c for c in cells if c.measured), key=lambda c: c.median_s)
    return measured + [c for c in cells if not c.measured]


def _target_line(target: Target) -> str:
    line = f"  [{'PASS' if target.ok else 'FAIL'}] {target.text}: {target.measured}"
    return f"{line} (hand-rolled, {target.reference})" if target.reference else line


def format_table(result: BenchResult, targets: list[Target]) -> str:
    """The human-readable report: one table per workload, fastest first, then targets."""
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    lines = [f"{describe_machine()}; {versions}"]
    lines.append(
        "median and p95 are per call; calls/s counts every caller thread; "
        "speed-up = Flask default's median / the row's median (higher is faster)"
    )
    width = max([len(c.label) for c in result.cells] + [len("contender")])
    for name in result.settings.workloads:
        workload = WORKLOADS[name]
        lines.append("")
        lines.append(_workload_heading(result, workload))
        if name in result.skipped:
            lines.append(f"  not run: {result.skipped[name]}")
            continue
        lines.append(
            f"  {'contender':{width}}  {'median':>10}  {'p95':>10}  {'calls/s':>10}  "
            f"{'speed-up':>10}"
        )
        cells = [c for c in result.cells if c.workload.name == name]
        lines.extend(_row(result, cell, width) for cell in _sorted(cells))
        if result.baseline(name) is None:
            lines.append("  (no speed-up: Flask's default was not measured)")
    if targets:
        lines.append("")
        lines.append("loopshim's performance targets, as ratios measured in this run:")
        lines.extend(_target_line(t) for t in targets)
    lines.append("")
    lines.append(f"wall time {result.wall_s:.1f} s")
    return "\n".join(lines)


# --- JSON -------------------------------------------------------------------------


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _cell_json(result: BenchResult, cell: Cell) -> dict[str, Any]:
    measured = cell.measured
    return {
        "workload": cell.workload.name,
        "contender": cell.contender.key,
        "label": cell.label,
        "kind": cell.contender.kind,
        "backend": cell.contender.backend,
        "scope": cell.contender.scope,
        "status": cell.status,
        "detail": cell.detail,
        "calls": cell.calls,
        "elapsed_s": cell.elapsed_s,
        "median_s": cell.median_s if measured else None,
        "p95_s": cell.p95_s if measured else None,
        "calls_per_s": _number(cell.calls_per_s) if measured else None,
        "speedup_vs_flask_default": result.speedup(cell),
        "batches": [
            {"round": r, "calls": calls, "elapsed_ns": wall} for r, calls, wall in cell.batches
        ],
        "times_ns": cell.times_ns,
    }


def to_json(result: BenchResult, targets: list[Target], argv: list[str]) -> dict[str, Any]:
    """The whole run as a JSON-ready dict; README.md documents the fields."""
    settings = asdict(result.settings)
    return {
        "schema": JSON_SCHEMA,
        "command": ["loopshim", *argv],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(result.started)),
        "wall_s": result.wall_s,
        "machine": machine(),
        "versions": library_versions(),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "baseline": BASELINE,
        "workloads": {
            name: {
                "description": WORKLOADS[name].description,
                "skipped": result.skipped.get(name),
            }
            for name in result.settings.workloads
        },
        "results": [_cell_json(result, cell) for cell in result.cells],
        "targets": [asdict(t) for t in targets],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write *document* compactly: the per-call times make it large."""
    with path.open("w", encoding="utf-8") as file:
        json.dump(document, file, separators=(",", ":"))
        file.write("\n")


# --- the plot ---------------------------------------------------------------------


def write_plot(result: BenchResult, path: Path) -> None:
    """One panel per workload: median per call (bar) and p95 (tick), fastest on top,
    each bar labelled with its speed-up over Flask's default. Needs matplotlib."""
    from matplotlib.figure import Figure

    panels = [
        (name, _sorted([c for c in result.cells if c.workload.name == name and c.measured]))
        for name in result.settings.workloads
    ]
    panels = [(name, cells) for name, cells in panels if cells]
    heights = [max(len(cells), 2) * 0.32 + 0.9 for _, cells in panels] or [1.0]
    figure = Figure(figsize=(10, sum(heights) + 0.6), layout="constrained")
    if not panels:
        figure.text(0.5, 0.5, "nothing was measured", ha="center", va="center")
        figure.savefig(path)
        return
    axes = figure.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (name, cells) in zip(axes, panels, strict=True):
        _draw_panel(ax, result, name, cells)
    _legend(figure)
    figure.suptitle(f"loopshim bench: {describe_machine()}", fontsize=10)
    figure.savefig(path, dpi=110)


_COLOURS: Final = {"loopshim": "#3b75af", "peer": "#9a9a9a", "baseline": "#d9822b"}


def _legend(figure: Any) -> None:
    from matplotlib.patches import Patch

    labels = {
        "loopshim": "loopshim",
        "peer": "peers",
        "baseline": "Flask default (speed-ups, right, are relative to it)",
    }
    handles = [Patch(color=_COLOURS[key], label=text) for key, text in labels.items()]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)


def _draw_panel(ax: Any, result: BenchResult, name: str, cells: list[Cell]) -> None:
    cells = list(reversed(cells))  # barh draws bottom-up: fastest on top
    scale, unit = (1e6, "us") if max(c.median_s for c in cells) < 1e-2 else (1e3, "ms")
    medians = [c.median_s * scale for c in cells]
    colours = [
        _COLOURS["baseline"] if c.contender.key == BASELINE else _COLOURS[c.contender.kind]
        for c in cells
    ]
    positions = list(range(len(cells)))
    ax.barh(positions, medians, color=colours)
    # A linear axis from 0, so that bar lengths compare as the times do; a p95 far
    # beyond the slowest median falls outside it and is not drawn.
    axis_end = max(medians) * 1.3
    ax.set_xlim(0, axis_end)
    ax.plot([c.p95_s * scale for c in cells], positions, "k|", markersize=9, clip_on=True)
    ax.set_yticks(positions, [c.label for c in cells], fontsize=8)
    ax.set_xlabel(f"median per call ({unit}); | = p95 (when within the axis)", fontsize=8)
    ax.set_title(f"{name}: {cells[0].workload.description}", fontsize=9, loc="left")
    # The speed-ups in a column at the right edge, clear of the bars and ticks.
    for position, cell in zip(positions, cells, strict=True):
        speedup = result.speedup(cell)
        if speedup is not None:
            ax.text(axis_end, position, f"{speedup:.1f}x ", ha="right", va="center", fontsize=7)


# --- progress ---------------------------------------------------------------------


class TerminalProgress:
    """A one-line progress display on *stream* — only when it is a terminal, so that
    redirected or captured output stays clean."""

    def __init__(self, stream: IO[str] | None = None, interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self.stream)
        self.interval = interval
        self._origin = time.monotonic()  # when the first batch began
        self._shown = -math.inf
        self._drawn = False

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done == 0:
            self._origin = now
        if done >= total:
            self.clear()
            return
        if now - self._shown < self.interval:
            return
        self._shown = now
        # Batches take equal time (--duration) or nearly so (--repeat): extrapolate.
        left = (now - self._origin) / done * (total - done) if done else None
        eta = f", about {left:.0f} s left" if left is not None else ""
        line = f"loopshim bench: {done}/{total} batches{eta} - {what}"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write("\r\x1b[K" + line[:width])
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
