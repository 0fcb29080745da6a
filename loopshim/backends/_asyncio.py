"""The asyncio backend, and uvloop as asyncio with ``uvloop.new_event_loop`` as the loop
factory (never the deprecated event-loop policy)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import sys
import threading
import time
from asyncio import events
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .._errors import RunnerClosed
from .._gevent import native_selector, threading_patched
from .._loop_local import LoopState
from .._options import CommonOptions, Validator, callable_or_none, parse_options
from .._runner import (
    CANCEL_GRACE,
    CLEANUP_GRACE,
    Backend,
    DrivenLoop,
    Job,
    LoopThread,
    Runner,
    log_cancelled_at_close,
)

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
logger = logging.getLogger("loopshim")


def _expire(job: Job[Any]) -> None:
    job.timed_out = True
    job.handle.cancel()


async def _execute(job: Job[Any], jobs: set[Job[Any]] | None) -> None:
    timer = None
    if job.timeout is not None:
        timer = asyncio.get_running_loop().call_later(job.timeout, _expire, job)
    try:
        job.result = await job.awaitable()
    except asyncio.CancelledError as exc:
        job.error = job.cancelled_error(exc) if (job.timed_out or job.cancel_reason) else exc
    except BaseException as exc:
        job.error = exc
    finally:
        if timer is not None:
            timer.cancel()
        job.complete(jobs)


def _start(loop: asyncio.AbstractEventLoop, job: Job[Any], jobs: set[Job[Any]] | None) -> None:
    job.handle = job.context.run(loop.create_task, _execute(job, jobs))


if sys.version_info >= (3, 12):

    def _start_eagerly(
        loop: asyncio.AbstractEventLoop, job: Job[Any], jobs: set[Job[Any]] | None
    ) -> None:
        """On a running loop, an eager task takes its first step now instead of one loop
        iteration later: a call that never waits finishes within this callback."""
        if loop.get_task_factory() is not None:
            _start(loop, job, jobs)
            return
        job.handle = asyncio.Task(
            _execute(job, jobs), loop=loop, context=job.context, eager_start=True
        )

else:

    def _start_eagerly(
        loop: asyncio.AbstractEventLoop, job: Job[Any], jobs: set[Job[Any]] | None
    ) -> None:
        """Before 3.12 asyncio has no eager tasks; on its own loop the same effect: make
        the task, then take its first step — the callback it has just queued — now,
        unless this runs inside another task (a spawn from a coroutine on the loop)."""
        _start(loop, job, jobs)
        ready: collections.deque[Any] = loop._ready  # type: ignore[attr-defined]
        if (
            ready
            and getattr(ready[-1]._callback, "__self__", None) is job.handle
            and asyncio.current_task(loop) is None
        ):
            ready.pop()._run()


async def within(seconds: float, fn: Callable[[], Awaitable[object]]) -> bool:
    """Await ``fn()`` for up to *seconds*; then cancel it and, if it still does not
    finish within :data:`CANCEL_GRACE`, abandon it. Whether it finished in time."""
    task = asyncio.ensure_future(fn())
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        task.result()  # its exception, if any, is the caller's to log
        return True
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
    if not done:
        _abandon([task])
    return False


def _abandon(tasks: Iterable[asyncio.Future[Any]]) -> None:
    # Logged once by the caller: asyncio would also log each task as "destroyed but
    # pending" whenever the garbage collector gets to it.
    for task in tasks:
        task._log_destroy_pending = False  # type: ignore[attr-defined]


async def _drain_jobs(name: str, jobs: set[Job[Any]], grace: float) -> None:
    """Let loopshim's own jobs (calls and background tasks) finish for *grace* seconds,
    then cancel those left and let them unwind."""
    pending: set[asyncio.Future[Any]] = {job.handle for job in jobs if job.handle is not None}
    if pending and grace > 0:
        _, pending = await asyncio.wait(pending, timeout=grace)
    if not jobs:
        return
    leftover = list(jobs)
    for job in leftover:
        job.cancel("closed")
    if pending:
        _, pending = await asyncio.wait(pending, timeout=CANCEL_GRACE)
    log_cancelled_at_close(name, leftover, grace)
    if pending:
        logger.warning(
            "%d task(s) of the %s runner ignored cancellation at close and were abandoned",
            len(pending),
            name,
        )
        _abandon(pending)


async def _cancel_the_rest(name: str) -> None:
    """Cancel the tasks still on the loop (libraries' own: a pool's workers, a reader)
    and give them :data:`CANCEL_GRACE` to unwind."""
    current = asyncio.current_task()
    others = {t for t in asyncio.all_tasks() if t is not current}
    for task in others:
        task.cancel()
    if not others:
        return
    _, pending = await asyncio.wait(others, timeout=CANCEL_GRACE)
    if pending:
        logger.warning(
            "%d task(s) left on the %s loop at close ignored cancellation and were abandoned: %s",
            len(pending),
            name,
            ", ".join(t.get_name() for t in pending),
        )
        _abandon(pending)


async def _finalize(
    name: str, state: LoopState, grace: float, jobs: set[Job[Any]] | None = None
) -> None:
    """Everything a loop owes before it closes, run on the loop itself, in this order:
    loopshim's own jobs drain for *grace* seconds (then are cancelled); loop-local
    values close while the clients' own tasks still run; async generators close;
    whatever is left is cancelled; the default executor stops."""
    loop = asyncio.get_running_loop()
    if jobs:
        await _drain_jobs(name, jobs, grace)
    await state.aclose(within, CLEANUP_GRACE)
    if not await within(CANCEL_GRACE, loop.shutdown_asyncgens):
        logger.warning("closing the async generators of the %s loop timed out", name)
    await _cancel_the_rest(name)
    executor = _own_executors.pop(id(loop), None)
    if executor is not None:
        executor.shut_down_within(CANCEL_GRACE)
    elif sys.version_info >= (3, 12):
        # Bounded: a worker thread stuck in blocking code must not hang close() (or a
        # call-scope call, whose TimeoutError waits for its loop to close). Before 3.12
        # the wait cannot be bounded: cancelling it still joins the thread.
        await loop.shutdown_default_executor(CANCEL_GRACE)
    else:
        await loop.shutdown_default_executor()


class _LazyExecutor(concurrent.futures.ThreadPoolExecutor):
    """A uvloop loop's default executor, set up at its first job: most loops never use
    one, and setting up a thread pool costs a fifth of a whole call-scope call."""

    def __init__(self) -> None:  # the pool's own set-up waits for the first job
        self._setup_lock = threading.Lock()
        self._stage = "idle"  # then "running" (a pool is set up) or "closed"

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if self._stage != "running":
            with self._setup_lock:
                if self._stage == "closed":
                    raise RuntimeError("cannot schedule new futures after shutdown")
                if self._stage == "idle":
                    super().__init__(thread_name_prefix="loopshim-executor")
                    self._stage = "running"
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._setup_lock:
            if self._stage == "idle":
                self._stage = "closed"
        if self._stage == "running":
            super().shutdown(wait, cancel_futures=cancel_futures)

    def shut_down_within(self, seconds: float) -> None:
        """Stop the pool, waiting at most *seconds* for its threads."""
        self.shutdown(wait=False, cancel_futures=True)
        if self._stage != "running":
            return
        deadline = time.monotonic() + seconds
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))


#: uvloop's ``shutdown_default_executor`` waits for its threads whatever the timeout, so
#: uvloop loops get a default executor loopshim can stop without waiting (by ``id``
#: of the loop; removed when the loop is finalized).
_own_executors: dict[int, _LazyExecutor] = {}


def _new_loop(factory: LoopFactory) -> asyncio.AbstractEventLoop:
    loop = factory()
    if type(loop).__module__.startswith("uvloop"):
        executor = _LazyExecutor()
        loop.set_default_executor(executor)
        _own_executors[id(loop)] = executor
    return loop


def drives_directly(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether :class:`DirectlyDrivenLoop` may drive *loop* itself rather than through
    ``run_until_complete``: a loop whose running machinery is asyncio's own
    ``BaseEventLoop`` (the standard selector loop and subclasses that keep it; not
    uvloop, not the Windows proactor loop)."""
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


