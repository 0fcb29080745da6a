"""The three scopes — where a runner's loop lives — over any backend: ``process`` (one
loop in a thread of its own), ``thread`` (one loop per calling thread, driven only while
a call runs) and ``call`` (a fresh loop per call)."""

from __future__ import annotations

import abc
import collections
import contextvars
import functools
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .._errors import ReentrantCallError, RunnerClosed, ScopeError, UsageError
from .._options import CommonOptions
from . import _gevent
from ._backend import Backend, DrivenLoop, Library, LoopThread, running_library
from ._bridge import bridge_owner, hand_over
from ._checks import close_in_loop_error, foreign_loop_error, own_loop_error
from ._job import CancelReason, Job, handled_exception
from ._log import logger

__all__ = [
    "SCOPE_CLASSES",
    "Bridged",
    "CallScope",
    "ProcessScope",
    "RunnerScope",
    "ThreadScope",
    "new_job",
]

#: How often a caller waiting on a loop thread checks that the thread is still alive.
_LIVENESS_POLL: Final = 1.0
#: How long a call waits before its thread, if it is one of the loop's worker threads,
#: lends its place in the pool (most calls are over by then).
_LEND_AFTER: Final = 0.05


class Bridged:
    """An async function whose call must run in the greenlet bridge, whatever the
    runner's ``reentrant`` option (what :meth:`RunnerScope.call_bridged` passes on)."""

    __slots__ = ("fn", "owner")

    def __init__(self, fn: Callable[..., Awaitable[Any]], owner: RunnerScope) -> None:
        self.fn = fn
        self.owner = owner


def new_job(
    fn: Callable[..., Awaitable[Any]],
    args: Any,
    kwargs: Any,
    timeout: float | None,
    lock: threading.Lock | None,
    owner: object,
) -> Job[Any]:
    """A call's job, made in the caller's thread: a copy of the caller's context, the
    exception it is handling, and the bridge *owner* if the call may re-enter (a
    runner's scope, an ASGI request; ``None`` if it may not)."""
    if type(fn) is Bridged:  # type: ignore[comparison-overlap]
        fn, owner = fn.fn, fn.owner
    origin = contextvars.copy_context()
    return Job(fn, args, kwargs, origin.copy(), origin, handled_exception(), timeout, lock, owner)


