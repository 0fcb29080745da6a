"""What a backend provides, and the parts of it every backend shares.

A backend knows one event-loop library (asyncio, trio, ...) and how to run a job on a
loop of it: in the calling thread (:class:`DrivenLoop`, for the ``thread`` and ``call``
scopes) and in a thread of its own (:class:`LoopThread`, for the ``process`` scope). The
core (scopes, runner, Flask's fast path) does the rest once for all backends. The
public names are re-exported by :mod:`loopshim.abc`.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import contextvars
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Final, Protocol

from .._errors import ArgumentError, BackendNotFound, LoopError, RunnerClosed
from .._options import CommonOptions, Validator
from . import _gevent
from ._activity import LoopActivity
from ._job import Job
from ._log import logger
from ._watchdog import BlockWatchdog

__all__ = [
    "CANCEL_GRACE",
    "CLEANUP_GRACE",
    "SHUTDOWN_OVERHEAD",
    "AsyncEvent",
    "Backend",
    "Canceller",
    "DrivenLoop",
    "Library",
    "LoopThread",
    "libraries",
    "library",
    "machinery_of",
    "register_library",
    "running_library",
]

#: How long ``close()`` waits for cancelled tasks to unwind before giving up on them.
CANCEL_GRACE: Final = 5.0
#: How long closing a loop's ``loop_local`` values may take in all.
CLEANUP_GRACE: Final = 5.0
#: The longest a loop's shutdown can take beyond the grace period given to its jobs:
#: cancelled jobs unwinding, loop-local values closing, async generators closing,
#: leftover tasks unwinding, the executor stopping.
SHUTDOWN_OVERHEAD: Final = 4 * CANCEL_GRACE + CLEANUP_GRACE
#: How long a loop thread interrupted while starting is given to come up and be closed.
_START_GRACE: Final = 5.0


class AsyncEvent(Protocol):
    """An event of an async library (``asyncio.Event``, ``trio.Event``)."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


