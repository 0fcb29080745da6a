"""The trio backend."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Final

import trio

from .._core import (
    Backend,
    CancelReason,
    DrivenLoop,
    Job,
    JobSet,
    Library,
    LoopState,
    LoopThread,
    add_note,
    close_own_work,
    job_of,
    logger,
    refuse_backend,
    threading_patched,
)
from .._errors import OptionError, RunnerClosed
from .._options import CommonOptions
from . import _interrupts, _trio_driver
from ._interrupts import InterruptGuard
from ._libraries import TRIO

__all__ = [
    "FreshRunLoop",
    "SlowStepLogger",
    "TrioBackend",
    "TrioLoopThread",
    "backend_class",
    "instruments",
    "run_fresh",
]

#: With ``debug=True``, a task step that holds the loop longer than this is logged
#: (asyncio's debug mode does the same for slow callbacks).
SLOW_STEP: Final = 0.1


class SlowStepLogger(trio.abc.Instrument):
    """Logs task steps that block the trio loop for longer than :data:`SLOW_STEP`,
    naming a task of loopshim's after the coroutine its job runs."""

    def __init__(self) -> None:
        self._started = 0.0
        #: The job labels of loopshim's tasks, read when they are spawned (a task's
        #: last step leaves no frame to read them from).
        self._labels: weakref.WeakKeyDictionary[trio.lowlevel.Task, str] = (
            weakref.WeakKeyDictionary()
        )

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        job = job_of(task.coro)
        if job is not None:
            self._labels[task] = job.label

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        elapsed = time.perf_counter() - self._started
        if elapsed > SLOW_STEP:
            name = self._labels.get(task, task.name)
            logger.warning("trio task %s blocked the loop for %.3f s", name, elapsed)


def instruments(options: CommonOptions) -> tuple[trio.abc.Instrument, ...]:
    """The instruments a run gets for *options*."""
    return (SlowStepLogger(),) if options.debug else ()


#: What asyncio-only libraries raise when they find no asyncio loop: asyncio's
#: ``get_running_loop`` / ``get_event_loop``, and psycopg_pool's own wording.
_NO_ASYNCIO_LOOP: Final = re.compile(r"no (running|current) event loop|with no running loop", re.I)
_ASYNCIO_ONLY_NOTE: Final = (
    "loopshim: this ran on the trio backend, and an asyncio-only library looked for an "
    "asyncio event loop and found none. Run this code on the asyncio or uvloop backend "
    '(app.loop_backend = "asyncio", or loopshim.get_runner("asyncio")), or use a '
    "client that supports trio (through anyio)."
)


def _explain_asyncio_only(exc: BaseException) -> BaseException:
    """Attach :data:`_ASYNCIO_ONLY_NOTE` to *exc* when it, or an exception in its
    cause/context chain or group, says that no asyncio loop is running."""
    if _is_missing_asyncio_loop(exc, depth=0):
        notes = getattr(exc, "__notes__", None)
        if not (isinstance(notes, list) and _ASYNCIO_ONLY_NOTE in notes):
            add_note(exc, _ASYNCIO_ONLY_NOTE)
    return exc


def _is_missing_asyncio_loop(exc: BaseException | None, depth: int) -> bool:
    if exc is None or depth > 8:
        return False
    if isinstance(exc, RuntimeError) and _NO_ASYNCIO_LOOP.search(str(exc)):
        return True
    # An exception group (builtin, or the backport's on 3.10) holds its members here.
    members = getattr(exc, "exceptions", None)
    if not isinstance(members, tuple):
        members = ()
    return any(_is_missing_asyncio_loop(e, depth + 1) for e in members) or (
        _is_missing_asyncio_loop(exc.__cause__ or exc.__context__, depth + 1)
    )


async def _execute_unscoped(job: Job[Any]) -> None:
    """For a job nothing outside its coroutine cancels — no timeout, and no Ctrl-C to
    deliver (``trio.run`` delivers it itself; signals never reach a thread other than the
    main one) — no cancel scope is needed, and entering one is a good part of a call's
    cost."""
    if job.timeout is not None:
        await _execute(job)
        return
    try:
        job.result = await job.awaitable()
    except BaseException as exc:
        job.error = _explain_asyncio_only(exc)
    finally:
        job.complete(None)


