"""The blocked-loop watchdog (``block_warning``): every block of a process-scope loop of
at least 1.2 times the threshold is reported, once, naming the callers' coroutine and
line, with its measured duration; an idle loop, or a busy one that yields, is never
reported; the loop's own machinery is never blamed.

Each library is watched its own way: asyncio's selector reports its waits, uvloop beats
on a timer, trio marks its wakes. Two backends written for these tests cover the rest of
the interface: one whose library reports its waits through ``LoopActivity.waits()``'s
pair of hooks, and one whose library has no hook at all, so that the watchdog probes it.

Timing: the tests check what the mechanism guarantees whatever the load. A block is
bracketed by what its coroutine measures around the blocking call and by when the loop
next runs a callback posted at its end; the reported duration must lie within 10% of
that bracket, whose upper end is raised by the time this process's threads spent waiting
for a CPU during the call (Linux says how long): the loop was unresponsive then too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gc
import glob
import inspect
import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import anyio
import pytest
from conftest import BACKENDS, BackendCase
from watchdog_backends import BrokenHookBackend, PairedBackend, ProbedBackend

import loopshim
from loopshim._core import _activity, _registry, _watchdog
from loopshim.abc import LoopActivity
from loopshim.pytest_plugin import LoopRunnerFactory

#: The threshold the tests use: small, so that 50 blocks take a few seconds.
THRESHOLD = 0.05
#: Block lengths, from 1.2 times the threshold (the shortest that must be reported) up,
#: and how close to a block's duration the reported one must be.
LENGTHS = (0.06, 0.07, 0.08, 0.09)
TOLERANCE = 0.1
#: Probes, for a library without a hook, place a block's start between the last answer
#: and the next probe, which the watchdog thread sends late when it waits for the GIL (a
#: switch interval, 5 ms) or a CPU: coarser, so they are held to blocks of 2 to 3 times
#: the threshold and a quarter of their duration.
PROBED_LENGTHS = (0.1, 0.12, 0.14, 0.15)
PROBED_TOLERANCE = 0.25
BLOCKS = 50


def precision(backend: str) -> tuple[tuple[float, ...], float]:
    """The block lengths a backend is tested with, and the tolerance on durations."""
    if backend == "watchdog_probed":
        return PROBED_LENGTHS, PROBED_TOLERANCE
    return LENGTHS, TOLERANCE


#: The backends under the watchdog: the suite's (asyncio and the third-party backend
#: report their waits around the selector, uvloop beats, trio marks its wakes; trio's
#: public-API variant differs in thread scope only), and this module's own.
WATCHED = [
    *BACKENDS,
    pytest.param(BackendCase("watchdog_paired", {}), id="paired-waits"),
    pytest.param(BackendCase("watchdog_probed", {}), id="probed"),
]
_OWN_BACKENDS = {
    "watchdog_paired": PairedBackend,
    "watchdog_probed": ProbedBackend,
    "watchdog_broken": BrokenHookBackend,
}


def watched(test: Callable[..., None]) -> Callable[..., None]:
    """Run *test* on every backend in ``WATCHED``, in process scope: the watchdog's."""
    on_every_backend = pytest.mark.parametrize("loop_backend", WATCHED, indirect=True)
    return pytest.mark.loopshim_scopes("process")(on_every_backend(test))


@pytest.fixture(scope="module", autouse=True)
def _own_backends() -> Iterator[None]:
    """This module's backends, registered while it runs."""
    for name, backend in _OWN_BACKENDS.items():
        loopshim.register_backend(name, backend, replace=True)
    try:
        yield
    finally:
        for name in _OWN_BACKENDS:
            _registry._registered.pop(name, None)


@pytest.fixture(scope="module", autouse=True)
def _anyio_backends_imported() -> None:
    """anyio imports its backend for a library at its first use in the process, which
    blocks the loop that uses it for tens of milliseconds: a block the watchdog rightly
    reports, but not one of the tests'."""
    anyio.run(anyio.sleep, 0)
    with contextlib.suppress(ImportError):
        anyio.run(anyio.sleep, 0, backend="trio")


# What the tests measure.


