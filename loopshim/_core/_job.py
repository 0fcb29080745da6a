"""A job — one call or one background task on its way from a caller to a loop — and
what travels with it: the caller's context variables (in, and back out), the exception
the caller was handling, and why it was cancelled."""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import enum
import operator
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar

from .._errors import RunnerClosed
from ._bridge import bridged
from ._log import logger

__all__ = [
    "CancelReason",
    "CopyBackLog",
    "Job",
    "add_note",
    "background_job",
    "call_handling",
    "changed",
    "copied_back",
    "copy_back",
    "describe_callable",
    "handled_exception",
    "job_of",
    "log_cancelled_at_close",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_MISSING: Final = object()
_is_not: Final = operator.is_not


class CancelReason(enum.Enum):
    """Why a job was cancelled from outside its coroutine."""

    #: Its runner was closed (the caller gets :class:`~loopshim.RunnerClosed`).
    CLOSED = "closed"
    #: Its caller was interrupted (Ctrl-C) while waiting for it.
    INTERRUPTED = "interrupted"
    #: The future of a background task was cancelled.
    CANCELLED = "cancelled"


class Job(Generic[T_co]):
    """One call (or one background task) travelling from the caller to a loop.

    A backend's task runs :meth:`awaitable` on its loop in :attr:`context`, stores
    :attr:`result` or :attr:`error`, sets :attr:`handle` to what cancels it, and ends
    with :meth:`complete`.
    """

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
        "notify",
        "origin",
        "owner",
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
        origin: contextvars.Context | None = None,
        handling: BaseException | None = None,
        timeout: float | None = None,
        lock: threading.Lock | None = None,
        owner: object = None,
        future: concurrent.futures.Future[Any] | None = None,
    ) -> None:
        # Positional parameters: a job is made on every call, and keyword arguments
        # would double the cost of making one.
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
        #: Set: the coroutine runs in the greenlet bridge of this owner (a runner's
        #: scope), so that sync code it calls can call that runner again.
        self.owner = owner
        #: Where a background task's outcome goes (background tasks only).
        self.future = future
        #: Called, on the loop, when the job is done (a waiter in another loop).
        self.notify: Callable[[], object] | None = None
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        #: The context as the coroutine left it, to copy back to the caller.
        self.final_context: contextvars.Context | None = None
        #: The backend's cancellation handle (an asyncio Task, a trio CancelScope).
        self.handle: Any = None
        #: Why the job was cancelled from outside, if it was.
        self.cancel_reason: CancelReason | None = None
        self.timed_out = False

    @property
    def label(self) -> str:
        """A readable name for messages and logs, whatever the callable does when asked
        for its name or ``repr`` (error paths must not depend on user code behaving)."""
        return describe_callable(self.fn)

    def awaitable(self) -> Awaitable[Any]:
        """What the backend's task awaits: the user's coroutine itself, or — when the
        caller was handling an exception — the coroutine inside that ``except``."""
        coro: Any = (
            self.fn(*self.args, **self.kwargs) if self.handling is None else _call_handling(self)
        )
        if self.owner is None:
            return coro  # type: ignore[no-any-return]
        return bridged(coro, self.owner)

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
        self.cancel_reason = CancelReason.CLOSED
        self.finish()

    def cancel(self, reason: CancelReason) -> None:
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
        if self.notify is not None:
            self.notify()

    def cancelled_error(self, cause: BaseException | None) -> BaseException:
        """The error a caller sees for a job cancelled from outside the coroutine
        (*cause* is the backend's cancellation exception, when it has one)."""
        if self.cancel_reason is CancelReason.CLOSED:
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
        # changed(final, origin), without its frame: this is every call's path.
        if (
            final is not None
            and origin is not None
            and (len(final) != len(origin) or any(map(_is_not, final.values(), origin.values())))
        ):
            copy_back(final)
        error = self.error
        if error is not None:
            self.error = None  # drop the reference cycle through the traceback
            try:
                raise error
            finally:
                del error
        return self.result  # type: ignore[no-any-return]


def background_job(
    fn: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    future: concurrent.futures.Future[T],
    owner: object,
) -> Job[T]:
    """The job of a background task (``spawn``): it starts in an empty context, so that
    it never holds on to the request that started it, and its outcome goes to
    *future*."""
    return Job(fn, args, kwargs, contextvars.Context(), owner=owner, future=future)


async def _call_handling(job: Job[T]) -> T:
    """Await the job's coroutine; while it runs, ``sys.exc_info()`` is the exception
    the caller was handling, exactly as if the coroutine ran inside its ``except``.
    (The await itself must be in the ``except``: a coroutine sees the exception being
    handled where it runs, not where it was made.)"""
    handling = job.handling
    assert handling is not None
    tb = handling.__traceback__
    try:
        raise handling
    except BaseException:
        handling.__traceback__ = tb  # raising it here must not alter the caller's traceback
        return await job.fn(*job.args, **job.kwargs)  # type: ignore[no-any-return]


def call_handling(handling: BaseException, fn: Callable[[], T]) -> T:
    """``fn()`` as if called inside the ``except`` block handling *handling* (in
    another thread than the one handling it): :func:`_call_handling` for sync code."""
    tb = handling.__traceback__
    try:
        raise handling
    except BaseException:
        handling.__traceback__ = tb
        return fn()


if sys.version_info >= (3, 11):
    handled_exception = sys.exception
else:

    def handled_exception() -> BaseException | None:
        """The exception being handled in this thread, as ``sys.exception()``."""
        return sys.exc_info()[1]


def job_of(coro: object) -> Job[Any] | None:
    """The job a backend's wrapper coroutine (or a trio task's) runs, read from its
    ``job`` argument; ``None`` for any other coroutine. For debug reports only: it
    looks into the coroutine's frame."""
    frame = getattr(coro, "cr_frame", None)
    job = frame.f_locals.get("job") if frame is not None else None
    return job if isinstance(job, Job) else None


def describe_callable(fn: object) -> str:
    """*fn*'s qualified name, else its ``repr``, else its type's name: never raises."""
    try:
        name = getattr(fn, "__qualname__", None)
        return name if isinstance(name, str) and name else repr(fn)
    except Exception:
        return f"<{type(fn).__qualname__} object>"


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


# ------------------------------------------------------------ context variables


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


def changed(final: contextvars.Context, origin: contextvars.Context) -> bool:
    """Whether a variable in *final* holds another object than in *origin*, by
    identity: comparing the contexts would compare values with ``==``, which user types
    may define to raise (numpy arrays), to return a non-bool, or to call equal two
    objects that are not the same."""
    # Same length: the same variables (they can be set, never removed), and contexts of
    # the same variables iterate in the same order; were they ever not to, this would
    # only say "changed" and copy_back would find nothing to do.
    return len(final) != len(origin) or any(map(_is_not, final.values(), origin.values()))


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


# ----------------------------------------------------------------------- errors


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
