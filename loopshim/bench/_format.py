"""How figures are written, in the table and on the plot alike: durations, and how a row
compares with the row its workload compares it with — Flask's default (the baseline),
a plain Flask app, awaiting the function directly, or the recipe written by hand for the
same pair of loops."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ._async_peers import ASYNC_PEERS, FLOOR, by_hand_key
from ._peers import BASELINE, PEERS
from ._results import BenchResult, Cell
from ._workloads import Workload

__all__ = [
    "ASYNC",
    "BY_HAND",
    "DIRECT",
    "SYNC",
    "Comparison",
    "comparison_of",
    "format_seconds",
    "format_speedup",
]


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


def _percent(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%"


#: The key of the row a cell is compared with (None: it has none).
ReferenceOf = Callable[[Cell], str | None]


@dataclass(frozen=True)
class Comparison:
    """How a row of a workload compares with the row it is held against."""

    #: The short column heading of the table.
    heading: str
    #: The heading of the plot's column, which names what rows are compared with.
    title: str
    #: What the column means, in a sentence.
    legend: str
    #: Where it applies, when not to every workload ("" for every one).
    applies_to: str
    #: True: reference / row, higher is faster; False: row / reference.
    speedup: bool
    #: The key of the row each row is compared with.
    reference_of: ReferenceOf
    #: How the ratio is written.
    show: Callable[[float], str] = format_speedup
    #: The one row every row is compared with, if there is one (None: it depends on
    #: the row).
    common: str | None = None

    def reference(self, result: BenchResult, cell: Cell) -> Cell | None:
        """The measured row *cell* is compared with, or None."""
        key = self.reference_of(cell)
        return None if key is None else result.measured_cell(cell.workload.name, key)

    def value(self, result: BenchResult, cell: Cell) -> float | None:
        """The ratio of *cell* to its reference, or None when one is not measured."""
        reference = self.reference(result, cell)
        if reference is None or not cell.measured:
            return None
        if self.speedup:
            return reference.median_s / cell.median_s
        return cell.median_s / reference.median_s

    def text(self, result: BenchResult, cell: Cell) -> str:
        """The ratio as shown: ``84.8x`` (a speed-up or a cost) or ``+3.1%`` (time added)."""
        value = self.value(result, cell)
        return "-" if value is None else self.show(value)


def _baseline(cell: Cell) -> str:
    return BASELINE


def _floor(cell: Cell) -> str:
    return FLOOR


def _same_pair(cell: Cell) -> str | None:
    pair = cell.contender.pair
    return None if pair is None else by_hand_key(*pair)


#: Where async code runs: how many times faster than Flask's default.
ASYNC: Final = Comparison(
    "speed-up",
    "speed-up vs\nFlask's default",
    "speed-up = Flask's default median / the row's median (higher is faster)",
    "",
    speedup=True,
    reference_of=_baseline,
    common=BASELINE,
)
#: Where none does (a sync view): the time a row adds to a plain Flask app's.
SYNC: Final = Comparison(
    "vs plain",
    "time vs a plain\nFlask app",
    "vs plain = the row's median compared with a plain Flask app's (lower is faster)",
    "the workloads that run no async code",
    speedup=False,
    reference_of=_baseline,
    show=_percent,
    common=BASELINE,
)
#: Re-entrant calls: how many times the time of awaiting the function directly.
DIRECT: Final = Comparison(
    "vs direct",
    "time vs\nawaiting directly",
    "vs direct = the row's median / awaiting the function directly's (lower is faster)",
    "reentrant",
    speedup=False,
    reference_of=_floor,
    common=FLOOR,
)
#: Awaiting a call on another loop: the time of the recipe written by hand for the same
#: pair of loops.
BY_HAND: Final = Comparison(
    "vs by hand",
    "time vs by hand\n(same loops)",
    "vs by hand = the row's median / the recipe written by hand for the same pair of "
    "loops (lower is faster)",
    "cross-loop",
    speedup=False,
    reference_of=_same_pair,
)

_BY_WORKLOAD: Final = {"reentrant": DIRECT, "cross-loop": BY_HAND}

#: Every contender's label, by key, for the rows a comparison names.
LABELS: Final = {peer.key: peer.label for peer in (*PEERS, *ASYNC_PEERS)}


def comparison_of(workload: Workload) -> Comparison:
    """How the rows of *workload* are compared."""
    if workload.name in _BY_WORKLOAD:
        return _BY_WORKLOAD[workload.name]
    return ASYNC if workload.uses_async else SYNC