async def _execute_call(job: Job[Any], jobs: set[Job[Any]]) -> None:
    """A ``process``-scope call that only ``close()`` can cancel — no timeout, and a
    caller other than the main thread, where Ctrl-C would — runs in the loop's nursery
    of such calls, whose cancel scope ``close()`` cancels for all of them at once,
    instead of in a cancel scope of its own: entering and leaving one costs about as
    much as the rest of the call."""
    try:
        job.result = await job.awaitable()
    except trio.Cancelled:
        # close() cancelled the calls still running, or the run itself is ending.
        job.error = job.cancelled_error(None) if job.cancel_reason else _run_ended(job)
    except BaseException as exc:
        job.error = _explain_asyncio_only(exc)
    finally:
        job.complete(jobs)


def _run_ended(job: Job[Any]) -> RunnerClosed:
    return RunnerClosed(f"{job.label} was cancelled because its loop stopped")


async def _execute(job: Job[Any], jobs: set[Job[Any]] | None = None) -> None:
    try:
        with trio.CancelScope() as scope:
            job.handle = scope
            if job.cancel_reason is not None:  # cancelled before it started
                scope.cancel()
            elif job.timeout is not None:
                scope.deadline = trio.current_time() + job.timeout
            job.result = await job.awaitable()
        if scope.cancelled_caught:
            job.error = job.cancelled_error(None)
    except trio.Cancelled:
        # Cancelled from outside our own scope: the run itself is shutting down.
        job.error = _run_ended(job)
    except BaseException as exc:
        job.error = _explain_asyncio_only(exc)
    finally:
        job.complete(jobs)


class FreshRunLoop(DrivenLoop):
    """``thread`` scope with public API only: a fresh ``trio.run`` per call."""

    def __init__(self, options: CommonOptions) -> None:
        super().__init__()
        self._options = options

    def run_job(self, job: Job[Any]) -> None:
        contextvars.Context().run(run_fresh, job, self._options)  # see _run_and_close

    def close(self) -> None:
        pass  # each call's run closed itself


def run_fresh(job: Job[Any], options: CommonOptions) -> None:
    """Run *job* in a ``trio.run`` of its own. In the main thread, Ctrl-C goes through
    loopshim's guard (see ``_interrupts``) instead of trio's own handler, which comes
    too late to cover the run's set-up: interrupted there, the run's file descriptors
    leak."""
    _interrupts.under_guard(
        lambda guard: trio.run(_run_and_close, job, guard, instruments=instruments(options))
    )


async def _run_and_close(job: Job[Any], guard: InterruptGuard | None) -> None:
    # trio.run has no context argument: it runs in an empty context (see _CallScope),
    # and the job's variables are set here, in the main task's own copy.
    for var, value in job.context.items():
        var.set(value)
    state = LoopState(TRIO)
    token = trio.lowlevel.current_trio_token()
    state.attach(token)
    try:
        if guard is None:
            await _execute_unscoped(job)
        else:
            guard.arm(
                functools.partial(token.run_sync_soon, _trio_driver.interrupt_call, job, guard),
                functools.partial(_trio_driver.in_task, trio.lowlevel.current_task()),
            )
            await _execute(job)
    finally:
        if guard is not None:
            guard.disarm()
        if state:
            with trio.CancelScope(shield=True):
                await state.aclose()
        else:
            state.detach()


def _adjust_thread_limiter(by: int) -> None:
    """Change ``trio.to_thread``'s default limiter by *by* tokens (on the run). Never
    raises: it runs as a ``run_sync_soon`` callback, where an exception ends the run
    (and the program may have set the limiter meanwhile)."""
    limiter = trio.to_thread.current_default_thread_limiter()
    with contextlib.suppress(ValueError, TypeError):
        limiter.total_tokens = max(1, limiter.total_tokens + by)


