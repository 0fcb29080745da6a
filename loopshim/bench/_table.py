"""The human-readable report of ``loopshim bench``: the line that opens a run, one table
per workload (fastest first), then the performance targets."""

from __future__ import annotations

from collections import Counter
from typing import Final

from .._info import describe_machine, library_versions
from ._format import ASYNC, LABELS, comparison_of, format_seconds
from ._peers import BASELINE
from ._results import LIBRARIES, BenchResult, BenchSettings, Cell
from ._targets import Target
from ._workloads import WORKLOADS, Workload

__all__ = ["format_start", "format_table", "sorted_cells"]

_TAGS: Final = {"pass": "PASS", "fail": "FAIL", "not checked": "----"}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _budget(settings: BenchSettings) -> str:
    if settings.repeat is not None:
        return f"{_plural(settings.repeat, 'call')} per caller thread"
    return f"{settings.duration:g} s"


def format_start(settings: BenchSettings, rows: int, expected_s: float | None) -> str:
    """``loopshim bench: 98 rows x 0.2 s, in 50 rounds: about 22 s``."""
    line = f"loopshim bench: {_plural(rows, 'row')} x {_budget(settings)}"
    line += f", in {_plural(settings.rounds, 'round')}"
    if expected_s is None:
        return f"{line} (the time depends on the calls)"
    return f"{line}: about {expected_s:.0f} s"


def _workload_heading(settings: BenchSettings, workload: Workload) -> str:
    return (
        f"{workload.name}: {workload.description} "
        f"[{_plural(settings.threads, 'caller thread')}, {_budget(settings)} per row "
        f"in {_plural(settings.rounds, 'round')}]"
    )


def _row(result: BenchResult, cell: Cell, width: int) -> str:
    if not cell.measured:
        status = cell.status if cell.status != "ok" else "no calls measured"
        detail = f" ({cell.detail})" if cell.detail else ""
        return f"  {cell.label:{width}}  {status}{detail}"
    compared = comparison_of(cell.workload).text(result, cell)
    return (
        f"  {cell.label:{width}}  {format_seconds(cell.median_s):>10}  "
        f"{format_seconds(cell.p95_s):>10}  {cell.calls_per_s:>10,.0f}  {compared:>10}"
    )


def sorted_cells(cells: list[Cell]) -> list[Cell]:
    """The measured cells fastest first, then the others in plan order."""
    measured = sorted((c for c in cells if c.measured), key=lambda c: c.median_s)
    return measured + [c for c in cells if not c.measured]


def _target_line(target: Target) -> str:
    return f"  [{_TAGS[target.status]}] {target.text}: {target.measured}"


def _targets_summary(targets: list[Target]) -> str:
    counts = Counter(t.status for t in targets)
    return (
        f"  {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['not checked']} not checked (one side not measured)"
    )


def format_table(result: BenchResult, targets: list[Target]) -> str:
    """The report: one table per workload, fastest first, then the targets."""
    versions = ", ".join(f"{k} {v}" for k, v in library_versions(LIBRARIES).items())
    lines = [f"{describe_machine()}; {versions}"]
    lines.append("median and p95 are per call; calls/s counts every caller thread")
    lines.append(ASYNC.legend)
    comparisons = dict.fromkeys(comparison_of(WORKLOADS[n]) for n in result.settings.workloads)
    lines.extend(f"{c.legend}, for {c.applies_to}" for c in comparisons if c is not ASYNC)
    width = max([len(c.label) for c in result.cells] + [len("contender")])
    for name in result.settings.workloads:
        workload = WORKLOADS[name]
        lines += ["", _workload_heading(result.settings, workload)]
        if name in result.skipped:
            lines.append(f"  not run: {result.skipped[name]}")
            continue
        comparison = comparison_of(workload)
        heading = comparison.heading
        lines.append(
            f"  {'contender':{width}}  {'median':>10}  {'p95':>10}  {'calls/s':>10}  {heading:>10}"
        )
        lines.extend(_row(result, cell, width) for cell in sorted_cells(result.cells_of(name)))
        common = comparison.common
        if common is not None and result.measured_cell(name, common) is None:
            what = "the baseline" if common == BASELINE else LABELS.get(common, common)
            lines.append(f"  (no {heading}: {what} was not measured)")
    if targets:
        lines += ["", "loopshim's performance targets, as ratios measured in this run:"]
        lines.extend(_target_line(t) for t in targets)
        lines.append(_targets_summary(targets))
    lines += ["", f"wall time {result.wall_s:.1f} s"]
    return "\n".join(lines)
