"""The data of one run: what was asked (:class:`BenchSettings`), and what each workload x
contender measured (:class:`Cell`), gathered in a :class:`BenchResult`."""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass, field
from typing import Final, Literal

from ._contenders import Contender
from ._peers import BASELINE
from ._timing import BatchFactory
from ._workloads import Workload

__all__ = ["LIBRARIES", "PLAIN_FLASK", "BenchResult", "BenchSettings", "Cell", "Status"]

Status = Literal["ok", "not installed", "error"]

#: The distributions whose versions a run records.
LIBRARIES: Final = (
    "loopshim",
    "flask",
    "werkzeug",
    "asgiref",
    "anyio",
    "trio",
    "uvloop",
    "greenlet",
    "greenback",
    "nest_asyncio",
)

#: The baseline's label where no async code runs: a plain Flask app.
PLAIN_FLASK: Final = "plain Flask app (no LoopShim)"


@dataclass(frozen=True)
class BenchSettings:
    """What ``loopshim bench`` was asked to do."""

    backends: tuple[str, ...]
    scopes: tuple[str, ...]
    workloads: tuple[str, ...]
    peers: bool = True
    #: Seconds per row, spread over the rounds; or, with *repeat*, None.
    duration: float | None = 0.5
    #: Calls per row and caller thread, spread over the rounds (instead of *duration*).
    repeat: int | None = None
    rounds: int = 50
    threads: int = 1


@dataclass
class Cell:
    """One workload run by one contender: its status and every figure measured."""

    workload: Workload
    contender: Contender
    status: Status = "ok"
    detail: str = ""
    #: Duration of every call, in nanoseconds, from every caller thread.
    times_ns: list[int] = field(default_factory=list)
    #: One (round, calls, wall-clock nanoseconds) per batch.
    batches: list[tuple[int, int, int]] = field(default_factory=list)
    factory: BatchFactory | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """The row's label: the contender's, or a plain app's where no async code runs."""
        if self.is_baseline and not self.workload.uses_async:
            return PLAIN_FLASK
        return self.contender.label

    @property
    def is_baseline(self) -> bool:
        """Whether this is the row every other row of its workload is compared with."""
        return self.contender.key == BASELINE

    @property
    def measured(self) -> bool:
        """Whether the cell ran and has calls to report."""
        return self.status == "ok" and bool(self.times_ns)

    # Read only once the run is over (reports, JSON, plot), so computed once.
    @functools.cached_property
    def median_s(self) -> float:
        """The median time per call, in seconds."""
        return statistics.median(self.times_ns) / 1e9

    @functools.cached_property
    def p95_s(self) -> float:
        """The 95th percentile of the time per call, in seconds."""
        if len(self.times_ns) < 2:
            return self.times_ns[0] / 1e9
        return statistics.quantiles(self.times_ns, n=20, method="inclusive")[-1] / 1e9

    @property
    def calls(self) -> int:
        """The calls measured, from every caller thread."""
        return len(self.times_ns)

    @property
    def elapsed_s(self) -> float:
        """The wall-clock time of the cell's batches, in seconds."""
        return sum(wall for _, _, wall in self.batches) / 1e9

    @property
    def calls_per_s(self) -> float:
        """Throughput: calls completed by all caller threads per second of wall time."""
        elapsed = self.elapsed_s
        return self.calls / elapsed if elapsed > 0 else float("nan")

    def fail(self, status: Status, detail: str) -> None:
        """Mark the cell as not measured, and why; it makes no more calls."""
        self.status, self.detail, self.factory = status, detail, None


@dataclass
class BenchResult:
    """Everything one run measured, in table order."""

    settings: BenchSettings
    cells: list[Cell]
    #: Workloads that could not run at all, with the reason.
    skipped: dict[str, str]
    #: When the run started, in seconds since the epoch.
    started: float
    wall_s: float = 0.0

    def cells_of(self, workload: str) -> list[Cell]:
        """The cells of *workload*, in plan order."""
        return [c for c in self.cells if c.workload.name == workload]

    def measured_cell(self, workload: str, contender_key: str) -> Cell | None:
        """The cell of *workload* x *contender_key*, if it was measured."""
        return next(
            (c for c in self.cells_of(workload) if c.contender.key == contender_key and c.measured),
            None,
        )

    def baseline(self, workload: str) -> Cell | None:
        """The baseline's cell of *workload*, if it was measured."""
        return self.measured_cell(workload, BASELINE)

    def speedup(self, cell: Cell) -> float | None:
        """How many times faster than the baseline per call (median), or None."""
        base = self.baseline(cell.workload.name)
        if base is None or not cell.measured:
            return None
        return base.median_s / cell.median_s