class TrioLoopThread(LoopThread):
    """``trio.run`` in a daemon thread; calls and background tasks enter through its
    TrioToken."""

    def __init__(self, backend: Backend, options: CommonOptions) -> None:
        super().__init__(backend, options)
        self._jobs = JobSet()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        #: Where calls that only close() cancels run (see _execute_call).
        self._calls: trio.Nursery | None = None
        self._grace = 0.0

    def serve(self) -> None:
        trio.run(self._lifetime, instruments=instruments(self.options))

    async def _lifetime(self) -> None:
        state = LoopState(TRIO)
        self._token = trio.lowlevel.current_trio_token()
        state.attach(self._token)
        self._stop = trio.Event()
        async with trio.open_nursery() as calls:
            self._calls = calls
            self.ready()
            await self._stop.wait()
            # loopshim's own jobs first, then loop-local values while the clients' tasks
            # still run; trio.run then closes async generators and whatever is left.
            # Shielded: cancelling the calls still running at the end of the grace
            # period cancels this nursery's scope, around this code too.
            with trio.CancelScope(shield=True):
                await close_own_work(TRIO, self.backend.name, state, self._jobs, self._grace)

    def call_soon(self, callback: Callable[[], object]) -> None:
        assert self._token is not None
        self._token.run_sync_soon(callback)

    def lend_worker(self) -> Callable[[], None] | None:
        # trio.to_thread's worker threads (anyio's too, on trio) know their run's
        # token; trio keeps it in a private thread-local, so look it up defensively.
        threads = sys.modules.get("trio._threads")
        parent = getattr(threads, "PARENT_TASK_DATA", None)
        token = self._token
        if token is None:
            return None
        run_sync_soon = token.run_sync_soon
        if getattr(parent, "token", None) is not token:
            return None

        def change(by: int) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                run_sync_soon(_adjust_thread_limiter, by)

        change(1)
        return functools.partial(change, -1)

    def submit(self, job: Job[Any]) -> None:
        if self.in_loop_thread():
            self._start(job, True)
            return
        assert self._token is not None
        # What can cancel this job alone: its timeout, Ctrl-C in its caller (signals
        # reach the main thread only), or the cancellation of its background future.
        scoped = (
            job.timeout is not None
            or job.future is not None
            or threading.current_thread() is threading.main_thread()
        )
        try:
            self._token.run_sync_soon(self._start, job, scoped)
        except trio.RunFinishedError:
            raise RunnerClosed("the runner's loop has stopped") from None

    def _start(self, job: Job[Any], scoped: bool) -> None:
        if self._stop is None or self._stop.is_set():
            job.refuse()
            return
        self._jobs.add(job)
        if scoped:
            trio.lowlevel.spawn_system_task(_execute, job, self._jobs, context=job.context)
            return
        calls = self._calls
        assert calls is not None
        job.handle = calls.cancel_scope
        job.context.run(calls.start_soon, _execute_call, job, self._jobs)

    def cancel(self, job: Job[Any], reason: CancelReason) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):  # the run took its jobs with it
            self._token.run_sync_soon(self._cancel, job, reason)

    def _cancel(self, job: Job[Any], reason: CancelReason) -> None:
        calls = self._calls
        if calls is not None and job.handle is calls.cancel_scope:
            return  # a call of another thread than the main one: only close() cancels it
        job.cancel(reason)

    def request_shutdown(self, grace: float) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):  # already over
            self._token.run_sync_soon(self._begin_shutdown, grace)

    def _begin_shutdown(self, grace: float) -> None:
        assert self._stop is not None
        self._grace = grace
        self._stop.set()


_DRIVERS: Final = ("auto", "internal", "public")


class TrioBackend(Backend):
    """trio. With ``driver="auto"``, ``thread`` scope uses the internal driver when this
    trio is a version it was tested against, else public API only (a fresh ``trio.run``
    per call). The other scopes always use public API only."""

    library: ClassVar[Library] = TRIO

    def __init__(self, name: str, driver: str = "auto") -> None:
        super().__init__(name)
        if driver == "internal" and not _trio_driver.supported():
            first, last = _trio_driver.TESTED_VERSIONS
            raise OptionError(
                f"option 'driver': the internal thread-scope driver supports trio "
                f"{first[0]}.{first[1]} up to (not including) {last[0]}.{last[1]}, and this "
                f"is trio {trio.__version__}; use driver='auto' or driver='public'"
            )
        if driver == "auto":
            driver = "internal" if _trio_driver.supported() else "public"
        self.driver = driver

    def open_loop(self, options: CommonOptions) -> DrivenLoop:
        if self.driver == "internal":
            # A thread-scope loop is driven only by the thread that opens it.
            interruptible = threading.current_thread() is threading.main_thread()
            execute = _execute if interruptible else _execute_unscoped
            return _trio_driver.TrioDrivenLoop(
                execute, instruments(options), main_thread=interruptible
            )
        return FreshRunLoop(options)

    def run_fresh(self, job: Job[Any], options: CommonOptions) -> None:
        run_fresh(job, options)

    def loop_thread(self, options: CommonOptions) -> LoopThread:
        if threading_patched():  # trio was imported before gevent patched (--preload)
            refuse_backend("trio")
        return TrioLoopThread(self, options)

    def describe(self, scope: str) -> str:
        # Only thread scope has a choice of driver; the others use public API only.
        return f"driver={self.driver}" if scope == "thread" else ""


def _driver_option(name: str, value: object) -> str:
    if value not in _DRIVERS:
        raise OptionError(
            f"option {name!r} must be one of {', '.join(map(repr, _DRIVERS))}; got {value!r}"
        )
    return str(value)


TrioBackend.extra_options = {"driver": _driver_option}

backend_class = TrioBackend