class AsyncioDrivenLoop(DrivenLoop):
    """A loop driven in the calling thread, one call at a time, with
    ``run_until_complete``."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._name = name
        self._loop = loop
        self._state = LoopState(asyncio.Event)
        self._state.attach(loop)

    def run_job(self, job: Job[Any]) -> None:
        loop = self._loop
        _start(loop, job, None)
        try:
            loop.run_until_complete(job.handle)
        except BaseException:
            # Interrupted outside the coroutine (a signal handler raised while the loop
            # was waiting): cancel the coroutine and let it unwind before re-raising.
            if not job.done:
                job.cancel_reason = "interrupted"
                job.handle.cancel()
                loop.run_until_complete(job.handle)
            raise

    def close(self) -> None:
        try:
            self._loop.run_until_complete(_finalize(self._name, self._state, 0))
        finally:
            self._state.detach()
            self._loop.close()


class DirectlyDrivenLoop(AsyncioDrivenLoop):
    """A loop that :func:`drives_directly` accepts, driven without
    ``run_until_complete``.

    It does what ``run_until_complete`` does, minus what a call never needs: no done
    callback to stop the loop, and no I/O poll before the task's first step or after its
    last one. A call that never waits costs one pass over the ready callbacks; one that
    waits runs full loop iterations (I/O, timers) until it is done. The private pieces
    used are those ``run_forever`` itself uses.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name, loop)
        base: Any = loop
        self._hooks = (base._asyncgen_firstiter_hook, base._asyncgen_finalizer_hook)

    def run_job(self, job: Job[Any]) -> None:
        loop: Any = self._loop
        outer = _enter_running(loop, self._hooks)
        try:
            if loop._task_factory is not None:
                _start(loop, job, None)
            elif sys.version_info >= (3, 12):
                # Eager: a call that never waits is done when the task is made.
                job.handle = asyncio.Task(
                    _execute(job, None), loop=loop, context=job.context, eager_start=True
                )
            elif sys.version_info >= (3, 11):
                job.handle = asyncio.Task(_execute(job, None), loop=loop, context=job.context)
            else:
                job.handle = job.context.run(asyncio.Task, _execute(job, None), loop=loop)
            try:
                ready = loop._ready
                if not job.done:  # what was queued first, then the task's first step
                    if loop._stopping:  # stop() in an eager first step
                        raise RuntimeError("Event loop stopped before the call finished.")
                    _run_ready(ready)
                while not job.done:
                    if loop._stopping:
                        raise RuntimeError("Event loop stopped before the call finished.")
                    loop._run_once()
                if ready:
                    _run_ready(ready)  # callbacks the call's last step scheduled
            except BaseException:
                if not job.done:
                    job.cancel_reason = "interrupted"
                    job.handle.cancel()
                    while not job.done:
                        loop._run_once()
                raise
        finally:
            _leave_running(loop, outer)


