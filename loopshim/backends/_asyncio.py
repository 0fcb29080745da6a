"""The asyncio backend: asyncio's own loop, or any asyncio-compatible loop made by the
``loop_factory`` option (uvloop's backend, in ``_uvloop.py``, is this one with
``uvloop.new_event_loop``, never the deprecated event-loop policy)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import sys
import threading
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, ClassVar

from .._core import (
    CANCEL_GRACE,
    Backend,
    CancelReason,
    DrivenLoop,
    Job,
    JobSet,
    Library,
    LoopState,
    LoopThread,
    close_own_work,
    job_of,
    logger,
    native_selector,
    threading_patched,
)
from .._errors import RunnerClosed
from .._options import CommonOptions, Validator, callable_or_none
from . import _interrupts
from ._asyncio_direct import Driver, LoopStopped, can_drive, start_eagerly
from ._interrupts import InterruptGuard
from ._libraries import ASYNCIO, abandon, is_abandoned

__all__ = [
    "AsyncioBackend",
    "AsyncioDrivenLoop",
    "AsyncioLoopThread",
    "DirectlyDrivenLoop",
    "StoppingDrivenLoop",
    "backend_class",
    "open_driven_loop",
]

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


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


#: Whether ``create_task(coro, context=ctx)`` runs the task in *ctx* itself (3.11+);
#: before, in a copy of it.
_TASK_IN_GIVEN_CONTEXT = sys.version_info >= (3, 11)


def _create_task(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None], context: contextvars.Context
) -> asyncio.Task[None]:
    """``loop.create_task(coro, context=context)``, where the task runs in *context*
    itself (3.11+), or before 3.11 in a copy of it (neither asyncio's nor uvloop's
    ``create_task`` takes ``context=`` there)."""
    if sys.version_info >= (3, 11):
        return loop.create_task(coro, context=context)
    return context.run(loop.create_task, coro)


async def _execute_and_stop(job: Job[Any], driven: StoppingDrivenLoop) -> None:
    """:func:`_execute` for a call its caller drives with ``run_forever``, which it
    stops at the end of its last step: the next loop iteration runs the callbacks that
    step scheduled, then stops (``run_until_complete`` stops one iteration later, from
    a done callback). Its task runs in ``job.context`` itself (3.11+), which is then
    the context the coroutine leaves."""
    loop = driven._loop
    timer = None
    if job.timeout is not None:
        timer = loop.call_later(job.timeout, _expire, job)
    try:
        job.result = await job.awaitable()
    except asyncio.CancelledError as exc:
        job.error = job.cancelled_error(exc) if (job.timed_out or job.cancel_reason) else exc
    except BaseException as exc:
        job.error = exc
    finally:
        if timer is not None:
            timer.cancel()
        job.final_context = job.context if _TASK_IN_GIVEN_CONTEXT else contextvars.copy_context()
        job.finish()
        if driven.current is job:  # else its caller stopped waiting for it (Ctrl-C twice)
            loop.stop()


def _cancel(job: Job[Any], reason: CancelReason, jobs: set[Job[Any]] | None) -> None:
    """Cancel *job* (on its loop). A task cancelled before its first step never runs
    its coroutine, whose ``finally`` is what completes the job: complete it here."""
    if job.done:
        return
    task = job.handle
    unstarted = (
        task is not None
        and not task.done()
        and inspect.getcoroutinestate(task.get_coro()) == inspect.CORO_CREATED
    )
    job.cancel(reason)
    if unstarted:
        job.error = job.cancelled_error(asyncio.CancelledError())
        job.context.run(job.complete, jobs)


def _interrupt(job: Job[Any], guard: InterruptGuard) -> None:
    """On the loop, after Ctrl-C (see ``_interrupts``): cancel the call, or once Ctrl-C
    came again, stop waiting for it by raising from this callback — which stops
    ``run_until_complete`` and loopshim's own driving cleanly."""
    if job.done or not guard.driving:  # scheduled by a call that is over
        return
    if guard.abandon:
        raise guard.take()
    _cancel(job, CancelReason.INTERRUPTED, None)


