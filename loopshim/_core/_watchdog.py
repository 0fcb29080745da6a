"""Noticing a coroutine that blocks a ``process``-scope loop (``time.sleep`` or other
blocking code in ``async def``), which stalls every caller of that runner.

A watchdog thread asks the loop to answer a heartbeat; when no answer comes within the
``block_warning`` threshold, it logs a warning naming the coroutine that holds the loop,
with the stack where it is stuck, and logs again once the loop answers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import os
import selectors
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Protocol

from . import _gevent
from ._log import logger


class Watched(Protocol):
    """The loop thread a watchdog watches."""

    @property
    def name(self) -> str: ...

    @property
    def ident(self) -> int | None: ...

    shutting_down: bool

    def call_soon(self, callback: Callable[[], object]) -> None: ...


def _directory_of(module: ModuleType) -> str:
    return os.path.dirname(module.__file__ or "") + os.sep


#: Frames from these directories or files are machinery, not user code, whatever the
#: library: loopshim itself and the standard library's threads and selectors.
_MACHINERY = (
    os.path.dirname(os.path.dirname(__file__)) + os.sep,  # loopshim itself
    _directory_of(concurrent.futures),
    contextlib.__file__,
    selectors.__file__,
    threading.__file__,
)


def describe_blocker(frame: FrameType | None, machinery: tuple[str, ...] = ()) -> tuple[str, str]:
    """The function the loop is running on behalf of its caller, and where it is stuck:
    ``(name, formatted stack)`` for the stack ending at *frame*."""
    stack = []
    while frame is not None:
        stack.append(frame)
        frame = frame.f_back
    stack.reverse()  # outermost first
    skip = _MACHINERY + machinery
    user = [f for f in stack if not f.f_code.co_filename.startswith(skip)]
    if not user:
        return "the loop's own machinery", _format(stack[-8:])
    outer = user[0]
    code = outer.f_code
    name = f"{outer.f_globals.get('__name__', '?')}.{_qualname(outer)}"
    return f"{name} ({code.co_filename}:{outer.f_lineno})", _format(user[-8:])


def _qualname(frame: FrameType) -> str:
    qualname: str | None = getattr(frame.f_code, "co_qualname", None)  # Python 3.11+
    if qualname is not None:
        return qualname
    # Before 3.11 a code object knows only its short name, but the coroutine or generator
    # running the frame knows its qualified one. Searched only when a warning is due.
    for holder in gc.get_referrers(frame):
        if frame in (getattr(holder, "cr_frame", None), getattr(holder, "gi_frame", None)):
            return str(holder.__qualname__)
    return frame.f_code.co_name


def _format(frames: list[FrameType]) -> str:
    summary = traceback.StackSummary.extract((f, f.f_lineno) for f in frames)
    return "".join(summary.format())


class BlockWatchdog:
    """Watches one loop thread; started after the loop is ready, stopped at close."""

    def __init__(self, loop_thread: Watched, threshold: float, machinery: tuple[str, ...]) -> None:
        self.loop_thread = loop_thread
        self.threshold = threshold
        self.machinery = machinery
        self._stopping = _gevent.new_event()
        self._thread = _gevent.new_thread(self._watch, f"{loop_thread.name}-watchdog")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def join(self) -> None:
        self._thread.join(self.threshold + 1)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            beat = _gevent.new_event()
            try:
                self.loop_thread.call_soon(beat.set)
            except Exception:  # the loop has ended
                return
            if not beat.wait(self.threshold):
                self._report(beat)
            self._stopping.wait(self.threshold)

    def _report(self, beat: threading.Event | _gevent.NativeLatch) -> None:
        if self._stopping.is_set() or self.loop_thread.shutting_down:
            return
        started = time.monotonic() - self.threshold
        ident = self.loop_thread.ident
        frame = sys._current_frames().get(ident) if ident is not None else None
        culprit, stack = describe_blocker(frame, self.machinery)
        logger.warning(
            "the %s loop has been blocked for more than %.2f s by %s: every call on this "
            "runner waits until it yields. Blocking code in async functions belongs in a "
            "worker thread (anyio.to_thread.run_sync, asyncio.to_thread). It is at:\n%s",
            self.loop_thread.name,
            self.threshold,
            culprit,
            stack,
        )
        while not beat.wait(self.threshold):
            if self._stopping.is_set():
                return
        logger.warning(
            "the %s loop is responsive again after being blocked for about %.1f s by %s",
            self.loop_thread.name,
            time.monotonic() - started,
            culprit,
        )