def open_driven_loop(name: str, factory: LoopFactory, options: CommonOptions) -> AsyncioDrivenLoop:
    """A new loop from *factory*, driven directly when it can be (never in debug mode,
    where ``run_until_complete`` times slow callbacks)."""
    loop = _new_loop(factory)
    loop.set_debug(options.debug)
    if not options.debug and drives_directly(loop):
        return DirectlyDrivenLoop(name, loop)
    return AsyncioDrivenLoop(name, loop)


def _run_ready(ready: collections.deque[Any]) -> None:
    """One pass over the callbacks queued now, in order, as a loop iteration runs them."""
    for _ in range(len(ready)):
        handle = ready.popleft()
        if not handle._cancelled:
            handle._run()


if sys.version_info >= (3, 13):

    def _enter_running(loop: Any, hooks: tuple[Any, Any]) -> Any:
        loop._run_forever_setup()

    def _leave_running(loop: Any, outer: Any) -> None:
        loop._run_forever_cleanup()

else:

    def _enter_running(loop: Any, hooks: tuple[Any, Any]) -> Any:
        """Make *loop* this thread's running loop with its async-generator *hooks*, as
        ``run_forever`` does on entry. Its checks are left out: only the thread that owns
        the loop drives it, after checking that no loop runs in the thread."""
        outer = sys.get_asyncgen_hooks()
        loop._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(*hooks)
        events._set_running_loop(loop)
        return outer

    def _leave_running(loop: Any, outer: Any) -> None:
        loop._stopping = False
        loop._thread_id = None
        events._set_running_loop(None)
        sys.set_asyncgen_hooks(*outer)


