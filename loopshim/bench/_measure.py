"""One interleaved measurement: set every contender up, warm every cell up, then run the
rounds — each gives every cell's batch in a fresh random order, so that slow phases of a
busy machine hit every cell alike — from long-lived caller threads, as a WSGI server
calls. A batch is run by the cell's batch runner (``_timing``), in the caller thread —
or inside a coroutine on the contender's loop, or in the contender's own process — and
every call in it is timed alike.

The time a run takes is what was asked for (``--duration`` per row) plus small, bounded
costs: the warm-up is a share of a row's duration; each batch is long enough to hold a
call (a cell whose calls are long gets fewer, longer batches, spread over the rounds);
a batch stops when its next call would overshoot its budget more than it would fall
short of it; each batch gets its share of the time its cell has left, and a cell that
has used its time gets no more batches.
"""

from __future__ import annotations

import contextlib
import importlib
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

if sys.version_info >= (3, 11):
    from typing import Self
else:
    from typing_extensions import Self

from .._info import pip_install_line
from ._contenders import Prepared
from ._plan import plan, requirements
from ._results import BenchResult, BenchSettings, Cell, Status
from ._timing import BatchRunner, Budget

__all__ = [
    "Announce",
    "Budget",
    "Progress",
    "batch_rounds",
    "expected_seconds",
    "next_budget",
    "run_bench",
    "warm_up_budget",
]

#: Warm-up per cell and caller thread: a batch of one call (it pays for imports and
#: first loops), then one of at least one call that estimates the time of a call, up
#: to _WARMUP_CALLS calls in all or warm_up_budget() seconds, whichever comes first.
_WARMUP_CALLS: Final = 20
_WARMUP_MAX_S: Final = 0.1
_WARMUP_SHARE: Final = 0.1
#: The shortest batch: every batch costs a hand-over to the caller threads and back.
MIN_BATCH_S: Final = 0.002
#: For the estimate: about what that hand-over costs, and the end of a run (closing the
#: contenders and the caller threads).
_BATCH_OVERHEAD_S: Final = 0.0002
_CLOSING_S: Final = 0.5

#: Progress callback: (batches done, batches in all, what runs now); during the warm-up,
#: batches done is 0.
Progress = Callable[[int, int, str], None]
#: Called once the run is set up: (rows to measure, expected seconds, or None when the
#: run is counted in calls, not seconds).
Announce = Callable[[int, float | None], None]

#: (cell id, caller thread index) -> that thread's batch runner.
_Runners = dict[tuple[int, int], BatchRunner]


def _no_progress(done: int, total: int, what: str) -> None:
    return None


def _no_announce(rows: int, seconds: float | None) -> None:
    return None


# --- timing -----------------------------------------------------------------------


def warm_up_budget(settings: BenchSettings) -> float:
    """Seconds of warm-up per cell: a share of a row's duration, at most _WARMUP_MAX_S."""
    if settings.duration is None:
        return _WARMUP_MAX_S
    return min(_WARMUP_MAX_S, _WARMUP_SHARE * settings.duration)


