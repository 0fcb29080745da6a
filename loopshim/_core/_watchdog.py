"""Noticing a coroutine that blocks a ``process``-scope loop (``time.sleep`` or other
blocking code in ``async def``), which stalls every caller of that runner.

The loop thread measures its busy spells itself (:class:`~._activity.LoopActivity`) and
reports the end of every one of at least the ``block_warning`` threshold, with its
start and end. A watchdog thread names the culprit. It reads the loop's record every
eighth of the threshold; each time it finds the loop busy for longer than that, it takes
the loop thread's stack (a few microseconds) and keeps the frames that are neither
loopshim's, the library's nor the standard library's machinery: the user's coroutine
and the line where it is stuck. It looks again at a quarter, a half and the whole
threshold, then warns, naming the stack it saw most often; when the loop reports the
end, it logs the measured duration.

A watchdog held up past the threshold (a loaded machine) warns when the end is
reported, with the stack it saw while the spell lasted. A spell with nothing of the
callers' on the stack (the library's own work, or an idle loop whose timer was late) is
blamed on no one, at DEBUG level. One the watchdog did not get to look at in time is
logged at INFO level, without a culprit: the process was starved of CPU, or stopped.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import gc
import os
import selectors
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType, ModuleType
from typing import Final, Protocol

from . import _gevent
from ._activity import LoopActivity, clamp
from ._log import logger

__all__ = ["BlockWatchdog", "Watchable", "Watched"]

#: How long stopping waits for the watchdog thread (it wakes at once when told to stop).
_JOIN_GRACE: Final = 5.0
#: Fractions of the threshold: how often the watchdog reads the loop's record while the
#: loop is idle or briefly busy; the age from which it takes a spell's stack (longer
#: than a beat interval: an idle loop that marks its wakes has spells that young); the
#: ages at which it takes it again (the last: warn); how often after that while the
#: stack shows nothing of the callers'.
_POLL: Final = 0.125
_LOOK_FROM: Final = 0.125
_LOOK_AT: Final = (0.25, 0.5, 1.0)
_RELOOK: Final = 0.1
#: How many spells the watchdog remembers having looked at, of how many it keeps the
#: stacks until their end is reported, and how many stacks of each; how many of a
#: stack's innermost user frames a warning shows.
_KEPT_LOOKS: Final = 8
_KEPT_SPELLS: Final = 4
_KEPT_SAMPLES: Final = 8
_SHOWN_FRAMES: Final = 8

#: Where blocking code belongs, by library.
_ADVICE: Final = {
    "asyncio": "asyncio.to_thread, or anyio.to_thread.run_sync",
    "trio": "trio.to_thread.run_sync, or anyio.to_thread.run_sync",
}


class Watched(Protocol):
    """The loop thread a watchdog watches."""

    @property
    def name(self) -> str: ...

    @property
    def ident(self) -> int | None: ...

    shutting_down: bool

    @property
    def alive(self) -> bool: ...

    def call_soon(self, callback: Callable[[], object]) -> None: ...


class Watchable(Protocol):
    """The loop's library, which hooks a :class:`LoopActivity` into the loop."""

    name: str

    def watch_loop(self, activity: LoopActivity) -> None: ...


# The stack of the loop thread.


def _directory_of(module: ModuleType) -> str:
    return os.path.dirname(module.__file__ or "") + os.sep


#: Frames from these directories or files are machinery, not the callers' code, whatever
#: the library: loopshim itself and the standard library's threads and selectors.
_MACHINERY: Final = (
    os.path.dirname(os.path.dirname(__file__)) + os.sep,
    _directory_of(concurrent.futures),
    contextlib.__file__,
    selectors.__file__,
    threading.__file__,
)


def _gevent_machinery() -> tuple[str, ...]:
    """gevent's and greenlet's directories, if they are imported."""
    modules = [sys.modules.get(name) for name in ("gevent", "greenlet")]
    return tuple(_directory_of(m) for m in modules if m is not None and m.__file__)


