"""The :class:`LoopRunner` protocol and the machinery every backend shares.

A backend (``backends/_asyncio.py``, ``backends/_trio.py``) only knows how to drive its
own library's loop: it subclasses :class:`DrivenLoop` (a loop run in the calling thread,
for the ``thread`` and ``call`` scopes) and :class:`LoopThread` (a loop in its own daemon
thread, for the ``process`` scope), and writes the coroutine that executes one
:class:`Job`. Everything else lives here once: validating callables, handing the caller's
context variables and ``sys.exc_info()`` over and back, re-entrancy checks, the three
scopes, closing, thread bookkeeping and fork handling.
"""

from __future__ import annotations

import abc
import atexit
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import operator
import os
import sys
import threading
import types
from asyncio import _get_running_loop
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
    runtime_checkable,
)

from . import _gevent
from ._errors import LoopshimError, OptionError, ReentrantCallError, RunnerClosed, ScopeError
from ._options import CommonOptions, Scope, is_seconds
from ._watchdog import BlockWatchdog

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Backend", "DrivenLoop", "Job", "LoopRunner", "LoopThread", "Runner"]

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

logger = logging.getLogger("loopshim")

#: How long ``close()`` waits for cancelled tasks to unwind before giving up on them.
CANCEL_GRACE: Final = 5.0
#: How long closing a loop's ``loop_local`` values may take in all.
CLEANUP_GRACE: Final = 5.0
#: The longest a loop's shutdown can take beyond the grace period given to its jobs:
#: cancelled jobs unwinding, loop-local values closing, async generators closing,
#: leftover tasks unwinding, the executor stopping.
SHUTDOWN_OVERHEAD: Final = 4 * CANCEL_GRACE + CLEANUP_GRACE
#: How often a caller waiting on a loop thread checks that the thread is still alive.
_LIVENESS_POLL: Final = 1.0
_MISSING: Final = object()
is_not: Final = operator.is_not


