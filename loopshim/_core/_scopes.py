"""The three scopes — where a runner's loop lives — over any backend: ``process`` (one
loop in a thread of its own), ``thread`` (one loop per calling thread, driven only while
a call runs) and ``call`` (a fresh loop per call)."""

from __future__ import annotations

import abc
import contextvars
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .._errors import RunnerClosed, ScopeError
from .._options import CommonOptions
from . import _gevent
from ._backend import Backend, DrivenLoop, LoopThread, running_library
from ._checks import check_not_in_loop, reentrant_error
from ._job import CancelReason, Job, handled_exception
from ._log import logger

__all__ = [
    "SCOPE_CLASSES",
    "CallScope",
    "ProcessScope",
    "RunnerScope",
    "ThreadScope",
    "new_job",
]

#: How often a caller waiting on a loop thread checks that the thread is still alive.
_LIVENESS_POLL: Final = 1.0


def new_job(
    fn: Callable[..., Awaitable[Any]],
    args: Any,
    kwargs: Any,
    timeout: float | None,
    lock: threading.Lock | None,
) -> Job[Any]:
    origin = contextvars.copy_context()
    return Job(
        fn,
        args,
        kwargs,
        context=origin.copy(),
        origin=origin,
        handling=handled_exception(),
        timeout=timeout,
        lock=lock,
    )


class RunnerScope(abc.ABC):
    """Where a runner's loop lives, and how a call reaches it."""

    def __init__(self, backend: Backend, options: CommonOptions) -> None:
        self.backend = backend
        self.options = options
        self.closed = False

    @abc.abstractmethod
    def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any: ...

    def closed_error(self) -> RunnerClosed:
        return RunnerClosed(f"this {self.backend.name} runner was closed")

    def spawn(self, job: Job[Any]) -> Callable[[], None]:
        raise ScopeError(
            f"spawn() needs a loop that keeps running after the call returns, and a "
            f"{type(self).scope_name!r}-scope runner has none; use "
            f'get_runner({self.backend.name!r}, scope="process") for background tasks'
        )

    @abc.abstractmethod
    def close(self, grace: float) -> None: ...

    @abc.abstractmethod
    def after_fork_in_child(self) -> None:
        """Forget loops inherited from the parent process; never touch them."""

    scope_name: str = ""


abandoned_after_fork: list[object] = []


class ProcessScope(RunnerScope):
    scope_name = "process"

    def __init__(self, backend: Backend, options: CommonOptions) -> None:
        super().__init__(backend, options)
        self._lock = threading.Lock()
        self._thread: LoopThread | None = None

    def _start(self) -> LoopThread:
        with self._lock:
            if self.closed:
                raise self.closed_error()
            thread = self._thread
            # A thread that is shutting down while the runner is open has died (close()
            # sets closed first): it may still be alive for a moment, settling its jobs.
            if thread is None or not thread.alive or thread.shutting_down:
                if thread is not None:
                    logger.error("the %s loop thread died; starting a new one", self.backend.name)
                thread = self.backend.loop_thread(self.options)
                thread.start()
                self._thread = thread
            return thread

    def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        thread = self._thread
        if thread is None or thread.shutting_down:
            thread = self._start()
        library = running_library()
        if library is not None or thread.in_loop_thread():
            raise reentrant_error(library.name if library else self.backend.name, "run()")
        lock = threading.Lock()
        lock.acquire()
        job = new_job(fn, args, kwargs, self.options.timeout, lock)
        thread.submit(job)
        self._wait(job, thread)
        return job.outcome()

    def _wait(self, job: Job[Any], thread: LoopThread) -> None:
        lock = job.lock
        assert lock is not None
        try:
            while not lock.acquire(timeout=_LIVENESS_POLL):
                if not thread.alive:
                    raise RunnerClosed(
                        f"the {self.backend.name} loop thread stopped before {job.label} finished"
                    )
        except (KeyboardInterrupt, SystemExit):
            # Interrupted while waiting (Ctrl-C in the main thread). If the job is done
            # the lock is ours already; otherwise cancel the coroutine and let it
            # unwind, so the loop stays consistent, then re-raise.
            if not job.done:
                thread.cancel(job, CancelReason.INTERRUPTED)
                while not job.done and not lock.acquire(timeout=_LIVENESS_POLL):
                    if not thread.alive:
                        break
            raise

    def spawn(self, job: Job[Any]) -> Callable[[], None]:
        thread = self._thread
        if thread is None or thread.shutting_down:
            thread = self._start()
        assert job.future is not None
        thread.spawned.add(job)
        job.future.add_done_callback(lambda _: thread.spawned.discard(job))
        thread.submit(job)
        return functools.partial(thread.cancel, job, CancelReason.CANCELLED)

    def close(self, grace: float) -> None:
        if self._thread is not None and self._thread.in_loop_thread():
            raise reentrant_error(self.backend.name, "close()")
        with self._lock:
            self.closed = True
            thread, self._thread = self._thread, None
        # Joined outside the lock: coroutines still draining may call run() or spawn(),
        # which must get RunnerClosed at once rather than wait for this join.
        if thread is not None:
            thread.close(grace)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        if self._thread is not None:
            abandoned_after_fork.append(self._thread)
            self._thread = None


