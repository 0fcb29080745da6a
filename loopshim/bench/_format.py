"""How figures are written, in the table and on the plot alike: durations, and how a row
compares with the baseline of its workload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ._results import BenchResult, Cell
from ._workloads import Workload

__all__ = ["ASYNC", "SYNC", "Comparison", "comparison_of", "format_seconds", "format_speedup"]


def format_seconds(seconds: float) -> str:
    """``5.2 µs``, ``4.56 ms`` or ``1.23 s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_speedup(ratio: float) -> str:
    """``84.8x``, ``5.23x``, ``0.97x``: two decimals below 10, so that near 1 rows differ."""
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


@dataclass(frozen=True)
class Comparison:
    """How a row of a workload compares with that workload's baseline."""

    #: The short column heading of the table.
    heading: str
    #: The heading of the plot's column, which names what rows are compared with.
    title: str
    #: What the column means, in a sentence.
    legend: str
    #: True: baseline / row, higher is faster; False: row / baseline, as a percentage.
    speedup: bool

    def value(self, result: BenchResult, cell: Cell) -> float | None:
        """The ratio of *cell* to its baseline, or None when one is not measured."""
        base = result.baseline(cell.workload.name)
        if base is None or not cell.measured:
            return None
        return base.median_s / cell.median_s if self.speedup else cell.median_s / base.median_s

    def text(self, result: BenchResult, cell: Cell) -> str:
        """The ratio as shown: ``84.8x`` (a speed-up) or ``+3.1%`` (time added)."""
        value = self.value(result, cell)
        if value is None:
            return "-"
        return format_speedup(value) if self.speedup else f"{(value - 1) * 100:+.1f}%"


#: Where async code runs: how many times faster than Flask's default.
ASYNC: Final = Comparison(
    "speed-up",
    "speed-up vs\nFlask's default",
    "speed-up = Flask's default median / the row's median (higher is faster)",
    speedup=True,
)
#: Where none does (a sync view): the time a row adds to a plain Flask app's.
SYNC: Final = Comparison(
    "vs plain",
    "time vs a plain\nFlask app",
    "vs plain = the row's median compared with a plain Flask app's (lower is faster)",
    speedup=False,
)


def comparison_of(workload: Workload) -> Comparison:
    """How the rows of *workload* are compared with its baseline."""
    return ASYNC if workload.uses_async else SYNC
