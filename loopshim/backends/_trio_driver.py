"""A trio run kept alive in one thread and driven only while a call runs.

This is the one place where loopshim reaches into trio's internals: trio's public API
has no way to suspend a run in the calling thread between two calls (guest mode with
that thread as host costs a hop through trio's I/O thread on every call, about ten
times slower). The pieces used are those guest mode itself is built from:
``setup_runner``, the ``unrolled_run`` generator and ``GLOBAL_RUN_CONTEXT``.
:func:`supported` checks the trio version and the shape of those pieces; when it says
no, the trio backend uses public API only (``driver="public"``): a fresh ``trio.run``
per call.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

import sniffio
import trio

from .._core import CancelReason, DrivenLoop, Job, LoopState
from .._errors import LoopError
from . import _interrupts
from ._interrupts import InterruptGuard
from ._libraries import TRIO

#: trio versions this driver was written and tested against: [first, last).
TESTED_VERSIONS: Final = ((0, 25), (0, 36))
#: What trio's I/O manager reports when no I/O is ready: a count of completions on
#: Windows, a sequence of events elsewhere.
_NO_EVENTS: Final[Any] = 0 if sys.platform == "win32" else ()


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def supported() -> bool:
    """Whether this trio has the internals the driver was written against."""
    if not (TESTED_VERSIONS[0] <= _version(trio.__version__) < TESTED_VERSIONS[1]):
        return False
    try:
        from trio._core import _run
    except ImportError:
        return False
    if not all(hasattr(_run, n) for n in ("setup_runner", "unrolled_run", "GLOBAL_RUN_CONTEXT")):
        return False
    setup = list(inspect.signature(_run.setup_runner).parameters)
    unrolled = inspect.signature(_run.unrolled_run).parameters
    return (
        setup
        == [
            "clock",
            "instruments",
            "restrict_keyboard_interrupt_to_checkpoints",
            "strict_exception_groups",
        ]
        and "host_uses_signal_set_wakeup_fd" in unrolled
    )


class TrioDrivenLoop(DrivenLoop):
    """One trio run per thread, suspended between calls.

    Between calls the thread is not "inside" the run: trio's run context, the
    async-generator hooks and sniffio's marker are swapped in for the duration of each
    call only, so ``trio.run`` and other loops keep working in the same thread. trio's
    SIGINT handler is not installed: between calls Ctrl-C raises ``KeyboardInterrupt``
    as usual; during a call in the main thread it cancels the call, which unwinds, then
    raises (see ``_interrupts``).
    """

    def __init__(
        self,
        execute: Callable[[Job[Any]], Any],
        instruments: Sequence[trio.abc.Instrument],
        *,
        main_thread: bool = False,
    ) -> None:
        from trio._core import _run

        super().__init__()
        self._execute = execute
        #: Driven by the main thread, where Ctrl-C lands.
        self._main_thread = main_thread
        self._context = _run.GLOBAL_RUN_CONTEXT
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._state = LoopState(TRIO)
        outer_hooks = sys.get_asyncgen_hooks()
        try:
            # trio copies the current context as the run's system context (for system
            # tasks and callbacks); it must not be the first caller's, a request's.
            self._runner = contextvars.Context().run(
                _run.setup_runner, None, instruments, False, True
            )
            # Keep Python's own SIGINT behaviour between and during calls.
            self._runner.ki_manager.close()
            self._hooks = sys.get_asyncgen_hooks()
            self._gen = _run.unrolled_run(
                self._runner, self._main, (), host_uses_signal_set_wakeup_fd=True
            )
            self._timeout = self._gen.send(None)  # type: ignore[arg-type]
            self._drive(lambda: self._stop is not None)
        finally:
            self._context.__dict__.pop("runner", None)
            sys.set_asyncgen_hooks(*outer_hooks)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._state.attach(self._token)
        self._stop = trio.Event()
        await self._stop.wait()
        await self._state.aclose()

    def _drive(self, done: Callable[[], bool]) -> None:
        gen = self._gen
        get_events = self._runner.io_manager.get_events
        timeout = 0.0
        while not done():
            try:
                timeout = gen.send(get_events(timeout))
            except StopIteration:
                return

    def _enter(self) -> tuple[Any, Any, Any]:
        # The previous run context is kept in case this thread is closing another
        # thread's loop from inside a run of its own.
        outer = sys.get_asyncgen_hooks(), sniffio.thread_local.name, self._context.__dict__.copy()
        self._context.runner = self._runner
        sys.set_asyncgen_hooks(*self._hooks)
        sniffio.thread_local.name = "trio"
        return outer

    def _leave(self, outer: tuple[Any, Any, Any]) -> None:
        self._context.__dict__.clear()
        self._context.__dict__.update(outer[2])
        sys.set_asyncgen_hooks(*outer[0])
        sniffio.thread_local.name = outer[1]

    def run_job(self, job: Job[Any]) -> None:
        guard = _interrupts.guard() if self._main_thread else None
        if guard is not None:
            try:
                guard.active = True
                self._run_guarded(job, guard)
            finally:
                guard.active = False
                guard.release()
            return
        outer = self._enter()
        try:
            trio.lowlevel.spawn_system_task(self._execute, job, context=job.context)
            self._drive_job(job)
        finally:
            self._leave(outer)

    def _run_guarded(self, job: Job[Any], guard: InterruptGuard) -> None:
        assert self._token is not None
        outer = self._enter()
        try:
            task = trio.lowlevel.spawn_system_task(self._execute, job, context=job.context)
            guard.arm(
                functools.partial(self._token.run_sync_soon, interrupt_call, job, guard),
                functools.partial(in_task, task),
            )
            self._drive_job(job, guard)
        finally:
            guard.disarm()
            self._leave(outer)

    def _drive_job(self, job: Job[Any], guard: InterruptGuard | None = None) -> None:
        gen = self._gen
        get_events = self._runner.io_manager.get_events
        try:
            # The run waits for I/O events since the last call ended. Hand it none: the
            # job's first step runs at once, without polling first; the I/O that is ready
            # is seen one iteration later, as the job waits.
            timeout = gen.send(_NO_EVENTS)
            if guard is None:
                while not job.done:
                    timeout = gen.send(get_events(timeout))
            else:
                # Until Ctrl-C comes twice: the call stays on the run, cancelled.
                while not (job.done or guard.abandon):
                    timeout = gen.send(get_events(timeout))
        except StopIteration:
            # The run ended under us.
            self.broken = True
            if guard is not None and guard.raised and guard.pending is not None:
                # A second Ctrl-C that landed in the system task's own last lines
                # ended the run with it.
                raise guard.pending from None
            raise LoopError("the trio run ended before the call finished") from None
        except trio.TrioInternalError as exc:
            # An interrupt landed inside trio's scheduler: this run is gone.
            self.broken = True
            if isinstance(exc.__cause__, (KeyboardInterrupt, SystemExit)):
                raise exc.__cause__ from None
            raise
        except BaseException:
            if not job.done and not (guard is not None and guard.abandon):
                job.cancel_reason = CancelReason.INTERRUPTED
                if job.handle is not None:
                    job.handle.cancel()
                self._drive(lambda: job.done)
            raise

    def close(self) -> None:
        # Ctrl-C while the run closes takes effect once it is closed (closing is bounded).
        _interrupts.under_guard(lambda _: self._close())

    def _close(self) -> None:
        outer = self._enter()
        try:
            assert self._stop is not None
            self._stop.set()
            self._drive(lambda: False)  # until the run finishes
        finally:
            self._leave(outer)


def interrupt_call(job: Job[Any], guard: InterruptGuard) -> None:
    """On the run, after Ctrl-C: cancel the call (a second Ctrl-C needs nothing from
    here: the driver stops waiting once the run has woken up)."""
    if guard.driving:
        job.cancel(CancelReason.INTERRUPTED)


def in_task(task: trio.lowlevel.Task) -> bool:
    """Whether *task* is taking a step now (called from the signal handler)."""
    try:
        return trio.lowlevel.current_task() is task
    except RuntimeError:  # no task is
        return False