class Canceller:
    """What :meth:`Library.canceller` returns: entered and left in one task (``with``);
    ``cancel()``, from another task of the same loop while the first is suspended inside
    it, cancels what it awaits there. This base class cancels nothing.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __enter__(self) -> Canceller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def cancel(self) -> None:
        """Cancel what the task awaits inside the ``with`` block (nothing here)."""


class Library(abc.ABC):
    """An async library, as loopshim asks about it: is a loop of it running in this
    thread, which one, and how to do a few things on it.

    Backends that share a library (asyncio and uvloop) share one instance.

    .. versionadded:: 0.1
    """

    #: The library's name, as ``sniffio`` would give it: ``"asyncio"``, ``"trio"``.
    name: str

    @abc.abstractmethod
    def running(self) -> bool:
        """Whether a loop of this library is running in the calling thread right now.
        Called on every call: it must be cheap."""

    def running_check(self) -> Callable[[], object]:
        """What :func:`running_library` calls to learn whether a loop of this library
        runs in the calling thread: a callable whose result is true when one does. By
        default :meth:`running`; a library that can tell with a function written in C
        returns that one, which spares every call a Python frame.

        .. versionadded:: 0.1
        """
        return self.running

    @abc.abstractmethod
    def current_loop_key(self) -> object | None:
        """A hashable object identifying the loop running the current task (its loop,
        a trio run's token), or None outside one."""

    @abc.abstractmethod
    def new_event(self) -> AsyncEvent:
        """A new event of this library (call inside a task of it)."""

    @abc.abstractmethod
    def within(self, seconds: float, fn: Callable[[], Awaitable[object]]) -> Awaitable[bool]:
        """Await ``fn()``; cancel it with the library's own cancellation after *seconds*.
        Whether it finished in time. (A coroutine function: ``await lib.within(...)``.)"""

    @abc.abstractmethod
    def start_task(
        self, fn: Callable[[], Awaitable[object]], *, context: contextvars.Context, name: str
    ) -> Callable[[], object]:
        """Start ``fn()`` as a task of its own on the running loop, in *context*;
        return what cancels it."""

    async def call_in_task(self, job: Job[Any]) -> None:
        """Run *job* in the current task (:meth:`within_timeout`), store ``job.result``
        or ``job.error`` (any exception), and end with ``job.complete(None)``."""
        try:
            if job.timeout is None:
                job.result = await job.awaitable()
            else:
                job.result = await self.within_timeout(job)
        except BaseException as exc:
            job.error = exc
        finally:
            job.complete(None)

    @abc.abstractmethod
    def within_timeout(self, job: Job[Any]) -> Awaitable[Any]:
        """Await ``job.awaitable()`` in the current task, cancelled with the library's
        own cancellation after ``job.timeout`` seconds, and then raise the job's
        ``cancelled_error``. (A coroutine function.)"""

    @abc.abstractmethod
    def waiter(
        self,
    ) -> tuple[Callable[[], object], Callable[[Callable[[], object]], Awaitable[None]]]:
        """For a task of this library that waits for something done in another thread:
        ``(wake, wait)``. ``wake()`` may be called from any thread, once; ``await
        wait(on_cancel)`` returns once woken. If the waiting task is cancelled,
        ``on_cancel()`` is called, the wait goes on (shielded) until woken, and then the
        cancellation propagates. Call it inside a task of this library."""

    def canceller(self) -> Canceller:
        """A context manager for a task of this library that lets another task cancel
        what the task awaits inside it, with the library's own cancellation (an ASGI
        request's async call, when its client disconnects). The default cancels
        nothing.

        .. versionadded:: 0.1
        """
        return Canceller()

    def machinery(self) -> tuple[str, ...]:
        """Directories whose code is this library's own, not the user's (the blocked-loop
        warning skips their frames to name the user's coroutine)."""
        return ()

    def watch_loop(self, activity: LoopActivity) -> None:
        """Hook *activity* into the running loop for the blocked-loop watchdog
        (``block_warning``). Called once, on the loop thread, from a callback.

        Report the loop's waits for events if that is cheap
        (:meth:`LoopActivity.wrap_wait` around its ``select``, or the pair of hooks of
        :meth:`LoopActivity.waits`), or only its wakes (:meth:`LoopActivity.wakes`), or
        have a timer on the loop beat (:meth:`LoopActivity.beats`). The default does
        none of these: the watchdog then probes the loop through
        :meth:`LoopThread.call_soon`, a thread hop each, which places a block's start
        less exactly.

        .. versionadded:: 0.1
        """
        return  # no hook: the watchdog probes the loop


#: The libraries loopshim knows, asked in order which one runs in a thread.
libraries: list[Library] = []
#: Each library's :meth:`~Library.running_check`, beside the library.
_running_checks: tuple[tuple[Callable[[], object], Library], ...] = ()


def register_library(library: Library) -> Library:
    """Make *library* known to the core (once per name); return the one registered."""
    global _running_checks
    for known in libraries:
        if known.name == library.name:
            return known
    libraries.append(library)
    _running_checks = (*_running_checks, (library.running_check(), library))
    return library


def library(name: str) -> Library:
    """The known library called *name* (``"asyncio"``, ``"trio"``), for backends that
    run a library loopshim knows already.

    .. versionadded:: 0.1
    """
    for known in libraries:
        if known.name == name:
            return known
    raise BackendNotFound(
        f"no async library {name!r} is known; the known ones are "
        f"{', '.join(lib.name for lib in libraries)}"
    )


def running_library() -> Library | None:
    """The library running a loop in this thread right now, if any."""
    for running, library in _running_checks:
        if running():
            return library
    return None


class DrivenLoop(abc.ABC):
    """An event loop that runs in the calling thread only while a call runs.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        #: True while a call drives the loop (set and cleared by its thread).
        self.busy = False
        #: Taken, for good, by whoever closes the loop: never two closers.
        self.lock = threading.Lock()
        self.closed = False
        #: Set when the loop can no longer be used (its run died under an interrupt).
        self.broken = False
        #: Set when the runner was closed: a loop busy then is closed by its thread
        #: when the call ends.
        self.retired = False

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
    """An event loop running in its own daemon thread, named ``loopshim-<backend>``.

    .. versionadded:: 0.1
    """

    def __init__(self, backend: Backend, options: CommonOptions) -> None:
        self.backend = backend
        self.options = options
        #: Set (from any thread) once shutdown is requested; new jobs are refused.
        self.shutting_down = False
        self.startup_error: BaseException | None = None
        #: Background jobs whose future is not settled yet, to settle if the loop ends
        #: without them (it died, or a submission arrived as it was closing).
        self.spawned: set[Job[Any]] = set()
        self._ready = _gevent.new_event()
        self._thread = _gevent.new_thread(self._thread_main, f"loopshim-{backend.name}")
        self._get_ident = _gevent.native_get_ident()
        self._watchdog: BlockWatchdog | None = None

    def start(self) -> None:
        """Start the thread and wait until its loop accepts jobs."""
        self._thread.start()
        try:
            self._ready.wait()
        except BaseException:
            # Interrupted (Ctrl-C) while the loop starts: nobody would ever close the
            # thread. Let the loop come up, stop it, then let the interrupt through.
            self._ready.wait(_START_GRACE)
            if self.startup_error is None and self._ready.is_set():
                self.close(0)
            raise
        if self.startup_error is not None:
            self._thread.join()
            raise LoopError(
                f"the {self._thread.name} loop thread failed to start: {self.startup_error!r}"
            ) from self.startup_error
        threshold = self.options.block_warning
        if threshold is not None:
            # The backend's own modules are machinery too, wherever they live: those of
            # its classes and of its loop thread's (and of the classes they derive from).
            classes = type(self.backend).__mro__ + type(self).__mro__
            own = machinery_of(*{sys.modules.get(c.__module__) for c in classes} - {None})
            machinery = self.backend.library.machinery() + own
            self._watchdog = BlockWatchdog(self, threshold, machinery, self.backend.library)
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

    def lend_worker(self) -> Callable[[], None] | None:
        """Called by a thread about to wait for a call on this loop: if it is one of the
        loop's worker threads (``to_thread``, the default executor), let its pool run
        one more worker while it waits, and return what takes that place back; else
        ``None`` (the default). Without it, more such callers than workers wait forever
        for calls that wait for a worker.

        .. versionadded:: 0.1
        """
        return None

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
    def cancel(self, job: Job[Any], reason: Any) -> None:
        """Cancel *job* with the backend's own cancellation (thread-safe). The job must
        still end (:meth:`Job.complete`) if it is cancelled before its coroutine took its
        first step: an asyncio task cancelled that early never runs its coroutine, so
        the ``finally`` that would complete the job never runs either."""

    @abc.abstractmethod
    def request_shutdown(self, grace: float) -> None:
        """Ask the loop (thread-safe) to drain its jobs for *grace* seconds, cancel the
        rest, close loop-local values and stop."""


class Backend(abc.ABC):
    """One event-loop library, as the scopes need it: subclass it, and register the
    class with :func:`loopshim.register_backend` (or an entry point in the
    ``loopshim.backends`` group) to get all three scopes and every guarantee loopshim
    gives — context variables, ``sys.exc_info()``, timeouts, re-entrancy checks, fork
    safety, ``loop_local`` and Flask's fast path.

    loopshim validates the options every backend accepts (``timeout``,
    ``shutdown_timeout``, ``debug``, ``block_warning``) and those named in
    :attr:`extra_options`, then calls ``backend_class(name, **extra)``.

    .. versionadded:: 0.1
    """

    #: The backend's name (the name it was registered under).
    name: str
    #: The async library it runs.
    library: ClassVar[Library]
    #: Its own options: name -> validator(name, value) returning the accepted value.
    extra_options: ClassVar[Mapping[str, Validator]] = {}

    def __init__(self, name: str, **options: Any) -> None:
        if options:
            raise ArgumentError(
                f"{type(self).__name__} takes no options of its own, got {sorted(options)}"
            )
        self.name = name

    @abc.abstractmethod
    def open_loop(self, options: CommonOptions) -> DrivenLoop:
        """A new loop to be driven from the calling thread (``thread`` scope)."""

    @abc.abstractmethod
    def run_fresh(self, job: Job[Any], options: CommonOptions) -> None:
        """Run *job* on a brand-new loop in this thread, then close it (``call`` scope)."""

    @abc.abstractmethod
    def loop_thread(self, options: CommonOptions) -> LoopThread:
        """A new, not yet started, loop thread (``process`` scope)."""

    def describe(self, scope: str) -> str:
        """Extra words on how this backend runs in *scope*, for ``repr`` and
        ``loopshim info``."""
        return ""


def machinery_of(*modules: Any) -> tuple[str, ...]:
    """The directories of *modules* (packages) or their files (modules)."""
    found = []
    for module in modules:
        path = getattr(module, "__file__", None) or ""
        if os.path.basename(path) == "__init__.py":
            found.append(os.path.dirname(path) + os.sep)
        elif path:
            found.append(path)
    return tuple(found)
