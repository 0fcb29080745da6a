"""The built-in runner: one backend in one scope, behind the :class:`LoopRunner`
protocol."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import sys
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar

from .._errors import OptionError
from .._options import CommonOptions, Scope, is_seconds
from . import _lifecycle
from ._backend import Backend
from ._checks import check_async_callable, is_plain_async_def
from ._job import background_job
from ._scopes import SCOPE_CLASSES

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["COROUTINE_MARKERS", "Runner"]

P = ParamSpec("P")
T = TypeVar("T")

#: Markers that make inspect / asyncio treat an object as a coroutine function; a
#: synchronous caller must never expose them.
COROUTINE_MARKERS: Final = frozenset({"_is_coroutine_marker", "_is_coroutine"})


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
        self.scope: str = scope
        self.options = options
        self._scope = SCOPE_CLASSES[scope](backend, options)
        #: Held by close(): a second close() returns only once the runner is closed.
        self._closing = threading.Lock()
        _lifecycle.track(self)

    def run(self, async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``async_fn(*args, **kwargs)`` on this runner's loop and return its result.

        Blocks the calling thread until the coroutine finishes. Exceptions propagate
        unchanged; context variables the coroutine sets are visible afterwards; with the
        ``timeout`` option the coroutine is cancelled and :class:`TimeoutError` raised.

        .. versionadded:: 0.1
        """
        if not is_plain_async_def(async_fn):  # the common case, recognised cheaply
            check_async_callable(async_fn, "run")
        return self._scope.run(async_fn, args, kwargs)  # type: ignore[no-any-return]

    async def run_async(
        self, async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``async_fn(*args, **kwargs)`` run on this runner's loop, from a coroutine
        on any loop — asyncio, uvloop or trio, found out at the call.

        Needs ``process`` scope (a loop that runs on its own). The caller's loop keeps
        running while it waits; cancelling the awaiting task cancels the call, with the
        backend's own cancellation on the runner's side, and the cancellation reaches
        the caller once the coroutine has unwound. Context variables go in and come back
        as with :meth:`run`; exceptions come back unchanged. Awaited on the runner's own
        loop, it simply awaits the function there, in the same task. This is how a trio
        program uses an asyncio-only client::

            pool = await asyncio_runner.run_async(asyncpg.create_pool, dsn)

        .. versionadded:: 0.1
        """
        check_async_callable(async_fn, "run_async")
        return await self._scope.call_async(async_fn, args, kwargs)  # type: ignore[no-any-return]

    def wrap(self, async_fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
        """Return a synchronous function that runs *async_fn* on this runner.

        The wrapper keeps *async_fn*'s name, docstring and signature
        (:func:`functools.wraps`) and forwards positional and keyword arguments.

        .. versionadded:: 0.1
        """
        check_async_callable(async_fn, "wrap")
        run = self._scope.run

        @functools.wraps(async_fn)
        def run_sync(*args: P.args, **kwargs: P.kwargs) -> T:
            return run(async_fn, args, kwargs)  # type: ignore[no-any-return]

        # functools.wraps copies __dict__, and with it any "this is a coroutine
        # function" marker; the wrapper is synchronous and must not claim otherwise.
        for marker in COROUTINE_MARKERS:
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
        job = background_job(async_fn, args, kwargs, future, self._scope.owner)
        cancel = self._scope.spawn(job)

        def on_done(fut: concurrent.futures.Future[T]) -> None:
            if not fut.cancelled():
                return
            if not job.done:
                cancel()
            # What an executor does for a cancelled future: without it, wait() and
            # as_completed() never count the future as done.
            with contextlib.suppress(RuntimeError, concurrent.futures.InvalidStateError):
                fut.set_running_or_notify_cancel()

        future.add_done_callback(on_done)
        return future

    def close(self, timeout: float | None = None) -> None:
        """Drain background tasks and in-flight calls for up to *timeout* seconds
        (default: the ``shutdown_timeout`` option), cancel what is left, close
        loop-local values and loops, and join the loop thread. Idempotent; a second
        ``close()`` in another thread returns once the first is done.

        A private runner (``get_runner(..., cached=False)``) is then closed for good:
        later calls raise :class:`~loopshim.RunnerClosed`. A shared runner (what
        ``get_runner()`` returns by default) is shared by every holder, so it is never
        closed for one of them: ``close()`` drains and closes its loops now, and the
        next call, from any holder, starts a fresh loop.

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
        self._scope.check_close()
        final = _lifecycle.exiting() or not _lifecycle.is_shared(self)
        caller = sys._getframe(1)
        with self._closing:
            if self._scope.closed:
                return
            if final:
                self._scope.closed_at = f"{caller.f_code.co_filename}:{caller.f_lineno}"
            self._scope.close(grace, final=final)
        if final:
            _lifecycle.forget(self)

    @property
    def closed(self) -> bool:
        """Whether the runner is closed for good (a shared runner never is until the
        interpreter exits).

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
        extra = self._scope.backend.describe(self.scope)
        details = f"scope={self.scope} {state}" + (f", {extra}" if extra else "")
        return f"<loopshim.Runner {self.name} {details}>"
