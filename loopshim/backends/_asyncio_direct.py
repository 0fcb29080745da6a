"""Driving asyncio's own loop without ``run_until_complete``: every access to
CPython-private parts of asyncio is here, behind :func:`can_drive`.

What a call never needs — a done callback to stop the loop, an I/O poll before the
task's first step or after its last one — is left out. The private pieces used are those
``run_forever`` itself uses; :func:`can_drive` accepts only loops whose running machinery
is asyncio's own ``BaseEventLoop`` (the standard selector loop and subclasses that keep
it; not uvloop, not the Windows proactor loop).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import sys
import threading
from asyncio import events
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Driver", "LoopStopped", "can_drive", "start_eagerly"]


def can_drive(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether :class:`Driver` may drive *loop* itself."""
    base = asyncio.BaseEventLoop
    cls = type(loop)
    return (
        isinstance(loop, base)
        and all(
            getattr(cls, name, None) is getattr(base, name, None)
            for name in ("run_forever", "run_until_complete", "_run_once")
        )
        and isinstance(getattr(loop, "_ready", None), collections.deque)
    )


class LoopStopped(RuntimeError):
    """``loop.stop()`` was called inside a call."""

    def __init__(self) -> None:
        super().__init__("Event loop stopped before the call finished.")


class Driver:
    """Runs one loop that :func:`can_drive` accepts, in the calling thread, for one
    task at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop: Any = loop
        self._hooks = (loop._asyncgen_firstiter_hook, loop._asyncgen_finalizer_hook)  # type: ignore[attr-defined]

    def new_task(
        self, coro: Coroutine[Any, Any, Any], context: contextvars.Context
    ) -> asyncio.Task[Any]:
        """A task for *coro* in *context*; on 3.12+ it takes its first step now (so a
        call that never waits is done when the task is made). A task factory set on the
        loop is honoured. Call it between :meth:`enter` and :meth:`leave`."""
        loop = self.loop
        if loop._task_factory is not None:
            return context.run(loop.create_task, coro)
        if sys.version_info >= (3, 12):
            return asyncio.Task(coro, loop=loop, context=context, eager_start=True)
        if sys.version_info >= (3, 11):
            return asyncio.Task(coro, loop=loop, context=context)
        return context.run(asyncio.Task, coro, loop=loop)

    def run_until(self, done: Callable[[], bool]) -> None:
        """Run what is queued, then full loop iterations (I/O, timers) until *done*,
        then the callbacks the last step queued. Raises :class:`LoopStopped` if the
        loop is stopped first."""
        loop = self.loop
        ready = loop._ready
        if not done():  # what was queued first, then the task's first step
            if loop._stopping:  # stop() in an eager first step
                raise LoopStopped
            _run_ready(ready)
        while not done():
            if loop._stopping:
                raise LoopStopped
            loop._run_once()
        if ready:
            _run_ready(ready)  # callbacks the call's last step scheduled

    def unwind(self, done: Callable[[], bool]) -> None:
        """Run loop iterations until *done*, whatever else happens (a cancelled task
        unwinding after an interrupt)."""
        while not done():
            self.loop._run_once()

    if sys.version_info >= (3, 13):

        def enter(self) -> Any:
            """Make the loop this thread's running loop, as ``run_forever`` does."""
            self.loop._run_forever_setup()

        def leave(self, outer: Any) -> None:
            """Undo :meth:`enter`."""
            self.loop._run_forever_cleanup()

    else:

        def enter(self) -> Any:
            """Make the loop this thread's running loop with its async-generator hooks,
            as ``run_forever`` does on entry. Its checks are left out: only the thread
            that owns the loop drives it, after checking that no loop runs in the
            thread."""
            outer = sys.get_asyncgen_hooks()
            self.loop._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(*self._hooks)
            events._set_running_loop(self.loop)
            return outer

        def leave(self, outer: Any) -> None:
            """Undo :meth:`enter`."""
            loop = self.loop
            loop._stopping = False
            loop._thread_id = None
            events._set_running_loop(None)
            sys.set_asyncgen_hooks(*outer)


def _run_ready(ready: collections.deque[Any]) -> None:
    """One pass over the callbacks queued now, in order, as a loop iteration runs them."""
    for _ in range(len(ready)):
        handle = ready.popleft()
        if not handle._cancelled:
            handle._run()


def start_eagerly(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any],
    context: contextvars.Context,
) -> asyncio.Task[Any]:
    """On asyncio's own running loop, a task whose first step is taken now instead of
    one loop iteration later: a call that never waits finishes within this callback."""
    if loop.get_task_factory() is not None:
        return context.run(loop.create_task, coro)
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, context=context, eager_start=True)
    # Before 3.12 asyncio has no eager tasks; the same effect: make the task, then take
    # its first step — the callback it has just queued — now, unless this runs inside
    # another task (a spawn from a coroutine on the loop).
    task = context.run(loop.create_task, coro)
    ready: collections.deque[Any] = loop._ready  # type: ignore[attr-defined]
    if (
        ready
        and getattr(ready[-1]._callback, "__self__", None) is task
        and asyncio.current_task(loop) is None
    ):
        ready.pop()._run()
    return task
