"""A third-party backend written against ``loopshim.abc`` only, as a package for another
loop would be: asyncio's public API, run_until_complete in the calling thread and
call_soon_threadsafe into a loop thread. Registered by conftest as ``third_party``; the
semantic suites run on it like on the built-in backends."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Any, ClassVar

from loopshim.abc import (
    Backend,
    CancelReason,
    DrivenLoop,
    Job,
    JobSet,
    Library,
    LoopState,
    LoopThread,
    close_own_work,
    library,
)

#: A third party reuses loopshim's knowledge of asyncio rather than write its own.
ASYNCIO = library("asyncio")


async def execute(job: Job[Any], jobs: set[Job[Any]] | None = None) -> None:
    job.handle = asyncio.current_task()
    try:
        if job.timeout is None:
            job.result = await job.awaitable()
        else:
            job.result = await asyncio.wait_for(_awaited(job), job.timeout)
    except asyncio.TimeoutError as exc:
        job.error = job.cancelled_error(exc) if job.cancel_reason is None else exc
    except asyncio.CancelledError as exc:
        job.error = job.cancelled_error(exc) if job.cancel_reason else exc
    except BaseException as exc:
        job.error = exc
    finally:
        job.complete(jobs)


async def _awaited(job: Job[Any]) -> Any:
    return await job.awaitable()


async def close_loop(state: LoopState, jobs: JobSet | None, grace: float) -> None:
    """loopshim's part first (its jobs, then loop-local values), then the rest."""
    await close_own_work(ASYNCIO, "third_party", state, jobs, grace)
    await asyncio.get_running_loop().shutdown_asyncgens()
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class PlainDrivenLoop(DrivenLoop):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.state = LoopState(ASYNCIO)
        self.state.attach(self.loop)

    def run_job(self, job: Job[Any]) -> None:
        task = job.context.run(self.loop.create_task, execute(job))
        try:
            self.loop.run_until_complete(task)
        except BaseException:
            if not job.done:
                job.cancel_reason = CancelReason.INTERRUPTED
                task.cancel()
                self.loop.run_until_complete(task)
            raise

    def close(self) -> None:
        try:
            self.loop.run_until_complete(close_loop(self.state, None, 0))
        finally:
            self.loop.close()


class PlainLoopThread(LoopThread):
    def __init__(self, backend: Backend, options: Any) -> None:
        super().__init__(backend, options)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.jobs = JobSet()
        self.stop: asyncio.Future[float] | None = None

    def serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._lifetime())
        finally:
            self.loop.close()

    async def _lifetime(self) -> None:
        state = LoopState(ASYNCIO)
        state.attach(asyncio.get_running_loop())
        self.stop = asyncio.get_running_loop().create_future()
        self.ready()
        grace = await self.stop
        await close_loop(state, self.jobs, grace)

    def call_soon(self, callback: Any) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(callback)

    def submit(self, job: Job[Any]) -> None:
        if self.in_loop_thread():
            self._start(job)
        else:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._start, job)

    def _start(self, job: Job[Any]) -> None:
        if self.stop is None or self.stop.done():
            job.refuse()
            return
        assert self.loop is not None
        self.jobs.add(job)
        job.handle = job.context.run(self.loop.create_task, execute(job, self.jobs))

    def cancel(self, job: Job[Any], reason: CancelReason) -> None:
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._cancel, job, reason)

    def _cancel(self, job: Job[Any], reason: CancelReason) -> None:
        task = job.handle
        unstarted = isinstance(task, asyncio.Task) and not task.done()
        unstarted = unstarted and inspect.getcoroutinestate(task.get_coro()) == inspect.CORO_CREATED
        job.cancel(reason)
        if unstarted:  # its coroutine will never run: end the job here
            job.error = job.cancelled_error(asyncio.CancelledError())
            job.context.run(job.complete, self.jobs)

    def request_shutdown(self, grace: float) -> None:
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._begin_shutdown, grace)

    def _begin_shutdown(self, grace: float) -> None:
        if self.stop is not None and not self.stop.done():
            self.stop.set_result(grace)


class PlainAsyncioBackend(Backend):
    """asyncio through its public API only."""

    library: ClassVar[Library] = ASYNCIO

    def open_loop(self, options: Any) -> DrivenLoop:
        return PlainDrivenLoop()

    def run_fresh(self, job: Job[Any], options: Any) -> None:
        loop = PlainDrivenLoop()
        try:
            loop.run_job(job)
        finally:
            loop.close()

    def loop_thread(self, options: Any) -> LoopThread:
        return PlainLoopThread(self, options)