def _in_task(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> Callable[[], bool]:
    return lambda: asyncio.current_task(loop) is task


def _start_eagerly(
    loop: asyncio.AbstractEventLoop, job: Job[Any], jobs: set[Job[Any]] | None
) -> None:
    job.handle = start_eagerly(loop, _execute(job, jobs), job.context)


async def _cancel_the_rest(name: str) -> None:
    """Cancel the tasks still on the loop (libraries' own: a pool's workers, a reader)
    and give them :data:`CANCEL_GRACE` to unwind."""
    current = asyncio.current_task()
    others = {t for t in asyncio.all_tasks() if t is not current and not is_abandoned(t)}
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
        abandon(pending)


async def _finalize(name: str, state: LoopState, grace: float, jobs: JobSet | None = None) -> None:
    """Everything a loop owes before it closes, run on the loop itself, in this order:
    loopshim's own jobs drain for *grace* seconds (then are cancelled); loop-local
    values close while the clients' own tasks still run; async generators close;
    whatever is left is cancelled; the default executor stops."""
    loop = asyncio.get_running_loop()
    stuck = await close_own_work(ASYNCIO, name, state, jobs, grace)
    if stuck:
        abandon(job.handle for job in stuck if job.handle is not None)
    await _close_async_generators(loop, name)
    await _cancel_the_rest(name)
    # Bounded: a worker thread stuck in blocking code must not hang close() (or a
    # call-scope call, whose TimeoutError waits for its loop to close).
    executor = _own_executors.pop(id(loop), None)
    if executor is not None:
        executor.shut_down_within(CANCEL_GRACE)


async def _close_async_generators(loop: asyncio.AbstractEventLoop, name: str) -> None:
    """``loop.shutdown_asyncgens()``, bounded by :data:`CANCEL_GRACE`; what goes wrong is
    logged, never raised (the loop's close goes on).

    Not called at all when asyncio's own loop says it holds no async generator: once it
    has run, a generator first iterated while the remaining tasks unwind gets a
    ``ResourceWarning``. Otherwise its first step runs right here: with none to close,
    uvloop's (which cannot say whether it holds any) returns at once, where the bound
    would cost a task and a loop iteration. Only what is left, if anything, runs in a
    task of its own."""
    if _holds_no_async_generators(loop):
        return
    try:
        steps = loop.shutdown_asyncgens().__await__()
        try:
            awaiting = steps.send(None)
        except StopIteration:
            return
        if not await ASYNCIO.within(CANCEL_GRACE, lambda: _resume(steps, awaiting)):
            logger.warning("closing the async generators of the %s loop timed out", name)
    except Exception:
        logger.exception("closing the async generators of the %s loop failed", name)


def _holds_no_async_generators(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether *loop* surely holds no async generator: asyncio's own loop keeps them in
    ``_asyncgens``; for any other loop the answer is False."""
    if not isinstance(loop, asyncio.BaseEventLoop):
        return False
    generators = getattr(loop, "_asyncgens", None)
    return generators is not None and len(generators) == 0


@types.coroutine
def _resume(steps: Generator[Any, Any, Any], awaiting: Any) -> Generator[Any, Any, Any]:
    """Go on with an awaitable's *steps*, stopped at their first suspension, waiting
    for *awaiting*: whatever task awaits this now drives them."""
    while True:
        try:
            sent = yield awaiting
        except GeneratorExit:  # abandoned, and now collected: so are the steps
            steps.close()
            raise
        except BaseException as exc:
            try:
                awaiting = steps.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                awaiting = steps.send(sent)
            except StopIteration as stop:
                return stop.value


#: Marks the threads of loopshim's executors: ``pool`` is the executor a thread serves.
_pool_threads = threading.local()


class _LoopExecutor(concurrent.futures.ThreadPoolExecutor):
    """The default executor of loopshim's asyncio and uvloop loops (what
    ``asyncio.to_thread`` and ``run_in_executor(None, ...)`` use).

    Set up at its first job: most loops never use one, and setting up a thread pool
    costs a fifth of a whole call-scope call. Stopped without waiting for its threads
    beyond a bound (uvloop's ``shutdown_default_executor`` waits whatever the timeout,
    asyncio's before 3.12 too). And a worker that blocks on a call to the loop that owns
    the pool lends the pool its place (:meth:`lend_worker`): else, with more such
    callers than workers, every worker waits for a call that waits for a worker.
    """

    def __init__(self) -> None:  # the pool's own set-up waits for the first job
        self._setup_lock = threading.Lock()
        self._stage = "idle"  # then "running" (a pool is set up) or "closed"

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if self._stage != "running":
            with self._setup_lock:
                if self._stage == "closed":
                    raise RunnerClosed("cannot schedule new futures after shutdown")
                if self._stage == "idle":
                    super().__init__(thread_name_prefix="loopshim-executor", initializer=self._mark)
                    self._stage = "running"
        return super().submit(fn, *args, **kwargs)

    def _mark(self) -> None:
        _pool_threads.pool = self

    def lend_worker(self) -> Callable[[], None] | None:
        """If the calling thread is one of this pool's, let the pool run one more worker
        while it waits; return what takes that place back (else ``None``)."""
        if getattr(_pool_threads, "pool", None) is not self:
            return None
        with self._shutdown_lock:
            if self._shutdown:
                return None
            self._max_workers += 1
            # Start the extra worker now. The pool's count of idle workers cannot be
            # trusted for it: before 3.12 a worker counts itself idle after every item,
            # also when it goes straight on to the next (this one, say), and a submit
            # that believed it would start no thread.
            while self._idle_semaphore.acquire(blocking=False):
                pass
            self._adjust_thread_count()
        take_back: Callable[[], None] = self._take_back
        return take_back

    def _take_back(self) -> None:
        with self._shutdown_lock:
            self._max_workers -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._stage == "closed":  # shut down without a pool (asked again at loop.close())
            return
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


#: The default executors of loopshim's loops, by ``id`` of the loop (removed when the
#: loop closes). An executor the program sets itself is the program's to shut down.
_own_executors: dict[int, _LoopExecutor] = {}


def _is_anyio_worker_of(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the calling thread is one of anyio's worker threads for *loop*."""
    anyio_asyncio = sys.modules.get("anyio._backends._asyncio")
    worker_class = getattr(anyio_asyncio, "WorkerThread", None)
    thread = threading.current_thread()
    return worker_class is not None and isinstance(thread, worker_class) and thread.loop is loop


def _lend_anyio_token(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Raise anyio's default thread limiter on *loop* by one token; return what lowers
    it again. (The limiter lives on the loop; sniffio must see a task there.)"""

    async def adjust(by: int) -> None:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens += by

    def start(by: int) -> None:
        loop.create_task(adjust(by))

    def change(by: int) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(start, by)

    change(1)
    return functools.partial(change, -1)


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")


def _new_loop(factory: LoopFactory) -> asyncio.AbstractEventLoop:
    loop = factory()
    executor = _LoopExecutor()
    loop.set_default_executor(executor)
    _own_executors[id(loop)] = executor
    return loop


class AsyncioDrivenLoop(DrivenLoop):
    """A loop driven in the calling thread, one call at a time, with
    ``run_until_complete``."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, main_thread: bool) -> None:
        super().__init__()
        self._name = name
        self._loop = loop
        self._state = LoopState(ASYNCIO)
        self._state.attach(loop)
        #: Driven by the main thread, where Ctrl-C lands (see ``_interrupts``).
        self._main_thread = main_thread

    def run_job(self, job: Job[Any]) -> None:
        if self._main_thread:
            _interrupts.under_guard(functools.partial(self.run_guarded, job))
        else:
            self.run_guarded(job, None)

    def run_guarded(self, job: Job[Any], guard: InterruptGuard | None) -> None:
        """:meth:`run_job`, under *guard* if it is not None."""
        loop = self._loop
        _start(loop, job, None)
        task = job.handle
        if guard is not None:
            guard.arm(
                functools.partial(loop.call_soon_threadsafe, _interrupt, job, guard),
                _in_task(loop, task),
            )
        try:
            loop.run_until_complete(task)
        except BaseException:
            self._interrupted(job, task, guard)
            raise
        finally:
            if guard is not None:
                guard.disarm()

    def _interrupted(
        self, job: Job[Any], task: asyncio.Task[Any], guard: InterruptGuard | None
    ) -> None:
        """An exception came out of the loop's run, not from the call's coroutine (a
        signal handler raised while the loop was waiting)."""
        if self._loop.is_running():
            # Interrupted while the loop set up or tore down its run (uvloop, by
            # another signal's handler that raised): it stays "running" for good.
            self._give_up()
        elif not job.done and not (guard is not None and guard.abandon):
            # Cancel the coroutine and let it unwind. (After Ctrl-C twice it stays on
            # the loop, cancelled, and finishes during later calls.)
            job.cancel_reason = CancelReason.INTERRUPTED
            task.cancel()
            self._run_until_done(task)

    def _run_until_done(self, task: asyncio.Task[Any]) -> None:
        # A task that ended by raising KeyboardInterrupt never stops the loop.
        if not task.done():
            self._loop.run_until_complete(task)

    def _give_up(self) -> None:
        """Abandon the loop, stuck in its run; close what it lets us close."""
        self.broken = True
        loop = self._loop
        self._state.detach()
        abandon(asyncio.all_tasks(loop))
        executor = _own_executors.pop(id(loop), None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        logger.warning(
            "an interrupt left the %s loop running outside its run: it was replaced, and "
            "its loop_local values and file descriptors could not be closed",
            self._name,
        )

    def close(self) -> None:
        # Ctrl-C while the loop closes takes effect once it is closed (closing is bounded).
        _interrupts.under_guard(lambda _: self.close_guarded())

    def close_guarded(self) -> None:
        """:meth:`close`, inside the guard of whoever calls it."""
        if self.broken:
            return
        try:
            task = self._loop.create_task(self._finalizing())
            self._run_until_done(task)
            task.result()
        finally:
            self._state.detach()
            self._loop.close()

    def _finalizing(self) -> Coroutine[Any, Any, None]:
        """What the loop runs to finalize itself (see :func:`_finalize`)."""
        return _finalize(self._name, self._state, 0)


class StoppingDrivenLoop(AsyncioDrivenLoop):
    """uvloop's loop, driven with ``run_forever``, which the call's task stops (see
    :func:`_execute_and_stop`): two loop iterations for a call that never waits, where
    ``run_until_complete`` takes three, and none of its work in Python (it passes the
    task through ``asyncio.ensure_future``) or of its done callback."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, main_thread: bool) -> None:
        super().__init__(name, loop, main_thread)
        #: The job being driven, whose task stops the loop when it ends (a call its
        #: caller stopped waiting for must not stop a later one).
        self.current: Job[Any] | None = None

    def run_job(self, job: Job[Any]) -> None:
        if self._main_thread:
            super().run_job(job)  # under a guard
            return
        # run_guarded(job, None), without the frame: this is every call's path.
        loop = self._loop
        self.current = job
        try:
            coro = _execute_and_stop(job, self)
            if sys.version_info >= (3, 11) and loop.get_task_factory() is None:
                task = job.handle = asyncio.Task(coro, loop=loop, context=job.context)
            else:  # the loop's own create_task, which honours a task factory
                task = job.handle = _create_task(loop, coro, job.context)
            try:
                loop.run_forever()
            except BaseException:
                self._interrupted(job, task, None)
                raise
            if not job.done:
                self._stopped_early(job, task)
        finally:
            self.current = None  # the loop must not keep the job, nor the caller's context

    def run_guarded(self, job: Job[Any], guard: InterruptGuard | None) -> None:
        loop = self._loop
        self.current = job
        try:
            task = job.handle = _create_task(loop, _execute_and_stop(job, self), job.context)
            if guard is not None:
                guard.arm(
                    functools.partial(loop.call_soon_threadsafe, _interrupt, job, guard),
                    _in_task(loop, task),
                )
            try:
                loop.run_forever()
            except BaseException:
                self._interrupted(job, task, guard)
                raise
            finally:
                if guard is not None:
                    guard.disarm()
            if not job.done:
                self._stopped_early(job, task)
        finally:
            self.current = None

    def _stopped_early(self, job: Job[Any], task: asyncio.Task[Any]) -> None:
        """``loop.stop()`` inside the call (or left over from an earlier one) ended the
        run first: cancel the coroutine, let it unwind, and fail, as
        ``run_until_complete`` does (and loopshim's own driving of asyncio's loop)."""
        job.cancel_reason = CancelReason.INTERRUPTED
        task.cancel()
        self._run_until_done(task)
        raise LoopStopped

    def _run_until_done(self, task: asyncio.Task[Any]) -> None:
        while not task.done():
            self._loop.run_forever()  # until the task stops it

    async def _finalizing(self) -> None:
        try:
            await super()._finalizing()
        finally:
            self._loop.stop()


class DirectlyDrivenLoop(AsyncioDrivenLoop):
    """A loop that :func:`~._asyncio_direct.can_drive` accepts, driven without
    ``run_until_complete``: a call that never waits costs one pass over the ready
    callbacks; one that waits runs full loop iterations (I/O, timers) until it is done."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, main_thread: bool) -> None:
        super().__init__(name, loop, main_thread)
        self._driver = Driver(loop)

    def run_guarded(self, job: Job[Any], guard: InterruptGuard | None) -> None:
        driver = self._driver
        outer = driver.enter()
        try:
            task = job.handle = driver.new_task(_execute(job, None), job.context)
            if guard is not None:
                guard.arm(
                    functools.partial(self._loop.call_soon_threadsafe, _interrupt, job, guard),
                    _in_task(self._loop, task),
                )
            try:
                driver.run_until(lambda: job.done)
            except BaseException:
                if not job.done and not (guard is not None and guard.abandon):
                    job.cancel_reason = CancelReason.INTERRUPTED
                    task.cancel()
                    driver.unwind(lambda: job.done or task.done())
                raise
        finally:
            if guard is not None:
                guard.disarm()
            driver.leave(outer)


def _set_debug(loop: asyncio.AbstractEventLoop, debug: bool) -> None:
    loop.set_debug(debug)
    if debug:
        _name_tasks_after_jobs(loop)


class _JobTask(asyncio.Task):  # type: ignore[type-arg]
    """A task named after its job (debug mode), which keeps that name when
    ``create_task`` then names it ``None`` (Python 3.13.0 does)."""

    def set_name(self, value: object) -> None:
        if value is not None:
            super().set_name(value)


def _name_tasks_after_jobs(loop: asyncio.AbstractEventLoop) -> None:
    """Name each task that runs a job after the job's callable, so that asyncio's debug
    reports ("Executing <Task ...> took 0.2 seconds", a task destroyed while pending)
    name the user's coroutine, not only loopshim's wrapper. A task factory already set
    on the loop still makes the tasks."""
    outer = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        job = job_of(coro)
        if outer is not None:
            task = outer(loop, coro, **kwargs)
        elif job is not None:
            task = _JobTask(coro, loop=loop, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        if job is not None and isinstance(task, asyncio.Task):
            task.set_name(job.label)
        return task

    loop.set_task_factory(factory)


def open_driven_loop(name: str, factory: LoopFactory, options: CommonOptions) -> AsyncioDrivenLoop:
    """A new loop from *factory*, to be driven by the calling thread: directly when it
    can be (never in debug mode, where ``run_until_complete`` times slow callbacks)."""
    loop = _new_loop(factory)
    _set_debug(loop, options.debug)
    main_thread = threading.current_thread() is threading.main_thread()
    if not options.debug and can_drive(loop):
        return DirectlyDrivenLoop(name, loop, main_thread)
    if _is_uvloop(loop):
        return StoppingDrivenLoop(name, loop, main_thread)
    return AsyncioDrivenLoop(name, loop, main_thread)


class AsyncioLoopThread(LoopThread):
    """A loop in a daemon thread; calls and background tasks hop to it."""

    def __init__(
        self, backend: Backend, factory: LoopFactory, options: CommonOptions, eager: bool
    ) -> None:
        super().__init__(backend, options)
        self._name = backend.name
        self._factory = factory
        self._start_task = _start_eagerly if eager else _start
        self._jobs = JobSet()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[float] | None = None

    def serve(self) -> None:
        loop = _new_loop(self._factory)
        _set_debug(loop, self.options.debug)
        self._loop = loop
        try:
            loop.run_until_complete(self._lifetime())
        except BaseException:
            # The loop died: LoopThread logs it, and every job's future gets RunnerClosed.
            # The tasks left behind are destroyed whenever the garbage collector gets to
            # them, where asyncio would log each as "destroyed but pending", long after.
            abandon(asyncio.all_tasks(loop))
            raise
        finally:
            _own_executors.pop(id(loop), None)  # _finalize did, unless the loop died
            loop.close()

    async def _lifetime(self) -> None:
        loop = asyncio.get_running_loop()
        state = LoopState(ASYNCIO)
        state.attach(loop)
        self._stop = loop.create_future()
        self.ready()
        grace = await self._stop
        await _finalize(self._name, state, grace, self._jobs)

    def call_soon(self, callback: Callable[[], object]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback)

    def lend_worker(self) -> Callable[[], None] | None:
        loop = self._loop
        executor = _own_executors.get(id(loop))
        if executor is not None and (take_back := executor.lend_worker()) is not None:
            return take_back
        if loop is not None and _is_anyio_worker_of(loop):
            return _lend_anyio_token(loop)
        return None

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

    def cancel(self, job: Job[Any], reason: CancelReason) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop took its jobs with it
            self._loop.call_soon_threadsafe(_cancel, job, reason, self._jobs)

    def request_shutdown(self, grace: float) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # already closed
            self._loop.call_soon_threadsafe(self._begin_shutdown, grace)

    def _begin_shutdown(self, grace: float) -> None:
        assert self._stop is not None
        if not self._stop.done():
            self._stop.set_result(grace)


class AsyncioBackend(Backend):
    """asyncio, or another asyncio-compatible loop made by the ``loop_factory`` option
    (a callable returning a new event loop)."""

    library: ClassVar[Library] = ASYNCIO
    extra_options: ClassVar[dict[str, Validator]] = {"loop_factory": callable_or_none}

    def __init__(self, name: str, loop_factory: LoopFactory | None = None) -> None:
        super().__init__(name)
        self._factory = loop_factory or self.default_loop_factory()

    def default_loop_factory(self) -> LoopFactory:
        """The loop factory when the ``loop_factory`` option is not given."""
        return asyncio.new_event_loop

    def open_loop(self, options: CommonOptions) -> DrivenLoop:
        return open_driven_loop(self.name, self._factory, options)

    def run_fresh(self, job: Job[Any], options: CommonOptions) -> None:
        # One guard over the loop's whole life: Ctrl-C while it opens or closes too.
        _interrupts.under_guard(functools.partial(self._run_fresh, job, options))

    def _run_fresh(
        self, job: Job[Any], options: CommonOptions, guard: InterruptGuard | None
    ) -> None:
        loop = open_driven_loop(self.name, self._factory, options)
        try:
            loop.run_guarded(job, guard)
        finally:
            loop.close_guarded()

    def loop_thread(self, options: CommonOptions) -> LoopThread:
        # Eager start pays off on the standard loop; uvloop's task start is already cheap.
        eager = self._factory is asyncio.new_event_loop
        factory = self._factory
        if eager and threading_patched():
            # gevent's selector would run a gevent hub inside the loop's native thread.
            factory = _loop_with_native_selector
        return AsyncioLoopThread(self, factory, options, eager)


def _loop_with_native_selector() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(native_selector())


backend_class = AsyncioBackend