@runtime_checkable
class LoopRunner(Protocol):
    """Runs ``async def`` functions to completion from synchronous code.

    Get one with :func:`loopshim.get_runner`. Third-party backends registered with
    :func:`loopshim.register_backend` return objects of this shape.

    .. versionadded:: 0.1
    """

    #: The backend's name: ``"asyncio"``, ``"uvloop"``, ``"trio"`` or a third-party one.
    name: str
    #: Where the loop lives: ``"process"``, ``"thread"`` or ``"call"``.
    scope: str

    def run(self, async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``async_fn(*args, **kwargs)`` to completion and return its result."""

    def wrap(self, async_fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
        """Return a synchronous function that calls :meth:`run` on *async_fn*."""

    def spawn(
        self, async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Start ``async_fn(*args, **kwargs)`` as a background task; never blocks."""

    def close(self, timeout: float | None = None) -> None:
        """Drain background tasks for up to *timeout* seconds, cancel the rest, and
        release the loop(s). Idempotent."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# --------------------------------------------------------------------------- jobs


class Job(Generic[T_co]):
    """One call (or one background task) travelling from the caller to a loop."""

    __slots__ = (
        "args",
        "cancel_reason",
        "context",
        "done",
        "error",
        "final_context",
        "fn",
        "future",
        "handle",
        "handling",
        "kwargs",
        "lock",
        "origin",
        "result",
        "timed_out",
        "timeout",
    )

    def __init__(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: contextvars.Context,
        handling: BaseException | None,
        timeout: float | None,
        lock: threading.Lock | None,
        origin: contextvars.Context | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        #: The context the coroutine starts from (a copy of the caller's).
        self.context = context
        #: The caller's context as it was when the call began (calls, not spawns).
        self.origin = origin
        #: The exception the caller was handling, re-raised around the coroutine.
        self.handling = handling
        self.timeout = timeout
        #: Released by the loop when the job is done (cross-thread calls only).
        self.lock = lock
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        #: The context as the coroutine left it, to copy back to the caller.
        self.final_context: contextvars.Context | None = None
        #: The backend's cancellation handle (an asyncio Task, a trio CancelScope).
        self.handle: Any = None
        #: Why the job was cancelled from outside: "closed" or "interrupted".
        self.cancel_reason: str | None = None
        self.timed_out = False
        self.future: concurrent.futures.Future[Any] | None = None

    @property
    def label(self) -> str:
        """A readable name for messages and logs, whatever the callable does when asked
        for its name or ``repr`` (error paths must not depend on user code behaving)."""
        return describe_callable(self.fn)

    def awaitable(self) -> Awaitable[Any]:
        """What the backend's task awaits: the user's coroutine itself, or — when the
        caller was handling an exception — :func:`call_user` around it."""
        if self.handling is None:
            return self.fn(*self.args, **self.kwargs)
        return call_user(self)

    def complete(self, jobs: set[Job[Any]] | None) -> None:
        """The end of the backend's task, inside it: keep the context the coroutine
        left, stop tracking the job, and finish it."""
        self.final_context = contextvars.copy_context()
        if jobs is not None:
            jobs.discard(self)
        self.finish()

    def refuse(self) -> None:
        """Finish a job that arrived after its loop began to close, without running it."""
        self.error = RunnerClosed(f"{self.label} was not started: the runner is closing")
        self.cancel_reason = "closed"
        self.finish()

    def cancel(self, reason: str) -> None:
        """Cancel the running coroutine (on the loop) with the backend's cancellation."""
        if not self.done:
            self.cancel_reason = reason
            if self.handle is not None:
                self.handle.cancel()

    def finish(self) -> None:
        """Mark the job done and wake whoever waits for it (called on the loop)."""
        self.done = True
        if self.lock is not None:
            self.lock.release()
        if self.future is not None:
            _settle_future(self)

    def cancelled_error(self, cause: BaseException | None) -> BaseException:
        """The error a caller sees for a job cancelled from outside the coroutine
        (*cause* is the backend's cancellation exception, when it has one)."""
        if self.cancel_reason == "closed":
            err: BaseException = RunnerClosed(
                f"{self.label} was cancelled because its runner was closed"
            )
        elif self.cancel_reason is None and self.timeout is not None:
            self.timed_out = True
            err = TimeoutError(
                f"{self.label} did not finish within {self.timeout:g} s and was cancelled "
                "(raise the runner's 'timeout' option, or pass timeout=None for no limit)"
            )
        else:
            return cause if cause is not None else concurrent.futures.CancelledError()
        err.__cause__ = None
        err.__suppress_context__ = True
        return err

    def outcome(self) -> T_co:
        """In the caller: copy the context back, then return the result or raise."""
        final, origin = self.final_context, self.origin
        if final is not None and origin is not None and changed(final, origin):
            copy_back(final)
        error = self.error
        if error is not None:
            self.error = None  # drop the reference cycle through the traceback
            try:
                raise error
            finally:
                del error
        return self.result  # type: ignore[no-any-return]


class CopyBackLog:
    """The values copied back while a WSGI integration isolates one request (see
    ``isolate_requests``), to be reset when the request ends."""

    __slots__ = ("busy", "own", "tokens")

    def __init__(self) -> None:
        self.tokens: list[contextvars.Token[Any]] = []
        #: The token of :data:`copied_back` itself, set for this request.
        self.own: contextvars.Token[Any] | None = None
        #: How many frames of the request are running (its call, or one step of its
        #: response's iteration); a log not busy belongs to a request that has returned.
        self.busy = 0


#: The log of the request being served in this context, if any.
copied_back: contextvars.ContextVar[CopyBackLog | None] = contextvars.ContextVar(
    "loopshim.copied_back", default=None
)


def describe_callable(fn: object) -> str:
    """*fn*'s qualified name, else its ``repr``, else its type's name: never raises."""
    try:
        name = getattr(fn, "__qualname__", None)
        return name if isinstance(name, str) and name else repr(fn)
    except Exception:
        return f"<{type(fn).__qualname__} object>"


def changed(final: contextvars.Context, origin: contextvars.Context) -> bool:
    """Whether a variable in *final* holds another object than in *origin*, by
    identity: comparing the contexts would compare values with ``==``, which user types
    may define to raise (numpy arrays), to return a non-bool, or to call equal two
    objects that are not the same."""
    # Same length: the same variables (they can be set, never removed), and contexts of
    # the same variables iterate in the same order; were they ever not to, this would
    # only say "changed" and copy_back would find nothing to do.
    return len(final) != len(origin) or any(map(is_not, final.values(), origin.values()))


def copy_back(final: contextvars.Context) -> None:
    """Set, in the current context, every variable whose value in *final* differs."""
    # The caller was blocked during the call, so anything that differs was set by the
    # coroutine: apply it to the caller's own context (asgiref does the same).
    log = copied_back.get()
    for var, value in final.items():
        if var.get(_MISSING) is not value:
            token = var.set(value)
            if log is not None:
                log.tokens.append(token)


if sys.version_info >= (3, 11):

    def add_note(exc: BaseException, note: str) -> None:
        """Attach *note* to *exc* (PEP 678)."""
        exc.add_note(note)

else:

    def add_note(exc: BaseException, note: str) -> None:
        """Attach *note* to *exc* as PEP 678 does; on 3.10 the ``exceptiongroup``
        backport (which trio depends on) prints ``__notes__`` in tracebacks."""
        notes = getattr(exc, "__notes__", None)
        if not isinstance(notes, list):
            notes = []
            exc.__notes__ = notes  # type: ignore[attr-defined]
        notes.append(note)


def log_cancelled_at_close(backend: str, jobs: list[Job[Any]], grace: float) -> None:
    """Log, once, the background tasks that ``close()`` had to cancel."""
    spawned = [job for job in jobs if job.future is not None]
    if spawned:
        logger.warning(
            "closing the %s runner cancelled %d background task%s still running after "
            "the %g s grace period (the shutdown_timeout option): %s",
            backend,
            len(spawned),
            "" if len(spawned) == 1 else "s",
            grace,
            ", ".join(job.label for job in spawned),
        )


def _settle_future(job: Job[Any]) -> None:
    future = job.future
    assert future is not None
    error = job.error
    # A future settled already (cancelled, or failed with RunnerClosed when the loop
    # thread died) has told its story. Among others, this is a dead loop's coroutine
    # closed by the garbage collector, which runs wherever it is triggered: formatting a
    # traceback there can break the code it interrupts (a compile() in progress).
    if error is not None and job.cancel_reason is None and not future.done():
        logger.error("background task %s failed", job.label, exc_info=error)
    # Another thread may cancel the future at any moment, so every settling step may
    # find it already done; that must never raise on the loop.
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error is None:
            future.set_result(job.result)
        elif job.cancel_reason is not None:
            future.cancel()
        else:
            future.set_exception(error)


async def call_user(job: Job[T]) -> T:
    """Await the job's coroutine; while it runs, ``sys.exc_info()`` is the exception
    the caller was handling, exactly as if the coroutine ran inside its ``except``."""
    handling = job.handling
    if handling is None:
        return await job.fn(*job.args, **job.kwargs)  # type: ignore[no-any-return]
    tb = handling.__traceback__
    try:
        raise handling
    except BaseException:
        handling.__traceback__ = tb  # raising it here must not alter the caller's traceback
        return await job.fn(*job.args, **job.kwargs)  # type: ignore[no-any-return]


# ------------------------------------------------------------------- input checks


def is_async_callable(fn: object) -> bool:
    """Whether *fn* is a coroutine function, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    is_instance = callable(fn) and not inspect.isroutine(fn) and not isinstance(fn, type)
    return is_instance and inspect.iscoroutinefunction(type(fn).__call__)


def check_async_callable(fn: object, where: str) -> None:
    """Raise :class:`TypeError` unless :func:`is_async_callable` accepts *fn*."""
    if is_async_callable(fn):
        return
    if inspect.iscoroutine(fn):
        name = getattr(fn, "__qualname__", "coroutine")
        fn.close()  # it can never run now; closing avoids a "never awaited" warning
        raise TypeError(
            f"{where}() takes an async function, not a coroutine object: got {name}(...). "
            f"Pass the function and its arguments instead, e.g. {where}(fn, *args) "
            f"rather than {where}(fn(*args))"
        )
    if inspect.isawaitable(fn):
        raise TypeError(
            f"{where}() takes an async function, not an awaitable: got {fn!r}. "
            "Wrap it: `async def fn(): return await awaitable`"
        )
    if callable(fn):
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise TypeError(
            f"{where}() takes an async function (defined with 'async def'), but {name} is "
            "a regular callable; call it directly, it needs no event loop"
        )
    raise TypeError(f"{where}() takes an async function, got {fn!r} ({type(fn).__name__})")


def running_loop_library() -> str | None:
    """The async library running a loop in this thread right now, if any."""
    if _get_running_loop() is not None:
        return "asyncio"
    # trio marks every run (trio.run, guest mode, loopshim's driver) in sniffio's
    # thread-local for its whole duration; reading that is much cheaper than
    # trio.lowlevel.in_trio_task(), which raises and catches an AttributeError
    # whenever the answer is no.
    sniffio = sys.modules.get("sniffio") if "trio" in sys.modules else None
    if sniffio is not None and sniffio.thread_local.name == "trio":
        return "trio"
    return None


def reentrant_error(library: str, what: str) -> ReentrantCallError:
    """The error for a blocking call made from a thread that runs an event loop."""
    return ReentrantCallError(
        f"{what} blocks until the coroutine finishes, but this thread is running an "
        f"event loop ({library}): blocking here would stall that loop or deadlock. "
        "In async code, await the function directly; in sync code called from async "
        "code, move the blocking call to a worker thread (for example with "
        "anyio.to_thread.run_sync or asyncio.to_thread)"
    )


def _check_not_in_loop(what: str) -> None:
    library = running_loop_library()
    if library is not None:
        raise reentrant_error(library, what)


# ----------------------------------------------------- what a backend provides


class DrivenLoop(abc.ABC):
    """An event loop that runs in the calling thread only while a call runs."""

    def __init__(self) -> None:
        #: Held while a call drives the loop, and while the loop is being closed.
        self.lock = threading.Lock()
        self.closed = False
        #: Set when the loop can no longer be used (its run died under an interrupt).
        self.broken = False

    @abc.abstractmethod
    def run_job(self, job: Job[Any]) -> None:
        """Run *job* on this loop, in this thread, until it is done.

        If the caller is interrupted (``KeyboardInterrupt`` from a signal handler), the
        job is cancelled and driven to its end before the interrupt propagates.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close loop-local values and the loop. Called from any thread, while idle."""


class LoopThread(abc.ABC):
    """An event loop running in its own daemon thread, named ``loopshim-<backend>``."""

    def __init__(self, backend_name: str, options: CommonOptions) -> None:
        self.options = options
        #: Set (from any thread) once shutdown is requested; new jobs are refused.
        self.shutting_down = False
        self.startup_error: BaseException | None = None
        #: Background jobs whose future is not settled yet, to settle if the loop ends
        #: without them (it died, or a submission arrived as it was closing).
        self.spawned: set[Job[Any]] = set()
        self._ready = _gevent.new_event()
        self._thread = _gevent.new_thread(self._thread_main, f"loopshim-{backend_name}")
        self._get_ident = _gevent.native_get_ident()
        self._watchdog: BlockWatchdog | None = None

    def start(self) -> None:
        """Start the thread and wait until its loop accepts jobs."""
        self._thread.start()
        self._ready.wait()
        if self.startup_error is not None:
            self._thread.join()
            raise LoopshimError(
                f"the {self._thread.name} loop thread failed to start: {self.startup_error!r}"
            ) from self.startup_error
        threshold = self.options.block_warning
        if threshold is not None:
            self._watchdog = BlockWatchdog(self, threshold)
            self._watchdog.start()

    @property
    def name(self) -> str:
        """The loop thread's name, ``loopshim-<backend>``."""
        return self._thread.name

    @property
    def ident(self) -> int | None:
        """The loop thread's OS-level identifier, once started."""
        return self._thread.ident

    def _thread_main(self) -> None:
        try:
            self.serve()
        except BaseException as exc:
            if not self._ready.is_set():
                self.startup_error = exc
            else:
                logger.critical("loop thread %s died", self._thread.name, exc_info=exc)
        finally:
            self.shutting_down = True
            self._ready.set()
            self._settle_orphans()
            if self._watchdog is not None:
                self._watchdog.stop()

    def _settle_orphans(self) -> None:
        for job in list(self.spawned):
            future = job.future
            assert future is not None
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(
                    RunnerClosed(f"{job.label} never ran to completion: its loop thread stopped")
                )

    def ready(self) -> None:
        """Called by :meth:`serve`, on the loop, once jobs can be submitted."""
        self._ready.set()

    @property
    def alive(self) -> bool:
        """Whether the loop thread is still running."""
        return self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        """Whether the current thread is this loop's thread."""
        return self._get_ident() == self._thread.ident

    def close(self, grace: float) -> None:
        """Ask the loop to drain and stop, then join its thread (bounded)."""
        if self._thread.is_alive():
            self.shutting_down = True
            self.request_shutdown(grace)
            self._thread.join(grace + SHUTDOWN_OVERHEAD)
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog.join()
        if self._thread.is_alive():
            logger.warning(
                "loop thread %s did not stop within %.1f s (a coroutine is blocking it "
                "or refuses cancellation); abandoning it",
                self._thread.name,
                grace + SHUTDOWN_OVERHEAD,
            )

    @abc.abstractmethod
    def serve(self) -> None:
        """Run the loop in this thread; call :meth:`ready`; return after shutdown."""

    @abc.abstractmethod
    def call_soon(self, callback: Callable[[], object]) -> None:
        """Have the loop call *callback* soon (thread-safe; raises once the loop ended)."""

    @abc.abstractmethod
    def submit(self, job: Job[Any]) -> None:
        """Start *job* on the loop (thread-safe; direct when on the loop thread)."""

    @abc.abstractmethod
    def cancel(self, job: Job[Any], reason: str) -> None:
        """Cancel *job* with the backend's own cancellation (thread-safe)."""

    @abc.abstractmethod
    def request_shutdown(self, grace: float) -> None:
        """Ask the loop (thread-safe) to drain its jobs for *grace* seconds, cancel the
        rest, close loop-local values and stop."""


class Backend(abc.ABC):
    """One event-loop library, as the scopes need it."""

    name: str

    @abc.abstractmethod
    def open_loop(self, options: CommonOptions) -> DrivenLoop:
        """A new loop to be driven from the calling thread (``thread`` scope)."""

    @abc.abstractmethod
    def run_fresh(self, job: Job[Any], options: CommonOptions) -> None:
        """Run *job* on a brand-new loop in this thread, then close it (``call`` scope)."""

    @abc.abstractmethod
    def loop_thread(self, options: CommonOptions) -> LoopThread:
        """A new, not yet started, loop thread (``process`` scope)."""

    def describe(self) -> str:
        """Extra words on how this backend runs, for ``repr`` and ``loopshim info``."""
        return ""


# ------------------------------------------------------------------------ scopes


if sys.version_info >= (3, 11):
    _handled_exception = sys.exception
else:

    def _handled_exception() -> BaseException | None:
        return sys.exc_info()[1]


def _new_job(
    fn: Callable[..., Awaitable[Any]],
    args: Any,
    kwargs: Any,
    timeout: float | None,
    lock: threading.Lock | None,
) -> Job[Any]:
    origin = contextvars.copy_context()
    return Job(fn, args, kwargs, origin.copy(), _handled_exception(), timeout, lock, origin)


class _Scope(abc.ABC):
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


_abandoned_after_fork: list[object] = []


class _ProcessScope(_Scope):
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
        library = running_loop_library()
        if library is not None or thread.in_loop_thread():
            raise reentrant_error(library or self.backend.name, "run()")
        lock = threading.Lock()
        lock.acquire()
        job = _new_job(fn, args, kwargs, self.options.timeout, lock)
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
                thread.cancel(job, "interrupted")
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
        return functools.partial(thread.cancel, job, "cancelled")

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
            _abandoned_after_fork.append(self._thread)
            self._thread = None


class _ThreadScope(_Scope):
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
        library = running_loop_library()
        if library is not None:
            raise reentrant_error(library, "run()")
        loop: DrivenLoop | None = getattr(self._local, "loop", None)
        if loop is None or loop.closed:
            loop = self._open()
        job = _new_job(fn, args, kwargs, self.options.timeout, None)
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
        _check_not_in_loop("close()")
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
        _abandoned_after_fork.extend(self._loops.values())
        self._loops = {}
        self._local = threading.local()


class _CallScope(_Scope):
    scope_name = "call"

    def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        _check_not_in_loop("run()")
        if self.closed:
            raise self.closed_error()
        if _gevent.threading_patched():
            _gevent.refuse_scope("call", self.backend.name)
        job = _new_job(fn, args, kwargs, self.options.timeout, None)
        # The coroutine runs in the job's context; the loop itself, in an empty one, so
        # that nothing it leaves behind (trio's run keeps reference cycles until the
        # garbage collector runs) holds on to the caller's.
        contextvars.Context().run(self.backend.run_fresh, job, self.options)
        return job.outcome()

    def close(self, grace: float) -> None:
        self.closed = True

    def after_fork_in_child(self) -> None:
        pass  # nothing outlives a call


_SCOPES: Final[dict[str, type[_Scope]]] = {
    "process": _ProcessScope,
    "thread": _ThreadScope,
    "call": _CallScope,
}

# Every runner not closed yet, so that interpreter exit closes (and drains) it even if
# the program dropped its last reference: its loop thread would otherwise run on.
_live_runners: set[Runner] = set()


class Runner:
    """The built-in :class:`LoopRunner`: one backend, one scope.

    Create runners with :func:`loopshim.get_runner`, not directly.

    .. versionadded:: 0.1
    """

    def __init__(self, backend: Backend, scope: Scope, options: CommonOptions) -> None:
        if "block_warning" in options.given and scope != "process":
            raise OptionError(
                f"option 'block_warning' applies to process scope only; in {scope} scope "
                "each loop runs in its caller's thread, so blocking code stalls only that "
                "caller. Drop the option, or use process scope"
            )
        self.name = backend.name
        self.scope = scope
        self.options = options
        self._scope = _SCOPES[scope](backend, options)
        _live_runners.add(self)

    def run(self, async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``async_fn(*args, **kwargs)`` on this runner's loop and return its result.

        Blocks the calling thread until the coroutine finishes. Exceptions propagate
        unchanged; context variables the coroutine sets are visible afterwards; with the
        ``timeout`` option the coroutine is cancelled and :class:`TimeoutError` raised.

        .. versionadded:: 0.1
        """
        check_async_callable(async_fn, "run")
        return self._scope.call(async_fn, *args, **kwargs)  # type: ignore[no-any-return]

    def wrap(self, async_fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
        """Return a synchronous function that runs *async_fn* on this runner.

        The wrapper keeps *async_fn*'s name, docstring and signature
        (:func:`functools.wraps`) and forwards positional and keyword arguments.

        .. versionadded:: 0.1
        """
        check_async_callable(async_fn, "wrap")
        call = self._scope.call

        @functools.wraps(async_fn)
        def run_sync(*args: P.args, **kwargs: P.kwargs) -> T:
            return call(async_fn, *args, **kwargs)  # type: ignore[no-any-return]

        # functools.wraps copies __dict__, and with it any "this is a coroutine
        # function" marker; the wrapper is synchronous and must not claim otherwise.
        for marker in _COROUTINE_MARKERS:
            run_sync.__dict__.pop(marker, None)
        return run_sync

    def spawn(
        self, async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Start ``async_fn(*args, **kwargs)`` as a background task and return at once.

        Only ``process`` scope has a loop that outlives the call; the other scopes raise
        :class:`~loopshim.ScopeError`. Callable from sync code in any thread, and from a
        coroutine running on this runner's loop. The task starts in an empty context, so
        it never sees the request that started it unless handed over explicitly. Its
        result or exception lands in the returned future (an exception is also logged
        on the ``loopshim`` logger); ``future.cancel()`` cancels the task; ``close()``
        drains it for ``shutdown_timeout`` seconds, then cancels it.

        .. versionadded:: 0.1
        """
        check_async_callable(async_fn, "spawn")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        job: Job[T] = Job(async_fn, args, kwargs, contextvars.Context(), None, None, None)
        job.future = future
        cancel = self._scope.spawn(job)

        def on_done(fut: concurrent.futures.Future[T]) -> None:
            if fut.cancelled() and not job.done:
                cancel()

        future.add_done_callback(on_done)
        return future

    def close(self, timeout: float | None = None) -> None:
        """Drain background tasks and in-flight calls for up to *timeout* seconds
        (default: the ``shutdown_timeout`` option), cancel what is left, close
        loop-local values and loops, and join the loop thread. Idempotent. Later calls
        raise :class:`~loopshim.RunnerClosed`.

        .. versionadded:: 0.1
        """
        if timeout is None:
            grace = self.options.shutdown_timeout
        elif is_seconds(timeout, zero_ok=True):
            grace = float(timeout)
        else:
            raise OptionError(
                "close(timeout=...) takes the grace period in seconds (a finite number, "
                f"0 or more), or None for the shutdown_timeout option; got {timeout!r}"
            )
        self._scope.close(grace)
        _live_runners.discard(self)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called.

        .. versionadded:: 0.1
        """
        return self._scope.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        extra = self._scope.backend.describe()
        details = f"scope={self.scope} {state}" + (f", {extra}" if extra else "")
        return f"<loopshim.Runner {self.name} {details}>"


#: Markers that make inspect / asyncio treat an object as a coroutine function; a
#: synchronous caller must never expose them.
_COROUTINE_MARKERS: Final = frozenset({"_is_coroutine_marker", "_is_coroutine"})
#: Attributes of the async function a :class:`SyncCall` reads through, as
#: :func:`functools.wraps` would have copied them (``__doc__`` and ``__module__`` are
#: properties, since every class defines them).
_READ_THROUGH: Final = frozenset({"__name__", "__qualname__", "__annotations__"})


class SyncCall(functools.partial[Any]):
    # A synchronous callable that runs an async function on a runner: what
    # sync_caller_maker() makes. Far cheaper than Runner.wrap's function (Flask asks for
    # one on every request): as a partial of the scope's call it is made and called
    # without a Python frame of its own, and the async function's metadata is read
    # through on demand rather than copied — its name, qualified name, docstring, module
    # and annotations, the attributes in its __dict__, and __wrapped__ (so
    # inspect.signature shows its signature). Unlike a function, it does not bind as a
    # method.

    @property
    def __wrapped__(self) -> Callable[..., Awaitable[Any]]:
        return self.args[0]  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        fn = self.args[0]
        if name in _READ_THROUGH:
            return getattr(fn, name)
        own = getattr(fn, "__dict__", None)
        if own is not None and name in own and name not in _COROUTINE_MARKERS:
            return own[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return getattr(self.args[0], "__doc__", None)

    @property
    def __module__(self) -> str | None:  # type: ignore[override]
        return getattr(self.args[0], "__module__", None)

    def __repr__(self) -> str:
        return f"<loopshim sync caller for {self.args[0]!r}>"


def is_plain_async_def(fn: object) -> bool:
    """Whether *fn* is a plain ``async def`` function: the common case, recognised
    without inspect's general checks."""
    return type(fn) is types.FunctionType and bool(fn.__code__.co_flags & inspect.CO_COROUTINE)


def direct_call(runner: LoopRunner) -> Callable[..., Any] | None:
    """What a :class:`SyncCall` for *runner* calls — ``call(async_fn, *args, **kwargs)``
    — for loopshim's own runners; None for any other :class:`LoopRunner`."""
    return runner._scope.call if isinstance(runner, Runner) else None


def sync_caller_maker(runner: LoopRunner) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A function that turns an async function into a synchronous callable running it on
    *runner*: a :class:`SyncCall` for loopshim's own runners, ``runner.wrap`` for any
    other :class:`LoopRunner`."""
    call = direct_call(runner)
    if call is None:
        return runner.wrap

    def make(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not is_plain_async_def(fn):
            check_async_callable(fn, "async_to_sync")
        return SyncCall(call, fn)

    return make


def _close_all_at_exit() -> None:
    # Interpreter exit closes what the program left open, so background tasks are
    # drained (for shutdown_timeout) rather than killed with the daemon thread.
    for runner in list(_live_runners):
        try:
            runner.close()
        except Exception:
            logger.exception("closing %r at exit failed", runner)


atexit.register(_close_all_at_exit)


def _after_fork_in_child() -> None:
    for runner in list(_live_runners):
        runner._scope.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