class RunnerScope(abc.ABC):
    """Where a runner's loop lives, and how a call reaches it."""

    scope_name: str = ""

    def __init__(self, backend: Backend, options: CommonOptions) -> None:
        self.backend = backend
        self.options = options
        #: Closed for good: calls raise RunnerClosed.
        self.closed = False
        #: Where close() was called, for RunnerClosed's message.
        self.closed_at = ""
        #: The bridge owner of this runner's calls: itself with ``reentrant=True``
        #: (an attribute, not a property: it is read on every call).
        self.owner: RunnerScope | None = self if options.reentrant else None

    @abc.abstractmethod
    def run(self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` to completion from sync code; return its result.
        (The arguments come packed: unpacking them into a ``*args, **kwargs`` signature
        would cost every call a dictionary and a frame the interpreter cannot inline.)"""

    def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`run`, for callers that hold the arguments spread out (a
        :class:`~._sync_call.SyncCall` is a partial of this)."""
        return self.run(fn, args, kwargs)

    def call_bridged(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`call`, with the coroutine in the greenlet bridge whatever the
        ``reentrant`` option (Flask's calls, when the app lets them re-enter)."""
        return self.run(Bridged(fn, self), args, kwargs)  # type: ignore[arg-type]

    def reenter(
        self, library: Library, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
    ) -> Any:
        """A call from sync code that one of this runner's bridged coroutines called:
        the coroutine's own task awaits the inner one, and the loop serves the others
        meanwhile."""
        # Not bridged itself: hand_over steps it in this bridge greenlet already.
        job = new_job(fn, args, kwargs, self.options.timeout, None, None)
        hand_over(library.call_in_task(job))
        return job.outcome()

    def refuse_in_loop(self, library: Library, own_loop: bool) -> ReentrantCallError:
        """The error for a call this scope cannot serve from a thread running a loop."""
        if own_loop:
            return own_loop_error(library.name, self.backend.name)
        return foreign_loop_error(library.name, self.scope_name)

    async def call_async(self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
        """What ``await runner.run_async(fn, ...)`` does."""
        caller = running_library()
        if caller is None:
            raise UsageError(
                "run_async() must be awaited inside a running event loop; from sync code use run()"
            )
        if self.on_own_loop():
            # On the runner's own loop: awaited in place, in this task.
            job = new_job(fn, args, kwargs, self.options.timeout, None, self.owner)
            await caller.call_in_task(job)
            return job.outcome()
        return await self.call_async_from_elsewhere(caller, fn, args, kwargs)

    @abc.abstractmethod
    def on_own_loop(self) -> bool:
        """Whether the calling code runs on one of this runner's loops."""

    async def call_async_from_elsewhere(
        self, caller: Library, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
    ) -> Any:
        raise ScopeError(
            f"run_async() from a {caller.name} loop needs a runner whose loop runs on its "
            f"own, and a {self.scope_name}-scope runner's loop runs only inside run(); use "
            f'get_runner({self.backend.name!r}, scope="process")'
        )

    def closed_error(self) -> RunnerClosed:
        where = f" at {self.closed_at}" if self.closed_at else ""
        return RunnerClosed(
            f"this {self.backend.name} {self.scope_name}-scope runner was closed by "
            f"close(){where}; use a runner that is open: loopshim.get_runner(...) gives a "
            "new one"
        )

    def spawn(self, job: Job[Any]) -> Callable[[], None]:
        raise ScopeError(
            f"spawn() needs a loop that keeps running after the call returns, and a "
            f"{self.scope_name!r}-scope runner has none; use "
            f'get_runner({self.backend.name!r}, scope="process") for background tasks'
        )

    def check_close(self) -> None:
        """Raise if close() cannot be called from here: from a thread running a loop,
        which the closing would have to wait in."""
        library = running_library()
        if library is not None:
            raise close_in_loop_error(self.backend.name, library.name, self.on_own_loop())

    @abc.abstractmethod
    def close(self, grace: float, *, final: bool = True) -> None:
        """Drain and close the loop(s). *final*: the runner is closed for good; else
        (a shared runner) the next call starts a fresh loop."""

    @abc.abstractmethod
    def after_fork_in_child(self) -> None:
        """Forget loops inherited from the parent process; never touch them."""


abandoned_after_fork: list[object] = []


class ProcessScope(RunnerScope):
    scope_name = "process"

    def __init__(self, backend: Backend, options: CommonOptions) -> None:
        super().__init__(backend, options)
        self._lock = threading.Lock()
        self._thread: LoopThread | None = None

    def _start(self, dead: LoopThread | None = None) -> LoopThread:
        """The loop thread, started if there is none or it has died; *dead* is one the
        caller found dead, though it may not say so yet."""
        with self._lock:
            if self.closed:
                raise self.closed_error()
            thread = self._thread
            # A thread that is shutting down while the runner is open has died (close()
            # sets closed first): it may still be alive for a moment, settling its jobs.
            if thread is None or thread is dead or not thread.alive or thread.shutting_down:
                if thread is not None:
                    thread.shutting_down = True
                    logger.error("the %s loop thread died; starting a new one", self.backend.name)
                self._thread = None
                thread = self.backend.loop_thread(self.options)
                thread.start()
                self._thread = thread
            return thread

    def _submit(self, job: Job[Any], *, spawned: bool = False) -> LoopThread:
        """Submit *job* to the loop thread (started or replaced if need be); a *spawned*
        job is also one of the thread's background jobs."""
        thread = self._thread
        if thread is None or thread.shutting_down:
            thread = self._start()
        try:
            self._submit_to(thread, job, spawned)
        except RunnerClosed:
            if self.closed:
                raise
            # The loop ended between our look and the submission: it died.
            thread = self._start(dead=thread)
            self._submit_to(thread, job, spawned)
        return thread

    @staticmethod
    def _submit_to(thread: LoopThread, job: Job[Any], spawned: bool) -> None:
        if not spawned:
            thread.submit(job)
            return
        thread.spawned.add(job)
        try:
            thread.submit(job)
        except RunnerClosed:
            thread.spawned.discard(job)
            raise

    def run(self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
        thread = self._thread
        library = running_library()
        if library is not None and bridge_owner() is self:
            return self.reenter(library, fn, args, kwargs)
        if thread is not None and thread.in_loop_thread():
            raise own_loop_error((library or self.backend.library).name, self.backend.name)
        # Another loop may run in this thread (a notebook, an async app): the call
        # blocks it until done, like any blocking I/O.
        lock = threading.Lock()
        lock.acquire()
        job = new_job(fn, args, kwargs, self.options.timeout, lock, self.owner)
        thread = self._submit(job)
        self._wait(job, thread)
        return job.outcome()

    def _wait(self, job: Job[Any], thread: LoopThread) -> None:
        lock = job.lock
        assert lock is not None
        take_back = None
        try:
            if lock.acquire(timeout=_LEND_AFTER):
                return
            take_back = thread.lend_worker()
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
        finally:
            if take_back is not None:
                take_back()

    def on_own_loop(self) -> bool:
        thread = self._thread
        return thread is not None and thread.in_loop_thread()

    async def call_async_from_elsewhere(
        self, caller: Library, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
    ) -> Any:
        job = new_job(fn, args, kwargs, self.options.timeout, None, self.owner)
        wake, wait = caller.waiter()
        job.notify = wake
        thread = self._submit(job)
        await wait(functools.partial(thread.cancel, job, CancelReason.CANCELLED))
        return job.outcome()

    def spawn(self, job: Job[Any]) -> Callable[[], None]:
        assert job.future is not None
        thread = self._submit(job, spawned=True)
        job.future.add_done_callback(lambda _: thread.spawned.discard(job))
        return functools.partial(thread.cancel, job, CancelReason.CANCELLED)

    def check_close(self) -> None:
        if self.on_own_loop():
            library = running_library() or self.backend.library
            raise close_in_loop_error(self.backend.name, library.name, own_loop=True)
        # From another loop's thread close() only waits for this runner's thread.

    def close(self, grace: float, *, final: bool = True) -> None:
        with self._lock:
            if final:
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


class _ThreadMark:
    """Kept in a thread's local storage next to its loop: when the thread ends (whoever
    started it — threading, _thread, C code), the storage is cleared and this goes."""

    __slots__ = ("__weakref__",)


class ThreadScope(RunnerScope):
    scope_name = "thread"

    def __init__(self, backend: Backend, options: CommonOptions) -> None:
        super().__init__(backend, options)
        self._lock = threading.Lock()
        self._local = threading.local()
        #: Every loop of this runner, in whatever thread.
        self._loops: set[DrivenLoop] = set()
        #: Loops whose thread has ended: idle for ever, closed by the next thread that
        #: opens a loop, or by close(). Appended to without the lock, by the ending
        #: thread's clean-up, which may run anywhere.
        self._ended: collections.deque[DrivenLoop] = collections.deque()
        #: ``closing``: the loop this thread is closing now, if any (code that runs on
        #: it meanwhile, a ``loop_local`` value's ``aclose``, is on this runner's loop).
        self._closer = threading.local()

    def _open(self) -> DrivenLoop:
        if _gevent.threading_patched():
            _gevent.refuse_scope("thread", self.backend.name)
        with self._lock:
            if self.closed:
                raise self.closed_error()
            orphans = self._take_ended()
        for orphan in orphans:
            self._close_loop(orphan)
        # Made in an empty context: what a loop sets up when it is made (asyncio's
        # self-pipe reader) keeps the context it was made in, for the loop's lifetime,
        # and the caller's may hold a request, its app, anything.
        loop = contextvars.Context().run(self.backend.open_loop, self.options)
        mark = _ThreadMark()
        weakref.finalize(mark, self._thread_ended, loop)
        with self._lock:
            self._loops.add(loop)
        self._local.loop = loop
        self._local.mark = mark
        return loop

    def on_own_loop(self) -> bool:
        loop: DrivenLoop | None = getattr(self._local, "loop", None)
        if loop is not None and loop.busy:
            return True
        return getattr(self._closer, "closing", None) is not None

    def _thread_ended(self, loop: DrivenLoop) -> None:
        self._ended.append(loop)

    def _take_ended(self) -> list[DrivenLoop]:
        """The loops of threads that have ended, forgotten (hold the lock)."""
        ended = []
        while self._ended:
            loop = self._ended.popleft()
            if loop in self._loops:
                self._loops.discard(loop)
                ended.append(loop)
        return ended

    def run(self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
        library = running_library()
        if library is not None:
            if bridge_owner() is self:
                return self.reenter(library, fn, args, kwargs)
            raise self.refuse_in_loop(library, own_loop=self.on_own_loop())
        loop: DrivenLoop | None = getattr(self._local, "loop", None)
        if loop is None or loop.closed:
            loop = self._open()
        if loop.busy:
            # Called while this thread's call has not started its loop yet: by a
            # finalizer or a signal handler that ran in between.
            raise own_loop_error(self.backend.library.name, self.backend.name)
        job = new_job(fn, args, kwargs, self.options.timeout, None, self.owner)
        # No lock here (taking one would cost every call more than all the rest of
        # this method): close() marks the loop retired, then looks whether it is busy;
        # this thread marks it busy, then looks whether it is retired. Whichever looks
        # second sees the other's mark, so a loop is never closed while a call drives
        # it, nor left open by both; _close_loop lets only one of them close it.
        try:
            loop.busy = True
            if loop.retired or loop.closed:
                raise self.closed_error()
            loop.run_job(job)
        finally:
            loop.busy = False
            if loop.broken or loop.retired or self.closed:
                self._close_loop(loop)
                self._forget(loop)
        return job.outcome()

    def _forget(self, loop: DrivenLoop) -> None:
        with self._lock:
            self._loops.discard(loop)
        if getattr(self._local, "loop", None) is loop:
            self._local.loop = None

    def _close_loop(self, loop: DrivenLoop) -> None:
        if not loop.lock.acquire(blocking=False):
            return  # closed, or being closed, by another thread
        loop.closed = True
        if loop.broken:
            return
        closer = self._closer
        outer, closer.closing = getattr(closer, "closing", None), loop
        try:
            loop.close()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            # Never into the caller: this may run inside another thread's call.
            logger.exception("closing a thread-scope loop failed")
        finally:
            closer.closing = outer

    def close(self, grace: float, *, final: bool = True) -> None:
        with self._lock:
            if final:
                self.closed = True
            loops = [*self._take_ended(), *self._loops]
            self._loops = set()
            retired_local = self._local
            if not final:  # every thread opens a fresh loop at its next call
                self._local = threading.local()
        del retired_local  # its threads' marks go: their loops are in hand already
        for loop in loops:
            # A loop busy in its own thread is closed by that thread when its call
            # ends (see run() for why this order needs no lock).
            loop.retired = True
            if not loop.busy:
                self._close_loop(loop)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        abandoned_after_fork.extend(self._loops)
        self._loops = set()
        self._ended = collections.deque()
        self._local = threading.local()
        self._closer = threading.local()


class CallScope(RunnerScope):
    scope_name = "call"

    def __init__(self, backend: Backend, options: CommonOptions) -> None:
        super().__init__(backend, options)
        self._local = threading.local()

    def run(self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
        library = running_library()
        if library is not None:
            if bridge_owner() is self:
                return self.reenter(library, fn, args, kwargs)
            raise self.refuse_in_loop(library, own_loop=self.on_own_loop())
        if self.closed:
            raise self.closed_error()
        if _gevent.threading_patched():
            _gevent.refuse_scope("call", self.backend.name)
        job = new_job(fn, args, kwargs, self.options.timeout, None, self.owner)
        # The coroutine runs in the job's context; the loop itself, in an empty one, so
        # that nothing it leaves behind (trio's run keeps reference cycles until the
        # garbage collector runs) holds on to the caller's.
        # Whether one of this runner's calls runs in this thread now: never two, as a
        # call from inside one is re-entered or refused above.
        local = self._local
        local.active = True
        try:
            contextvars.Context().run(self.backend.run_fresh, job, self.options)
        finally:
            local.active = False
        return job.outcome()

    def on_own_loop(self) -> bool:
        return getattr(self._local, "active", False)

    def close(self, grace: float, *, final: bool = True) -> None:
        if final:
            self.closed = True

    def after_fork_in_child(self) -> None:
        pass  # nothing outlives a call


SCOPE_CLASSES: Final[dict[str, type[RunnerScope]]] = {
    "process": ProcessScope,
    "thread": ThreadScope,
    "call": CallScope,
}