def _user_frames(frame: FrameType | None, machinery: tuple[str, ...]) -> list[FrameType]:
    """The frames of the stack ending at *frame* that are not machinery, outermost first."""
    stack = []
    while frame is not None:
        stack.append(frame)
        frame = frame.f_back
    stack.reverse()
    return [f for f in stack if not f.f_code.co_filename.startswith(machinery)]


def _beneath_a_hub(frame: FrameType | None) -> FrameType | None:
    """Under gevent's patching, a blocking call made cooperative (``time.sleep``)
    switches the loop thread to its hub greenlet, which waits in its own loop: the
    callers' frames are then those of the greenlet the hub will return to."""
    hub = sys.modules.get("gevent.hub")
    run = getattr(getattr(getattr(hub, "Hub", None), "run", None), "__code__", None)
    if run is None:
        return frame
    found = frame
    while found is not None and found.f_code is not run:
        found = found.f_back
    if found is None:
        return frame
    parent = getattr(found.f_locals.get("self"), "parent", None)
    suspended: FrameType | None = getattr(parent, "gr_frame", None)
    return suspended if suspended is not None else frame


#: Before Python 3.11, the qualified names found for code objects (see _qualname).
_qualnames: weakref.WeakKeyDictionary[CodeType, str] = weakref.WeakKeyDictionary()


def _qualname(frame: FrameType) -> str:
    code = frame.f_code
    qualname: str | None = getattr(code, "co_qualname", None)  # Python 3.11+
    if qualname is not None:
        return qualname
    known = _qualnames.get(code)
    if known is None:
        # A code object knows only its short name, but the coroutine or generator running
        # the frame knows its qualified one: searched once per code object.
        known = code.co_name
        for holder in gc.get_referrers(frame):
            if frame in (getattr(holder, "cr_frame", None), getattr(holder, "gi_frame", None)):
                known = str(holder.__qualname__)
                break
        _qualnames[code] = known
    return known


@dataclass(frozen=True)
class _Sample:
    """The callers' part of the loop thread's stack, seen during one busy spell (no frame
    is kept: the frames run on)."""

    #: The spell's start (its identity).
    start: float
    #: The outermost frame that is the callers': ``module.function (file:line)``.
    culprit: str
    #: The innermost user frames, innermost last.
    stack: traceback.StackSummary

    @property
    def where(self) -> tuple[str, int | None]:
        """The culprit and the line of the innermost frame: what the sample shows."""
        return self.culprit, self.stack[-1].lineno

    @classmethod
    def of(cls, start: float, user: list[FrameType]) -> _Sample:
        """The sample for the user frames *user* (outermost first, not empty)."""
        outer = user[0]
        module = outer.f_globals.get("__name__", "?")
        culprit = f"{module}.{_qualname(outer)} ({outer.f_code.co_filename}:{outer.f_lineno})"
        # Source lines are read when a warning is formatted, not on the watchdog's clock.
        stack = traceback.StackSummary.extract(
            ((f, f.f_lineno) for f in user[-_SHOWN_FRAMES:]), lookup_lines=False
        )
        return cls(start, culprit, stack)


class _Signal:
    """A reusable wake-up across OS threads, on a native lock (gevent's patching does not
    reach it): ``set()`` from any thread; ``wait()`` says whether it was set, and resets it."""

    def __init__(self) -> None:
        self._lock = _gevent.native_lock()
        self._lock.acquire()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # set already
            self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=clamp(timeout))