def waited_for_a_cpu() -> float:
    """How long this process's threads have waited for a CPU so far, in seconds, in all
    (the second field of Linux's schedstat; 0.0 where there is none)."""
    total = 0
    for path in glob.glob("/proc/self/task/*/schedstat"):
        try:
            with open(path) as file:
                total += int(file.read().split()[1])
        except (OSError, IndexError, ValueError):  # the thread has ended
            continue
    return total / 1e9


@dataclass
class Block:
    """One block as the test saw it: how long the blocking code ran, how long from its
    start until the loop ran a callback posted at its end, and how long the process's
    threads waited for a CPU during the call."""

    blocked: float
    back: float = 0.0
    starved: float = 0.0

    def allows(self, reported: float, tolerance: float = 0.1) -> bool:
        """Whether *reported* is within *tolerance* of this block's duration."""
        low = (1 - tolerance) * self.blocked
        high = (1 + tolerance) * self.back + self.starved
        return low <= reported <= high


def soon_on_this_loop(callback: Callable[[], object]) -> None:
    """Have the running loop, asyncio's or trio's, call *callback* as a bare callback."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        trio.lowlevel.current_trio_token().run_sync_soon(callback)
    else:
        loop.call_soon(callback)


def measured(started: float, blocks: list[Block]) -> None:
    """Record a block that began at *started* and ends now."""
    block = Block(time.perf_counter() - started)
    blocks.append(block)

    def loop_is_back() -> None:
        block.back = time.perf_counter() - started

    soon_on_this_loop(loop_is_back)


# The blocking coroutines. The comment on a blocking line is what the tests look for.


def sleep_for(seconds: float) -> None:
    time.sleep(seconds)  # the helper blocking on the caller's behalf


async def blocks_at_once(seconds: float, blocks: list[Block]) -> None:
    started = time.perf_counter()
    time.sleep(seconds)  # blocks at once
    measured(started, blocks)


async def blocks_after_a_timer(seconds: float, blocks: list[Block]) -> None:
    await anyio.sleep(0.002)  # the loop waits for events, then wakes for this timer
    started = time.perf_counter()
    time.sleep(seconds)  # blocks after a timer
    measured(started, blocks)


async def blocks_after_yielding(seconds: float, blocks: list[Block]) -> None:
    for _ in range(3):
        await anyio.sleep(0)
    started = time.perf_counter()
    time.sleep(seconds)  # blocks after yielding
    measured(started, blocks)


async def blocks_in_a_helper(seconds: float, blocks: list[Block]) -> None:
    await anyio.sleep(0)
    started = time.perf_counter()
    sleep_for(seconds)  # blocks in a helper
    measured(started, blocks)


async def spins(seconds: float, blocks: list[Block]) -> None:
    started = time.perf_counter()
    any(time.perf_counter() - started >= seconds for _ in iter(int, 1))  # spins
    measured(started, blocks)


def line_of(fn: Callable[..., object], marker: str) -> tuple[int, str]:
    """The number and text of the line of *fn* that holds *marker*."""
    lines, first = inspect.getsourcelines(fn)
    index = next(i for i, text in enumerate(lines) if marker in text)
    return first + index, lines[index].strip()


@dataclass(frozen=True)
class Kind:
    """A way to block: the coroutine, whether it runs as a background task, the marker
    of the line the culprit names (in the outermost of the callers' frames), and the
    function and marker of the line the stack shows last (where the blocking call is)."""

    fn: Callable[[float, list[Block]], Awaitable[None]]
    spawned: bool
    marker: str
    inner: tuple[Callable[..., object], str] | None = None

    @property
    def culprit(self) -> str:
        line, _ = line_of(self.fn, self.marker)
        return f"{__name__}.{self.fn.__qualname__} ({__file__}:{line})"

    @property
    def innermost(self) -> str:
        fn, marker = self.inner or (self.fn, self.marker)
        return line_of(fn, marker)[1]


KINDS = [
    Kind(blocks_at_once, False, "# blocks at once"),
    Kind(blocks_after_a_timer, False, "# blocks after a timer"),
    Kind(blocks_after_yielding, False, "# blocks after yielding"),
    Kind(blocks_in_a_helper, False, "# blocks in a helper", (sleep_for, "# the helper")),
    Kind(spins, False, "# spins"),
    Kind(blocks_at_once, True, "# blocks at once"),  # a task's first step
]


# What the watchdog reported.

_WARNED = re.compile(
    r"^the loopshim-\S+ loop (?:has been blocked for more than [\d.]+ s|was blocked for "
    r"[\d.]+ s) by (.+?): every call on this runner"
)
_RESPONSIVE = re.compile(
    r"^the loopshim-\S+ loop is responsive again after being blocked for ([\d.]+) s by (.+)$"
)
_UNSEEN = re.compile(
    r"^the loopshim-\S+ loop did not come back to its wait for events for ([\d.]+) s, and "
    r"the watchdog thread did not get to run"
)


@dataclass(frozen=True)
class Report:
    """One block as the watchdog reported it: the culprit it named (None if it did not
    get to look), the duration, and the last line of the stack it showed."""

    culprit: str | None
    lasted: float
    innermost: str | None


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "loopshim" and r.levelno >= level]


def ends(logged: list[str]) -> int:
    """How many of *logged* report the end of a block."""
    return sum(bool(_RESPONSIVE.match(m) or _UNSEEN.match(m)) for m in logged)


def parse(logged: list[str]) -> list[Report]:
    """The reports in *logged*, in order: a warning and its end make one."""
    reports = []
    warned: re.Match[str] | None = None
    for message in logged:
        if (match := _WARNED.match(message)) is not None:
            assert warned is None, f"warned twice before an end: {message}"
            warned = match
        elif (match := _RESPONSIVE.match(message)) is not None:
            assert warned is not None, f"an end without a warning: {message}"
            assert match.group(2) == warned.group(1), (warned.string, message)
            innermost = warned.string.rstrip().splitlines()[-1].strip()
            reports.append(Report(warned.group(1), float(match.group(1)), innermost))
            warned = None
        elif (match := _UNSEEN.match(message)) is not None:
            reports.append(Report(None, float(match.group(1)), None))
        else:
            raise AssertionError(f"an unexpected report: {message}")
    assert warned is None, f"a warning without an end: {warned.string}"
    return reports


def check(reports: list[Report], done: list[Kind], blocks: list[Block], tolerance: float) -> int:
    """Each block is reported once, in order, with its culprit, its stack and its
    duration; or, without a culprit, when the watchdog did not get to run during it. A
    report without a culprit that fits no block (the process stalled at another time) is
    let pass. Returns how many blocks were reported without a culprit."""
    unseen = 0
    left = list(reports)
    for i, (kind, block) in enumerate(zip(done, blocks, strict=True)):
        while left and left[0].culprit is None and not block.allows(left[0].lasted, tolerance):
            left.pop(0)
        assert left, f"block {i} ({kind.fn.__name__}, {block}) was not reported"
        report = left.pop(0)
        assert block.allows(report.lasted, tolerance), f"block {i}: {report} for {block}"
        if report.culprit is None:
            unseen += 1
            continue
        assert report.culprit == kind.culprit, f"block {i}: {report}"
        assert report.innermost == kind.innermost, f"block {i}: {report}"
    assert all(r.culprit is None for r in left), f"reported but no block: {left}"
    return unseen


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


@watched
def test_every_block_is_reported_once_with_its_culprit_and_duration(
    loop_backend: BackendCase,
    loop_runner_factory: LoopRunnerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="loopshim")
    lengths, tolerance = precision(loop_backend.name)
    # A fresh runner: the first block comes as its loop starts.
    runner = loop_runner_factory(block_warning=THRESHOLD)
    blocks: list[Block] = []
    done: list[Kind] = []
    try:
        for i in range(BLOCKS):
            kind = KINDS[i % len(KINDS)]
            seconds = lengths[i // len(KINDS) % len(lengths)]  # every kind gets each length
            before = waited_for_a_cpu()
            if kind.spawned:
                runner.spawn(kind.fn, seconds, blocks).result(timeout=10)
            else:
                runner.run(kind.fn, seconds, blocks)
            runner.run(anyio.sleep, 0)  # the callback posted at the block's end has run
            blocks[-1].starved = max(0.0, waited_for_a_cpu() - before)
            done.append(kind)
            if i % 5 == 4:
                time.sleep(0.02)  # and now and then the loop idles a while in between
        wait_for(lambda: ends(messages(caplog)) >= BLOCKS)
    finally:
        runner.close()
    reports = parse(messages(caplog))
    try:
        unseen = check(reports, done, blocks, tolerance)
    except AssertionError as exc:
        listed = "\n".join(f"  {r}" for r in reports)
        raise AssertionError(f"{exc}\nreported:\n{listed}") from None
    # On a machine too loaded to run the watchdog thread during a block, the loop still
    # reports the block, measured, but no one could see what it ran.
    assert unseen <= BLOCKS // 10, f"the watchdog saw only {BLOCKS - unseen} blocks"


@watched
def test_an_idle_loop_is_never_reported(
    loop_runner_factory: LoopRunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loopshim")
    runner = loop_runner_factory(block_warning=0.02)
    try:
        for _ in range(5):
            runner.run(anyio.sleep, 0)
            time.sleep(0.1)  # idle for five thresholds, waiting for events
        runner.run(anyio.sleep, 0.1)  # idle too, with a timer pending
    finally:
        runner.close()
    assert messages(caplog, logging.WARNING) == []


@watched
def test_a_busy_loop_that_yields_is_never_reported(
    loop_runner_factory: LoopRunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loopshim")
    runner = loop_runner_factory(block_warning=0.2)

    async def busy_but_yielding(seconds: float) -> int:
        steps = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            step = time.perf_counter()
            while time.perf_counter() - step < 0.001:  # a millisecond of work
                pass
            await anyio.sleep(0 if steps % 10 else 0.001)  # then yield, or wait a little
            steps += 1
        return steps

    try:
        steps = runner.run(busy_but_yielding, 0.6)
    finally:
        runner.close()
    assert steps > 50
    assert messages(caplog, logging.WARNING) == []


@watched
def test_a_block_with_nothing_of_the_callers_on_the_stack_is_not_blamed(
    loop_runner_factory: LoopRunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A blocking call scheduled as a bare callback leaves only the loop's machinery on
    the stack: the watchdog blames no one, and says so at DEBUG level."""
    caplog.set_level(logging.DEBUG, logger="loopshim")
    runner = loop_runner_factory(block_warning=THRESHOLD)

    async def schedule_a_bare_blocking_callback() -> None:
        soon_on_this_loop(functools.partial(time.sleep, 0.15))

    try:
        runner.run(schedule_a_bare_blocking_callback)
        runner.run(anyio.sleep, 0)  # after the callback's block
        wait_for(lambda: bool(messages(caplog, logging.DEBUG)))
    finally:
        runner.close()
    told = messages(caplog, logging.DEBUG)
    assert told, "the block was not seen"
    for message in told:  # (a loaded machine may stall the process as well)
        assert "nothing of its callers' on its stack" in message or _UNSEEN.match(message)


@watched
def test_a_watchdog_held_up_past_the_threshold_still_reports_the_block(
    loop_backend: BackendCase,
    loop_runner_factory: LoopRunnerFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the watchdog gets no CPU at the threshold, the loop's own report of the
    block's end still comes, and the watchdog warns then, with the stack it saw during
    the block and the measured duration."""
    caplog.set_level(logging.WARNING, logger="loopshim")
    look = _watchdog.BlockWatchdog._look

    def held_up_look(self: _watchdog.BlockWatchdog, now: float) -> float:
        start = self.activity.busy_start(now)
        if start is not None and start in self._looked and now - start >= self.threshold:
            time.sleep(0.4)  # it looked before the threshold; at it, it is held up
            now = time.monotonic()
        return look(self, now)

    monkeypatch.setattr(_watchdog.BlockWatchdog, "_look", held_up_look)
    runner = loop_runner_factory(block_warning=THRESHOLD)
    blocks: list[Block] = []
    try:
        before = waited_for_a_cpu()
        runner.run(blocks_at_once, 0.3, blocks)
        runner.run(anyio.sleep, 0)
        blocks[0].starved = max(0.0, waited_for_a_cpu() - before)
        wait_for(lambda: ends(messages(caplog)) >= 1)
    finally:
        runner.close()
    logged = messages(caplog)
    assert len(logged) == 2, logged
    assert logged[0].startswith(f"the loopshim-{loop_backend.name} loop was blocked for ")
    [report] = parse(logged)
    assert report.culprit == KINDS[0].culprit
    assert report.innermost == KINDS[0].innermost
    assert blocks[0].allows(report.lasted, precision(loop_backend.name)[1])


def test_a_hook_that_fails_is_logged_and_the_loop_probed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="loopshim")
    runner = loopshim.get_runner("watchdog_broken", cached=False, block_warning=THRESHOLD)
    try:
        runner.run(blocks_at_once, 0.2, [])
        wait_for(lambda: ends(messages(caplog)) >= 1)
    finally:
        runner.close()
    failed, *reported = caplog.records
    assert failed.getMessage().startswith(
        "the asyncio library could not hook the blocked-loop watchdog into its loop"
    )
    assert failed.exc_info is not None
    assert str(failed.exc_info[1]) == "no hook here"
    [report] = parse([r.getMessage() for r in reported])
    assert report.culprit == KINDS[0].culprit


@watched
def test_close_leaves_no_thread_and_does_not_wait_for_the_threshold(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    before = set(threading.enumerate())
    runner = loop_runner_factory(block_warning=600.0)
    runner.run(anyio.sleep, 0)
    started = time.monotonic()
    runner.close()
    assert time.monotonic() - started < 60  # not the threshold: the watchdog wakes to stop
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []


@watched
def test_the_watchdog_keeps_no_callers_context_alive(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    """The loop thread, and its watchdog, start at a first call, in the caller's context
    (a Flask request's, holding the app): nothing of the watchdog's may keep it."""
    request_var: contextvars.ContextVar[object] = contextvars.ContextVar("request")
    request = type("Request", (), {})()
    gone = weakref.ref(request)
    runner = loop_runner_factory(block_warning=THRESHOLD)

    def first_call(value: object) -> None:
        request_var.set(value)
        runner.run(anyio.sleep, 0.02)  # starts the loop and its watchdog; beats come

    try:
        contextvars.Context().run(first_call, request)
        del request
        gc.collect()
        assert gone() is None
    finally:
        runner.close()


@watched
def test_a_loop_thread_that_dies_takes_its_watchdog_with_it(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    before = set(threading.enumerate())
    runner = loop_runner_factory(block_warning=THRESHOLD)
    runner.run(anyio.sleep, 0)
    (loop_thread,) = [
        t for t in set(threading.enumerate()) - before if not t.name.endswith("-watchdog")
    ]

    async def kill() -> None:
        soon_on_this_loop(sys.exit)  # SystemExit from a bare callback ends the loop

    try:
        runner.spawn(kill)
        loop_thread.join(10)
        assert not loop_thread.is_alive()
        wait_for(lambda: not set(threading.enumerate()) - before)
        assert [t.name for t in set(threading.enumerate()) - before] == []
    finally:
        runner.close()


@pytest.mark.loopshim_scopes("process")
def test_switched_off_nothing_is_watched(
    loop_runner_factory: LoopRunnerFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="loopshim")
    hooked: list[object] = []  # a library's watch_loop is called from _install alone
    monkeypatch.setattr(_watchdog.BlockWatchdog, "_install", lambda self: hooked.append(self))
    before = set(threading.enumerate())
    runner = loop_runner_factory(block_warning=None)
    runner.run(blocks_at_once, 0.6, [])  # longer than the 0.5 s default
    watching = [t.name for t in set(threading.enumerate()) - before if "-watchdog" in t.name]
    runner.close()
    assert hooked == []
    assert watching == []
    assert messages(caplog, logging.DEBUG) == []


# The loop's records, on a clock of the test's.


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(_activity, "_monotonic", lambda: now[0])
    return now


def test_beats_place_a_block_between_the_last_beat_and_the_next_due(clock: list[float]) -> None:
    """With beats, a spell starts midway between the last beat and the moment the next
    was due, and ends at the first beat after it; the loop reports every spell of at
    least the threshold, and no shorter one."""
    ended: list[tuple[float, float]] = []
    activity = LoopActivity(1.0, lambda start, end: ended.append((start, end)))
    beat, interval = activity.beats()
    assert interval == pytest.approx(0.1)
    beat()  # at 100.0: the next is due at 100.1
    clock[0] = 100.05
    assert activity.busy_start(clock[0]) is None  # not late yet
    clock[0] = 100.6
    assert activity.busy_start(clock[0]) == pytest.approx(100.05)  # late: busy since then
    clock[0] = 101.0
    beat()  # a spell of 0.95 s: under the threshold
    assert ended == []
    clock[0] = 102.3
    assert activity.busy_start(clock[0]) == pytest.approx(101.05)
    beat()
    [(start, end)] = ended
    assert start == pytest.approx(101.05)
    assert end == 102.3
    assert activity.busy_start(102.35) is None


def test_waits_measure_a_block_from_the_wake_to_the_next_wait(clock: list[float]) -> None:
    ended: list[tuple[float, float]] = []
    activity = LoopActivity(1.0, lambda start, end: ended.append((start, end)))
    timeouts: list[float | None] = []

    def select(timeout: float | None) -> list[object]:
        timeouts.append(timeout)
        assert activity.busy_start(clock[0]) is None  # waiting is not being busy
        clock[0] += 5.0  # however long it waits
        return []

    select_and_report = activity.wrap_wait(select)
    assert activity.busy_start(clock[0]) == 100.0  # hooked from a callback: busy
    clock[0] = 100.5
    select_and_report(None)  # a spell of 0.5 s ends: under the threshold
    assert activity.busy_start(clock[0]) == 105.5  # woke at 105.5
    clock[0] = 107.0
    select_and_report(0.0)
    assert timeouts == [None, 0.0]
    assert ended == [(105.5, 107.0)]  # exactly: from the wake to the next wait


def test_the_pair_of_hooks_measures_as_the_wrapped_wait(clock: list[float]) -> None:
    ended: list[tuple[float, float]] = []
    activity = LoopActivity(1.0, lambda start, end: ended.append((start, end)))
    waiting, woke = activity.waits()
    assert activity.busy_start(clock[0]) == 100.0
    clock[0] = 101.5
    waiting(None)
    assert activity.busy_start(clock[0]) is None
    clock[0] = 150.0
    woke(None)
    clock[0] = 150.2
    waiting(0.0)
    assert ended == [(100.0, 101.5)]


def test_wakes_measure_a_block_from_one_mark_to_the_next(clock: list[float]) -> None:
    """With wakes, a spell runs from one mark (a wake, or the timer's) to the next: the
    loop reports it if it lasted the threshold."""
    ended: list[tuple[float, float]] = []
    activity = LoopActivity(1.0, lambda start, end: ended.append((start, end)))
    mark, interval = activity.wakes()
    assert interval == pytest.approx(0.1)
    assert activity.busy_start(clock[0]) == 100.0  # hooked from a callback: marked
    clock[0] = 100.1
    mark(0.1)  # the timer woke it: 0.1 s, not reported
    clock[0] = 101.6
    assert activity.busy_start(clock[0]) == 100.1
    mark(0.0)
    assert ended == [(100.1, 101.6)]
    assert activity.busy_start(101.7) == 101.6


def test_under_gevent_a_block_is_reported() -> None:
    pytest.importorskip("gevent")
    script = "from gevent import monkey\nmonkey.patch_all()\n" + textwrap.dedent("""
        import json, logging, time
        import loopshim

        records = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())
        logging.getLogger("loopshim").addHandler(handler)

        async def blocks():
            time.sleep(0.3)

        runner = loopshim.get_runner("asyncio", cached=False, block_warning=0.1)
        runner.run(blocks)
        deadline = time.monotonic() + 10
        while len(records) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        runner.close()
        print(json.dumps(records))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(records) == 2, records
    assert "has been blocked for more than 0.1 s by __main__.blocks (<string>:" in records[0]
    assert "responsive again after being blocked for 0.3" in records[1]