def batch_rounds(settings: BenchSettings, call_s: float) -> list[int]:
    """The rounds in which a cell whose calls take about *call_s* gets a batch: every
    round if its batches can hold a call and last MIN_BATCH_S, else fewer, spread
    evenly over the run."""
    rounds = settings.rounds
    if settings.repeat is not None:
        wanted = min(rounds, settings.repeat)
    else:
        assert settings.duration is not None
        wanted = int(settings.duration / max(call_s, MIN_BATCH_S))
    count = max(1, min(rounds, wanted))
    return [r for r in range(rounds) if (r + 1) * count // rounds > r * count // rounds]


def expected_seconds(settings: BenchSettings, rows: int) -> float | None:
    """About how long a run of *rows* takes, or None when it is counted in calls."""
    if settings.duration is None:
        return None
    batches = min(settings.rounds, max(1, int(settings.duration / MIN_BATCH_S)))
    per_row = settings.duration + warm_up_budget(settings) + batches * _BATCH_OVERHEAD_S
    return _CLOSING_S + rows * per_row


def next_budget(settings: BenchSettings, cell: Cell, batches: int) -> Budget | None:
    """What the next of a cell's *batches* does: its share of the calls (``--repeat``),
    or of the time the cell has left, so that a batch that overshot shortens the next
    ones; None once the cell has used its time."""
    done = len(cell.batches)
    if settings.repeat is not None:
        share, extra = divmod(settings.repeat, batches)
        return Budget(calls=share + (1 if done < extra else 0))
    assert settings.duration is not None
    left = settings.duration - cell.elapsed_s
    return Budget(seconds=left / (batches - done)) if left > 0 and done < batches else None


# --- caller threads ---------------------------------------------------------------


class _Callers:
    """N long-lived caller threads (as a threaded WSGI server has) that run one job at a
    time, all at once: the job is called in every thread; :meth:`run` returns when every
    thread is done with it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._start = threading.Barrier(count + 1)
        self._done = threading.Barrier(count + 1)
        self._job: Callable[[int], None] | None = None
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"bench-caller-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self, index: int) -> None:
        while True:
            try:
                self._start.wait()
            except threading.BrokenBarrierError:
                return
            job = self._job
            if job is None:
                return
            try:
                job(index)
            except BaseException as exc:
                self._errors.append(exc)
            try:
                self._done.wait()
            except threading.BrokenBarrierError:
                return

    def run(self, job: Callable[[int], None]) -> list[BaseException]:
        """Run *job(thread_index)* in every thread; return the exceptions it raised."""
        self._job, self._errors = job, []
        self._start.wait()
        self._done.wait()
        return self._errors

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:  # every thread is waiting for the next job: none comes
            self._job = None
            with contextlib.suppress(threading.BrokenBarrierError):
                self._start.wait(timeout=5)
        # After an error or Ctrl-C, breaking the barriers ends the threads once their
        # current batch is over.
        self._start.abort()
        self._done.abort()
        for thread in self._threads:
            thread.join(5)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


# --- set-up -----------------------------------------------------------------------


def _import_problem(modules: Sequence[str], cache: dict[str, str]) -> str:
    """Why one of *modules* cannot be imported ("" if all can): a library that is found
    but fails to import is as good as not installed."""
    for module in modules:
        if module not in cache:
            try:
                importlib.import_module(module)
                cache[module] = ""
            except ImportError as exc:
                cache[module] = f"{module} fails to import ({exc}): {pip_install_line([module])}"
        if cache[module]:
            return cache[module]
    return ""


def _prepare(result: BenchResult, stack: contextlib.ExitStack[Any]) -> None:
    """Set every contender up once, then build each cell's call factory."""
    prepared: dict[str, Prepared | BaseException] = {}
    imports: dict[str, str] = {}
    for cell in result.cells:
        if cell.status != "ok":
            continue
        problem = _import_problem(requirements(cell.workload, cell.contender), imports)
        if problem:
            cell.fail("not installed", problem)
            continue
        key = cell.contender.key
        if key not in prepared:
            try:
                prepared[key] = cell.contender.setup(stack)
            except Exception as exc:
                prepared[key] = exc
        ready = prepared[key]
        if isinstance(ready, BaseException):
            # BackendUnavailable is an ImportError: the backend's library is missing.
            status: Status = "not installed" if isinstance(ready, ImportError) else "error"
            cell.fail(status, f"set-up failed: {_error_text(ready)}")
            continue
        try:
            if ready.own_batches is not None:  # it runs its batches itself
                cell.factory = ready.own_batches(cell.workload.name)
            else:
                cell.factory = cell.workload.build(ready)
        except Exception as exc:
            cell.fail("error", f"set-up failed: {_error_text(exc)}")


# --- measuring --------------------------------------------------------------------


def _warm_up(cell: Cell, callers: _Callers, runners: _Runners, budget_s: float) -> float:
    """Make each thread's batch runner and run it a few times (imports, first loops,
    caches); return about how long a call takes (0.0 if the cell failed)."""
    assert cell.factory is not None
    factory, ident = cell.factory, id(cell)
    times: list[int] = []
    clock = time.perf_counter

    def job(index: int) -> None:
        run = runners[ident, index] = factory()
        begin = clock()
        first = run(Budget(calls=1))  # the first call pays for what only happens once
        # ... and at least one more, then up to the warm-up's calls or its time.
        left = max(0.0, budget_s - (clock() - begin))
        times.extend(run(Budget(seconds=left, calls=_WARMUP_CALLS - len(first))))

    errors = callers.run(job)
    if errors:
        cell.fail("error", _error_text(errors[0]))
        return 0.0
    return statistics.median(times) / 1e9


def _batch(
    cell: Cell, round_index: int, callers: _Callers, runners: _Runners, budget: Budget
) -> None:
    """Every caller thread calls for the budget's seconds (or number of calls); the
    per-call times and the batch's wall-clock time are added to *cell*."""
    ident = id(cell)
    per_thread: list[list[int]] = [[] for _ in range(callers.count)]
    spans: list[tuple[int, int]] = []
    clock = time.perf_counter_ns

    def job(index: int) -> None:
        begin = clock()
        per_thread[index] = runners[ident, index](budget)
        spans.append((begin, clock()))

    errors = callers.run(job)
    if errors:
        cell.fail("error", _error_text(errors[0]))
        return
    for times in per_thread:
        cell.times_ns.extend(times)
    calls_made = sum(len(times) for times in per_thread)
    wall = max(end for _, end in spans) - min(begin for begin, _ in spans)
    cell.batches.append((round_index, calls_made, wall))


#: round -> the cells that get a batch in that round, with their number of batches
_Schedule = dict[int, dict[int, int]]


def _warm_up_all(
    live: list[Cell],
    settings: BenchSettings,
    callers: _Callers,
    runners: _Runners,
    progress: Progress,
) -> _Schedule:
    """Warm every cell up, then give it its batches: as many rounds as its calls allow."""
    schedule: _Schedule = {}
    upper = len(live) * settings.rounds
    for index, cell in enumerate(live, 1):
        progress(0, upper, f"warming up {index}/{len(live)}: {cell.workload.name}, {cell.label}")
        call_s = _warm_up(cell, callers, runners, warm_up_budget(settings))
        if cell.status != "ok":
            continue
        rounds = batch_rounds(settings, call_s)
        for round_index in rounds:
            schedule.setdefault(round_index, {})[id(cell)] = len(rounds)
    return schedule


def _run_rounds(
    live: list[Cell],
    settings: BenchSettings,
    callers: _Callers,
    runners: _Runners,
    schedule: _Schedule,
    progress: Progress,
) -> None:
    """Each round, the batches of that round in a fresh random order."""
    total = sum(len(batches) for batches in schedule.values())
    step = 0
    for round_index in range(settings.rounds):
        batches = schedule.get(round_index, {})
        for cell in random.sample(live, len(live)):
            if id(cell) not in batches:
                continue
            what = f"round {round_index + 1}/{settings.rounds}: {cell.workload.name}, {cell.label}"
            progress(step, total, what)
            step += 1
            budget = next_budget(settings, cell, batches[id(cell)])
            if cell.status == "ok" and budget is not None:  # a failed batch ends its cell
                _batch(cell, round_index, callers, runners, budget)
    progress(total, total, "done")


def run_bench(
    settings: BenchSettings,
    progress: Progress = _no_progress,
    announce: Announce = _no_announce,
) -> BenchResult:
    """Plan, set up, announce, warm up and measure."""
    result = plan(settings)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        _prepare(result, stack)
        live = [c for c in result.cells if c.status == "ok"]
        announce(len(live), expected_seconds(settings, len(live)))
        # Entered last, so left first: the callers stop before the contenders close.
        callers = stack.enter_context(_Callers(settings.threads))
        runners: _Runners = {}
        schedule = _warm_up_all(live, settings, callers, runners, progress)
        _run_rounds(live, settings, callers, runners, schedule, progress)
    result.wall_s = time.perf_counter() - started
    return result
