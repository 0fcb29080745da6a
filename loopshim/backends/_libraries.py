"""The async libraries loopshim knows without being asked: asyncio (which uvloop runs
too) and trio. Importing this module imports neither trio nor sniffio: a trio loop can
only be running if trio was imported already."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
from asyncio import _get_running_loop
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from .._core import (
    CANCEL_GRACE,
    AsyncEvent,
    Canceller,
    Job,
    Library,
    LoopActivity,
    machinery_of,
    register_library,
)

__all__ = ["ASYNCIO", "TRIO", "AsyncioLibrary", "TrioLibrary", "abandon", "is_abandoned"]


class AsyncioLibrary(Library):
    """asyncio, and the loops that implement its interface (uvloop)."""

    name = "asyncio"

    def running(self) -> bool:
        return _get_running_loop() is not None

    def running_check(self) -> Callable[[], object]:
        return _get_running_loop

    def current_loop_key(self) -> object | None:
        return _get_running_loop()

    def new_event(self) -> AsyncEvent:
        return asyncio.Event()

    async def within(self, seconds: float, fn: Callable[[], Awaitable[object]]) -> bool:
        """Await ``fn()`` for up to *seconds*; then cancel it and, if it still does not
        finish within :data:`CANCEL_GRACE`, abandon it. Whether it finished in time."""
        task = asyncio.ensure_future(fn())
        # Most have nothing to wait for (no async generator, no loop-local value): one
        # loop iteration ends them, without asyncio.wait's timer and callbacks.
        await asyncio.sleep(0)
        if not task.done():
            await asyncio.wait({task}, timeout=seconds)
        if task.done():
            task.result()  # its exception, if any, is the caller's to log
            return True
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
        if not done:
            abandon([task])
        return False

    def start_task(
        self, fn: Callable[[], Awaitable[object]], *, context: contextvars.Context, name: str
    ) -> Callable[[], object]:
        loop = asyncio.get_running_loop()
        task = context.run(loop.create_task, _await(fn), name=name)
        return task.cancel

    async def within_timeout(self, job: Job[Any]) -> Any:
        return await _with_timeout(job)

    def waiter(
        self,
    ) -> tuple[Callable[[], object], Callable[[Callable[[], object]], Awaitable[None]]]:
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the waiting loop is closed
                loop.call_soon_threadsafe(_resolve, woken)

        async def wait(on_cancel: Callable[[], object]) -> None:
            try:
                await asyncio.shield(woken)
            except asyncio.CancelledError:
                on_cancel()
                while not woken.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(woken)
                raise

        return wake, wait

    def canceller(self) -> Canceller:
        return _TaskCanceller()

    def machinery(self) -> tuple[str, ...]:
        return machinery_of(asyncio)

    def watch_loop(self, activity: LoopActivity) -> None:
        """A loop with a Python selector (asyncio's own, but for the proactor) reports
        its waits: that selector's ``select`` is wrapped, on that instance alone. On
        the others (uvloop, whose wait is in libuv) a timer beats."""
        loop = asyncio.get_running_loop()
        selector = getattr(loop, "_selector", None)
        select = getattr(selector, "select", None)
        if callable(select) and hasattr(selector, "__dict__"):
            vars(selector)["select"] = activity.wrap_wait(select)
            return
        beat, interval = activity.beats()
        empty = contextvars.Context()  # the timer must keep no caller's context alive

        def beat_and_again() -> None:
            beat()
            loop.call_later(interval, beat_and_again, context=empty)

        beat_and_again()


class _TaskCanceller(Canceller):
    """asyncio: cancels the task itself (no scope to enter: asyncio has none), and takes
    the cancellation request back when the block is left (``Task.uncancel``), so that
    the task does not count as cancelled afterwards."""

    __slots__ = ("cancelled", "task")

    def __enter__(self) -> Canceller:
        self.task = asyncio.current_task()
        self.cancelled = False
        return self

    def __exit__(self, *exc_info: object) -> None:
        task, self.task = self.task, None
        if self.cancelled and task is not None and sys.version_info >= (3, 11):
            task.uncancel()

    def cancel(self) -> None:
        task = getattr(self, "task", None)
        if task is not None and not self.cancelled:
            self.cancelled = True
            task.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


if sys.version_info >= (3, 11):

    async def _with_timeout(job: Job[Any]) -> Any:
        """Await the job's coroutine in this task, cancelled after the job's timeout."""
        assert job.timeout is not None
        try:
            async with asyncio.timeout(job.timeout) as deadline:
                return await job.awaitable()
        except TimeoutError as exc:
            if deadline.expired():
                raise job.cancelled_error(exc) from None
            raise

else:

    async def _with_timeout(job: Job[Any]) -> Any:
        """Await the job's coroutine in this task, cancelled after the job's timeout."""
        assert job.timeout is not None
        task = asyncio.current_task()
        assert task is not None
        fired: list[bool] = []

        def expire() -> None:
            fired.append(True)
            task.cancel()

        timer = asyncio.get_running_loop().call_later(job.timeout, expire)
        try:
            return await job.awaitable()
        except asyncio.CancelledError as exc:
            if fired:
                raise job.cancelled_error(exc) from None
            raise
        finally:
            timer.cancel()


async def _await(fn: Callable[[], Awaitable[object]]) -> object:
    return await fn()


def abandon(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Give up on *tasks* that ignore cancellation, without asyncio logging each as
    "destroyed but pending" whenever the garbage collector gets to it (the caller logs
    them once)."""
    for task in tasks:
        task._log_destroy_pending = False  # type: ignore[attr-defined]


def is_abandoned(task: asyncio.Future[Any]) -> bool:
    """Whether :func:`abandon` gave up on *task*."""
    return not getattr(task, "_log_destroy_pending", True)


class TrioLibrary(Library):
    """trio."""

    name = "trio"

    def __init__(self) -> None:
        #: sniffio's thread-local, once trio (which imports sniffio) is imported.
        self._sniffio_local: Any = None

    def running(self) -> bool:
        # trio marks every run (trio.run, guest mode, loopshim's driver) in sniffio's
        # thread-local for its whole duration; reading that is much cheaper than
        # trio.lowlevel.in_trio_task(), which raises and catches an AttributeError
        # whenever the answer is no. Asked on every call.
        local = self._sniffio_local
        if local is None:
            # trio may be half imported, by another thread, without sniffio yet.
            sniffio = sys.modules.get("sniffio") if "trio" in sys.modules else None
            if sniffio is None:
                return False
            local = self._sniffio_local = sniffio.thread_local
        return local.name == "trio"  # type: ignore[no-any-return]

    def current_loop_key(self) -> object | None:
        trio = sys.modules.get("trio")
        if trio is not None and trio.lowlevel.in_trio_task():
            return trio.lowlevel.current_trio_token()  # type: ignore[no-any-return]
        return None

    def new_event(self) -> AsyncEvent:
        import trio

        return trio.Event()

    async def within(self, seconds: float, fn: Callable[[], Awaitable[object]]) -> bool:
        """Await ``fn()`` for up to *seconds*, then cancel it; whether it finished in
        time. (trio cannot abandon a task: one that shields itself forever is waited
        for.)"""
        import trio

        with trio.move_on_after(seconds) as scope:
            await fn()
        return not scope.cancelled_caught

    def start_task(
        self, fn: Callable[[], Awaitable[object]], *, context: contextvars.Context, name: str
    ) -> Callable[[], object]:
        import trio

        scope = trio.CancelScope()

        async def in_scope() -> None:
            with scope:
                await fn()

        trio.lowlevel.spawn_system_task(in_scope, context=context, name=name)
        return scope.cancel

    async def within_timeout(self, job: Job[Any]) -> Any:
        import trio

        assert job.timeout is not None
        with trio.move_on_after(job.timeout):
            return await job.awaitable()
        raise job.cancelled_error(None)  # reached only when the deadline cancelled it

    def waiter(
        self,
    ) -> tuple[Callable[[], object], Callable[[Callable[[], object]], Awaitable[None]]]:
        import trio

        token = trio.lowlevel.current_trio_token()
        woken = trio.Event()

        def wake() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(woken.set)

        async def wait(on_cancel: Callable[[], object]) -> None:
            try:
                await woken.wait()
            except trio.Cancelled:
                on_cancel()
                with trio.CancelScope(shield=True):
                    await woken.wait()
                raise

        return wake, wait

    def canceller(self) -> Canceller:
        import trio

        return trio.CancelScope()  # type: ignore[return-value]

    def machinery(self) -> tuple[str, ...]:
        return machinery_of(*(sys.modules[m] for m in _TRIO_MACHINERY if m in sys.modules))

    def watch_loop(self, activity: LoopActivity) -> None:
        """trio reports its wakes: an instrument's ``after_io_wait`` hook (called once
        per loop iteration) marks them, and so does a system task every beat interval,
        which bounds the waits. (A ``before_io_wait`` hook too would cost another call
        per iteration, trio's call of a hook costing more than the hook; hooks around
        each task step would cost two calls for every step. A timer alone would miss
        the end of a block when another task blocks in the next batch before the
        timer's task.)"""
        import trio

        mark, interval = activity.wakes()

        class MarkWakes(trio.abc.Instrument):
            # The hook itself, not a method calling it: trio calls it at every iteration.
            after_io_wait = staticmethod(mark)

        async def mark_forever() -> None:
            while True:
                await trio.sleep(interval)
                mark()

        trio.lowlevel.add_instrument(MarkWakes())
        trio.lowlevel.spawn_system_task(mark_forever, name="loopshim-watchdog-beat")


_TRIO_MACHINERY: Final = ("trio", "outcome", "sniffio")

ASYNCIO: Final = register_library(AsyncioLibrary())
TRIO: Final = register_library(TrioLibrary())