class AsyncioLoopThread(LoopThread):
    """A loop in a daemon thread; calls and background tasks hop to it."""

    def __init__(
        self, name: str, factory: LoopFactory, options: CommonOptions, eager: bool
    ) -> None:
        super().__init__(name, options)
        self._name = name
        self._factory = factory
        self._start_task = _start_eagerly if eager else _start
        self._jobs: set[Job[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[float] | None = None

    def serve(self) -> None:
        loop = _new_loop(self._factory)
        loop.set_debug(self.options.debug)
        self._loop = loop
        try:
            loop.run_until_complete(self._lifetime())
        except BaseException:
            # The loop died: LoopThread logs it, and every job's future gets RunnerClosed.
            # The tasks left behind are destroyed whenever the garbage collector gets to
            # them, where asyncio would log each as "destroyed but pending", long after.
            for task in asyncio.all_tasks(loop):
                task._log_destroy_pending = False  # type: ignore[attr-defined]
            raise
        finally:
            loop.close()

    async def _lifetime(self) -> None:
        loop = asyncio.get_running_loop()
        state = LoopState(asyncio.Event)
        state.attach(loop)
        self._stop = loop.create_future()
        self.ready()
        grace = await self._stop
        await _finalize(self._name, state, grace, self._jobs)

    def call_soon(self, callback: Callable[[], object]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback)

    def submit(self, job: Job[Any]) -> None:
        loop = self._loop
        assert loop is not None
        if self.in_loop_thread():
            self._start(job)
            return
        try:
            loop.call_soon_threadsafe(self._start, job)
        except RuntimeError:  # the loop is closed
            raise RunnerClosed("the runner's loop has stopped") from None

    def _start(self, job: Job[Any]) -> None:
        # Jobs submitted before close() run (and are drained); the loop reads the stop
        # request in submission order, so only jobs submitted after it are refused.
        if self._stop is None or self._stop.done():
            job.refuse()
            return
        self._jobs.add(job)
        assert self._loop is not None
        self._start_task(self._loop, job, self._jobs)

    def cancel(self, job: Job[Any], reason: str) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop took its jobs with it
            self._loop.call_soon_threadsafe(job.cancel, reason)

    def request_shutdown(self, grace: float) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # already closed
            self._loop.call_soon_threadsafe(self._begin_shutdown, grace)

    def _begin_shutdown(self, grace: float) -> None:
        assert self._stop is not None
        if not self._stop.done():
            self._stop.set_result(grace)


class AsyncioBackend(Backend):
    """asyncio, or another asyncio-compatible loop made by ``loop_factory``."""

    def __init__(self, name: str, factory: LoopFactory) -> None:
        self.name = name
        self._factory = factory

    def open_loop(self, options: CommonOptions) -> DrivenLoop:
        return open_driven_loop(self.name, self._factory, options)

    def run_fresh(self, job: Job[Any], options: CommonOptions) -> None:
        loop = open_driven_loop(self.name, self._factory, options)
        try:
            loop.run_job(job)
        finally:
            loop.close()

    def loop_thread(self, options: CommonOptions) -> LoopThread:
        # Eager start pays off on the standard loop; uvloop's task start is already cheap.
        eager = self._factory is asyncio.new_event_loop
        factory = self._factory
        if eager and threading_patched():
            # gevent's selector would run a gevent hub inside the loop's native thread.
            factory = _loop_with_native_selector
        return AsyncioLoopThread(self.name, factory, options, eager)


def _loop_with_native_selector() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(native_selector())


_EXTRA_OPTIONS: dict[str, Validator] = {"loop_factory": callable_or_none}


def create_asyncio_runner(*, scope: Any, **options: Any) -> Runner:
    """The ``asyncio`` backend's factory: options ``timeout``, ``shutdown_timeout``,
    ``debug`` and ``loop_factory`` (a callable returning a new asyncio event loop)."""
    common, extra = parse_options("asyncio", options, _EXTRA_OPTIONS)
    factory = extra.get("loop_factory") or asyncio.new_event_loop
    return Runner(AsyncioBackend("asyncio", factory), scope, common)


def create_uvloop_runner(*, scope: Any, **options: Any) -> Runner:
    """The ``uvloop`` backend's factory: asyncio with ``uvloop.new_event_loop`` as the
    loop factory; options ``timeout``, ``shutdown_timeout`` and ``debug``."""
    import uvloop

    common, _ = parse_options("uvloop", options)
    return Runner(AsyncioBackend("uvloop", uvloop.new_event_loop), scope, common)
