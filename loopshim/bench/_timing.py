"""Timing one batch: the calls a budget allows, each timed on its own. The same loop
runs wherever a batch runs — in a caller thread, inside a coroutine on a contender's
loop, in a contender's own process — so that every row is timed alike."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BatchFactory", "BatchRunner", "Budget", "BudgetTimer", "timed_awaits", "timed_calls"]


@dataclass(frozen=True)
class Budget:
    """What one batch does in each caller thread: call for *seconds*, or *calls* times
    (with both, whichever ends first)."""

    seconds: float | None = None
    calls: int | None = None


#: Runs one batch in the caller thread it was made for; returns the duration of each
#: call, in nanoseconds.
BatchRunner = Callable[[Budget], list[int]]
#: Makes the batch runner of one caller thread; called in that thread.
BatchFactory = Callable[[], BatchRunner]


class BudgetTimer:
    """The durations of one batch's calls, and whether its budget is used up: after
    *calls* calls, or when the next call would overshoot the deadline more than it
    would fall short of it. A batch makes at least one call unless its budget is 0
    calls."""

    __slots__ = ("_deadline", "_limit", "times")

    def __init__(self, budget: Budget) -> None:
        self.times: list[int] = []
        self._limit = budget.calls
        self._deadline = (
            None if budget.seconds is None else time.perf_counter_ns() + int(budget.seconds * 1e9)
        )

    @property
    def empty(self) -> bool:
        """Whether the budget allows no call at all."""
        return self._limit == 0

    def add(self, start: int, end: int) -> bool:
        """Record a call that ran from *start* to *end* (``perf_counter_ns``); whether
        the batch is over."""
        took = end - start
        self.times.append(took)
        if self._limit is not None and len(self.times) >= self._limit:
            return True
        return self._deadline is not None and self._deadline - end < took // 2


def _no_check(answer: object) -> None:
    return None


def timed_calls(
    call: Callable[[], object], budget: Budget, check: Callable[[Any], None] = _no_check
) -> list[int]:
    """Call *call()* for *budget*; the duration of each call in nanoseconds. Each
    answer goes to *check* once the call is timed."""
    timer = BudgetTimer(budget)
    if timer.empty:
        return timer.times
    clock, add = time.perf_counter_ns, timer.add
    while True:
        start = clock()
        answer = call()
        end = clock()
        check(answer)
        if add(start, end):
            return timer.times


async def timed_awaits(
    op: Callable[[], Awaitable[Any]], budget: Budget, check: Callable[[Any], None] = _no_check
) -> list[int]:
    """Await *op()* for *budget*, in the running coroutine; the duration of each await
    in nanoseconds. Each answer goes to *check* once the await is timed."""
    timer = BudgetTimer(budget)
    if timer.empty:
        return timer.times
    clock, add = time.perf_counter_ns, timer.add
    while True:
        start = clock()
        answer = await op()
        end = clock()
        check(answer)
        if add(start, end):
            return timer.times