class ThreadScope(RunnerScope):
    scope_name = "thread"

    def __init__(self, backend: Backend, options: CommonOptions) -> None:
        super().__init__(backend, options)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._loops: dict[threading.Thread, DrivenLoop] = {}

    def _open(self) -> DrivenLoop:
        if _gevent.threading_patched():
            _gevent.refuse_scope("thread", self.backend.name)
        with self._lock:
            if self.closed:
                raise self.closed_error()
            dead = [t for t in self._loops if not t.is_alive()]
            orphans = [self._loops.pop(t) for t in dead]
        for orphan in orphans:  # loops of threads that have ended: idle, safe to close here
            self._close_loop(orphan)
        # Made in an empty context: what a loop sets up when it is made (asyncio's
        # self-pipe reader) keeps the context it was made in, for the loop's lifetime,
        # and the caller's may hold a request, its app, anything.
        loop = contextvars.Context().run(self.backend.open_loop, self.options)
        with self._lock:
            self._loops[threading.current_thread()] = loop
        self._local.loop = loop
        return loop

    def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        library = running_library()
        if library is not None:
            raise reentrant_error(library.name, "run()")
        loop: DrivenLoop | None = getattr(self._local, "loop", None)
        if loop is None or loop.closed:
            loop = self._open()
        job = new_job(fn, args, kwargs, self.options.timeout, None)
        with loop.lock:
            if loop.closed:
                raise self.closed_error()
            try:
                loop.run_job(job)
            finally:
                if loop.broken or self.closed:
                    self._forget(loop)
                    self._close_loop(loop)
        return job.outcome()

    def _forget(self, loop: DrivenLoop) -> None:
        with self._lock:
            for thread, known in list(self._loops.items()):
                if known is loop:
                    del self._loops[thread]
        self._local.loop = None

    @staticmethod
    def _close_loop(loop: DrivenLoop) -> None:
        if loop.closed:
            return
        loop.closed = True
        if loop.broken:
            return
        try:
            loop.close()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            # Never into the caller: this may run inside another thread's call.
            logger.exception("closing a thread-scope loop failed")

    def close(self, grace: float) -> None:
        check_not_in_loop("close()")
        with self._lock:
            self.closed = True
            loops = list(self._loops.values())
            self._loops.clear()
        for loop in loops:
            # A loop busy in its own thread is closed by that thread when its call ends.
            if loop.lock.acquire(blocking=False):
                try:
                    self._close_loop(loop)
                finally:
                    loop.lock.release()

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        abandoned_after_fork.extend(self._loops.values())
        self._loops = {}
        self._local = threading.local()


class CallScope(RunnerScope):
    scope_name = "call"

    def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        check_not_in_loop("run()")
        if self.closed:
            raise self.closed_error()
        if _gevent.threading_patched():
            _gevent.refuse_scope("call", self.backend.name)
        job = new_job(fn, args, kwargs, self.options.timeout, None)
        # The coroutine runs in the job's context; the loop itself, in an empty one, so
        # that nothing it leaves behind (trio's run keeps reference cycles until the
        # garbage collector runs) holds on to the caller's.
        contextvars.Context().run(self.backend.run_fresh, job, self.options)
        return job.outcome()

    def close(self, grace: float) -> None:
        self.closed = True

    def after_fork_in_child(self) -> None:
        pass  # nothing outlives a call


SCOPE_CLASSES: Final[dict[str, type[RunnerScope]]] = {
    "process": ProcessScope,
    "thread": ThreadScope,
    "call": CallScope,
}
