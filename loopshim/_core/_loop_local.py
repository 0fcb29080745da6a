"""Values that live once per running event loop (``loop_local``), and the per-loop
state that loopshim keeps for every loop it runs."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from .._errors import ArgumentError, UsageError
from . import _backend
from ._backend import Library, libraries
from ._checks import with_article
from ._log import logger

__all__ = ["LoopLocal", "LoopState", "loop_local"]

T = TypeVar("T")

# Maps a loop's key (an asyncio loop, or a trio run's TrioToken) to its LoopState.
_states: dict[object, LoopState] = {}


class _Creating:
    """Marks a value an async factory is still making; later callers wait on it."""

    __slots__ = ("done", "failed")

    def __init__(self, done: Any) -> None:
        self.done = done  # the backend's event, set when the value is stored or failed
        self.failed = False


class LoopState:
    """What loopshim keeps for one event loop: its loop-local values, in creation order."""

    __slots__ = ("_key", "_library", "_values")

    def __init__(self, library: Library) -> None:
        self._key: object = None
        self._values: dict[LoopLocal[Any], object] = {}
        self._library = library

    def attach(self, key: object) -> None:
        """Make this the state of the loop identified by *key* (call inside the loop)."""
        self._key = key
        _states[key] = self

    def __bool__(self) -> bool:
        return bool(self._values)

    async def aclose(self) -> None:
        """Close the loop-local values, newest first, then forget this loop.

        Runs inside the loop while it is still fully alive (the clients' own tasks
        included), before anything is cancelled. Closing all of them may take
        ``CLEANUP_GRACE`` seconds; an ``aclose`` still running then is cancelled and
        logged. A failing
        ``aclose`` is logged with its traceback and does not stop the others;
        ``KeyboardInterrupt`` and ``SystemExit`` are re-raised once the rest is closed.
        """
        if not self._values:  # most loops
            self.detach()
            return
        deadline = time.monotonic() + _backend.CLEANUP_GRACE
        interrupt: BaseException | None = None
        try:
            while self._values:
                local, value = self._values.popitem()
                if local.aclose is None or isinstance(value, _Creating):
                    continue
                error = await _close_one(local, value, self._library, deadline)
                if isinstance(error, (KeyboardInterrupt, SystemExit)) and interrupt is None:
                    interrupt = error
        finally:
            self.detach()
        if interrupt is not None:
            raise interrupt

    def detach(self) -> None:
        """Forget the loop (it is gone, or abandoned after a fork)."""
        if self._key is not None:
            _states.pop(self._key, None)
            self._key = None


async def _close_one(
    local: LoopLocal[Any], value: object, library: Library, deadline: float
) -> BaseException | None:
    """Await ``local.aclose(value)`` until *deadline*; log what goes wrong and return
    the exception it raised, if any."""
    aclose = local.aclose
    assert aclose is not None
    try:
        finished = await library.within(
            max(0.0, deadline - time.monotonic()), lambda: aclose(value)
        )
    except BaseException as exc:
        logger.error("loop_local: closing %s failed", _describe(value), exc_info=exc)
        return exc
    if not finished:
        logger.error(
            "loop_local: closing %s did not finish within the time left for closing "
            "loop-local values, and was cancelled",
            _describe(value),
        )
    return None


def _describe(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"a {type(value).__qualname__} object"


def _current_loop_key() -> tuple[str, object] | None:
    for library in libraries:
        key = library.current_loop_key()
        if key is not None:
            return library.name, key
    return None


def _current_state(method: str) -> LoopState:
    found = _current_loop_key()
    if found is None:
        raise UsageError(
            f"loop_local.{method}() must be called inside a coroutine running on an event "
            "loop (it returns that loop's instance); no loop is running in this thread"
        )
    state = _states.get(found[1])
    if state is None:
        raise UsageError(
            f"loop_local.{method}() was called on {with_article(found[0])} loop that loopshim "
            "did not start, so loopshim could not close the value with it; run the coroutine "
            "through a loopshim runner (loopshim.get_runner(...).run(...))"
        )
    return state


class LoopLocal(Generic[T]):
    """A value created lazily once per running event loop; see :func:`loop_local`.

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "aclose", "factory")

    def __init__(
        self,
        factory: Callable[[], T] | Callable[[], Awaitable[T]],
        *,
        aclose: Callable[[T], Awaitable[object]] | None = None,
    ) -> None:
        if not callable(factory):
            raise ArgumentError(f"loop_local() needs a callable factory, got {factory!r}")
        if aclose is not None and not callable(aclose):
            raise ArgumentError(f"loop_local(aclose=...) must be an async callable, got {aclose!r}")
        self.factory = factory
        self.aclose = aclose

    def get(self) -> T:
        """Return the running loop's instance, creating it on first use.

        Call it inside a coroutine that a loopshim runner runs. The value may be of
        any kind, awaitable ones included (``redis.asyncio.Redis``, an ``asyncpg``
        pool). A factory that is an ``async def`` function needs :meth:`aget`.

        .. versionadded:: 0.1
        """
        state = _current_state("get")
        value = state._values.get(self, _NOTHING)
        if value is _NOTHING:
            made = self.factory()
            if inspect.iscoroutine(made):
                made.close()  # never awaited: close it to avoid a warning
                raise ArgumentError(
                    f"the loop_local factory {_name(self.factory)} is an async function "
                    "(it returned a coroutine); use `await local.aget()` instead of "
                    "`local.get()`, which awaits the factory once per loop"
                )
            # A loop runs one callback at a time, so no other task can race us here.
            state._values[self] = value = made
        elif isinstance(value, _Creating):
            raise ArgumentError(
                f"the loop_local value of {_name(self.factory)} is being made by its async "
                "factory; use `await local.aget()`, which waits for it"
            )
        return value  # type: ignore[return-value]

    async def aget(self) -> T:
        """Return the running loop's instance, creating it on first use. What the
        factory returns is awaited if it is awaitable — an ``async def`` factory's
        coroutine, ``asyncpg.create_pool(...)``'s pool, which initialises itself when
        awaited — once per loop: concurrent first callers wait for the same value.
        Works with plain factories too.

        .. versionadded:: 0.1
        """
        state = _current_state("aget")
        while True:
            value = state._values.get(self, _NOTHING)
            if not isinstance(value, _Creating):
                break
            await value.done.wait()
            if value.failed and state._values.get(self) is value:
                del state._values[self]
        if value is not _NOTHING:
            return value  # type: ignore[return-value]
        made = self.factory()
        if not inspect.isawaitable(made):
            state._values[self] = made
            return made
        creating = _Creating(state._library.new_event())
        state._values[self] = creating
        try:
            result: T = await made
        except BaseException:
            creating.failed = True
            if state._values.get(self) is creating:
                del state._values[self]
            raise
        finally:
            creating.done.set()
        if state._values.get(self) is creating:
            state._values[self] = result
        return result

    def __repr__(self) -> str:
        return f"loop_local({self.factory!r})"


_NOTHING: Any = object()


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or _describe(fn)


def loop_local(
    factory: Callable[[], T] | Callable[[], Awaitable[T]],
    *,
    aclose: Callable[[T], Awaitable[object]] | None = None,
) -> LoopLocal[T]:
    """Declare a value that exists once per running event loop.

    ``factory()`` is called the first time :meth:`LoopLocal.get` runs inside a given
    loop; later calls on that loop return the same instance, like
    :meth:`contextvars.ContextVar.get`. When loopshim closes that loop, ``await
    aclose(instance)`` runs inside it first — after loopshim's own calls and background
    tasks have finished, and before anything left on the loop is cancelled. Use it at
    module level for loop-bound clients::

        client = loopshim.loop_local(httpx.AsyncClient, aclose=lambda c: c.aclose())

        async def view():
            return await client.get().get("http://127.0.0.1:8000/")

    For an ``async def`` factory (``asyncpg.create_pool``), use ``await local.aget()``.

    .. versionadded:: 0.1
    """
    return LoopLocal(factory, aclose=aclose)