class BlockWatchdog:
    """Watches one loop thread; started after the loop is ready, stopped at close."""

    def __init__(
        self,
        loop_thread: Watched,
        threshold: float,
        machinery: tuple[str, ...],
        library: Watchable,
    ) -> None:
        self.loop_thread = loop_thread
        self.threshold = threshold
        self.library = library
        self.machinery = _MACHINERY + machinery + _gevent_machinery()
        self.activity = LoopActivity(threshold, self._loop_reports_end)
        self._poll = clamp(threshold * _POLL)
        self._signal = _Signal()
        self._stopping = False
        self._installed = False
        #: The spells of at least the threshold whose end the loop reported: (start, end).
        self._ended: collections.deque[tuple[float, float]] = collections.deque(maxlen=64)
        #: The spells looked at lately, by start: the age of each at the last look.
        self._looked: dict[float, float] = {}
        #: The stacks showing the callers' code, of recent spells, by start.
        self._samples: dict[float, list[_Sample]] = {}
        #: What the warning about the current spell named, until its end is reported.
        self._reported: _Sample | None = None
        self._thread = _gevent.new_thread(self._watch, f"{loop_thread.name}-watchdog")
        self._started = False

    def start(self) -> None:
        """Have the loop hook itself in (posted now, so before any job) and start watching."""
        try:
            # In a context of its own: the hook may keep it (a timer's), and the current
            # one is the first caller's (a Flask request's, holding the app).
            contextvars.Context().run(self.loop_thread.call_soon, self._install)
        except Exception:  # the loop has ended already
            return
        self._thread.start()
        self._started = True

    def stop(self) -> None:
        """Tell the watchdog thread to end (from any thread; it wakes at once)."""
        self._stopping = True
        self._signal.set()

    def join(self) -> None:
        """Wait (bounded) for the watchdog thread to end, after :meth:`stop`."""
        if self._started:
            self._thread.join(_JOIN_GRACE)

    # On the loop thread.

    def _install(self) -> None:
        try:
            self.library.watch_loop(self.activity)
        except Exception:
            logger.exception(
                "the %s library could not hook the blocked-loop watchdog into its loop; "
                "probing the loop instead",
                self.library.name,
            )
            self.activity.mode = None
        if self.activity.mode is None:
            self.activity.last_beat = self.activity.due = time.monotonic()
        self._installed = True
        self._signal.set()

    def _loop_reports_end(self, start: float, end: float) -> None:
        self._ended.append((start, end))
        self._signal.set()

    # On the watchdog thread.

    def _watch(self) -> None:
        if not self._wait_until_installed():
            return
        try:
            while not self._stopping and self.loop_thread.alive:
                self._take_ended()
                nap = self._next_nap(time.monotonic())
                if nap is None:
                    return
                if nap > 0:
                    self._signal.wait(nap)
        finally:
            # A block warned about may have ended just before the loop stopped.
            self._take_ended()

    def _wait_until_installed(self) -> bool:
        while not self._installed:
            if self._stopping or not self.loop_thread.alive:
                return False
            self._signal.wait(self._poll)
        return True

    def _take_ended(self) -> None:
        while self._ended:
            self._spell_ended(*self._ended.popleft())

    def _next_nap(self, now: float) -> float | None:
        """Look at the loop, and probe it if it is probed: how long to sleep until the
        next look or probe (None once the loop has ended)."""
        nap = self._look(now)
        if self.activity.mode is not None:
            return nap
        probe_in = self._probe(now)
        return None if probe_in is None else min(nap, probe_in)

    def _probe(self, now: float) -> float | None:
        """Post a probe if the last one was answered and the next is due: how long until
        the next is due (None once the loop has ended)."""
        activity = self.activity
        if activity.due > activity.last_beat:
            return self._poll  # unanswered: the loop is busy, and its answer ends the spell
        next_at = activity.last_beat + activity.beat_interval
        if now < next_at:
            return next_at - now
        activity.due = now
        try:
            self.loop_thread.call_soon(activity.beat)
        except Exception:
            return None
        return activity.beat_interval

    def _look(self, now: float) -> float:
        """Look at the loop's current busy spell: how long to sleep until the next look."""
        start = None if self.loop_thread.shutting_down else self.activity.busy_start(now)
        if start is None or (self._reported is not None and self._reported.start == start):
            return self._poll
        age = now - start
        if age < self.threshold * _LOOK_FROM:
            return self.threshold * _LOOK_FROM - age
        # Every look takes the stack: the more looks, the better the chance of seeing the
        # spell on a machine that starves this thread of CPU.
        sample, current = self._sample(start)
        if not current:
            return 0.0  # the spell ended while the stack was taken: its end comes next
        self._remember(start, age, sample)
        if age < self.threshold:
            return min(f * self.threshold for f in _LOOK_AT if f * self.threshold > age) - age
        return self._warn_at_threshold(start)

    def _sample(self, start: float) -> tuple[_Sample | None, bool]:
        """The loop thread's stack now, if it shows the callers' code; and whether the
        spell that began at *start* was still going on after it was taken."""
        ident = self.loop_thread.ident
        frame = sys._current_frames().get(ident) if ident is not None else None
        user = _user_frames(_beneath_a_hub(frame), self.machinery)
        del frame
        sample = _Sample.of(start, user) if user else None
        return sample, self.activity.busy_start(time.monotonic()) == start

    def _remember(self, start: float, age: float, sample: _Sample | None) -> None:
        self._looked[start] = age
        while len(self._looked) > _KEPT_LOOKS:
            del self._looked[next(iter(self._looked))]
        if sample is None:
            return
        samples = self._samples.pop(start, [])
        samples.append(sample)
        self._samples[start] = samples[-_KEPT_SAMPLES:]
        while len(self._samples) > _KEPT_SPELLS:
            del self._samples[next(iter(self._samples))]

    def _warn_at_threshold(self, start: float) -> float:
        sample = self._culprit(start)
        if sample is None:
            return self.threshold * _RELOOK  # nothing of the callers' on the stack (yet)
        self._reported = sample
        self._warn(sample, None)
        return self._poll

    def _culprit(self, start: float, *, forget: bool = False) -> _Sample | None:
        """The stack seen most often during the spell that began at *start*, the latest of
        those seen as often: where the loop spent its time. (A look that comes once a
        block holding the GIL lets go of it sees the line after the block.)"""
        samples = self._samples.pop(start, None) if forget else self._samples.get(start)
        if not samples:
            return None
        counts = collections.Counter(s.where for s in samples)
        return max(reversed(samples), key=lambda s: counts[s.where])

    def _spell_ended(self, start: float, end: float) -> None:
        """The loop reports the end of a spell of at least the threshold."""
        reported = self._reported
        sample = self._culprit(start, forget=True)
        last_look = self._looked.pop(start, None)
        if reported is not None and reported.start == start:
            self._reported = None
            self._responsive(reported, end - start)
        elif self.loop_thread.shutting_down or self._stopping:
            pass
        elif sample is not None:
            # The watchdog was held up past the threshold; it saw the stack while the
            # spell lasted, and the loop measured the spell.
            self._warn(sample, end - start)
            self._responsive(sample, end - start)
        elif last_look is not None and last_look >= self.threshold:
            logger.debug(
                "the %s loop was busy for %.3f s with nothing of its callers' on its stack "
                "when the watchdog looked (its timer was late, the thread was starved of "
                "CPU, or the library was at work): not reported",
                self.loop_thread.name,
                end - start,
            )
        else:
            # A block lets go of the GIL, at the latest when the watchdog asks for it; a
            # starved or stopped process is what keeps the watchdog from looking.
            logger.info(
                "the %s loop did not come back to its wait for events for %.3f s, and "
                "the watchdog thread did not get to run in that time to see what it was "
                "running: the machine is overloaded, or the process was stopped",
                self.loop_thread.name,
                end - start,
            )

    def _warn(self, sample: _Sample, lasted: float | None) -> None:
        advice = _ADVICE.get(self.library.name, "anyio.to_thread.run_sync")
        stack = "".join(sample.stack.format()).rstrip("\n")
        if lasted is None:
            logger.warning(
                "the %s loop has been blocked for more than %g s by %s: every call on this "
                "runner waits until it yields. Blocking code in async functions belongs in a "
                "worker thread (%s). It is at:\n%s",
                self.loop_thread.name,
                self.threshold,
                sample.culprit,
                advice,
                stack,
            )
        else:
            logger.warning(
                "the %s loop was blocked for %.3f s by %s: every call on this runner waited "
                "until it yielded. Blocking code in async functions belongs in a worker "
                "thread (%s). It was at:\n%s",
                self.loop_thread.name,
                lasted,
                sample.culprit,
                advice,
                stack,
            )

    def _responsive(self, sample: _Sample, lasted: float) -> None:
        logger.warning(
            "the %s loop is responsive again after being blocked for %.3f s by %s",
            self.loop_thread.name,
            lasted,
            sample.culprit,
        )
