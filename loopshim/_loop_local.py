"""Values that live once per running event loop (``loop_local``), and the per-loop
state that loopshim keeps for every loop it runs."""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from ._errors import LoopshimError

__all__ = ["LoopLocal", "LoopState", "loop_local"]

T = TypeVar("T")
logger = logging.getLogger("loopshim")

# Maps a loop's key (an asyncio loop, or a trio run's TrioToken) to its LoopState.
_states: dict[object, LoopState] = {}


class LoopState:
    """What loopshim keeps for one event loop: its loop-local values, in creation order."""

    __slots__ = ("_key", "_values")

    def __init__(self) -> None:
        self._key: object = None
        self._values: dict[LoopLocal[object], object] = {}

    def attach(self, key: object) -> None:
        """Make this the state of the loop identified by *key* (call inside the loop)."""
        self._key = key
        _states[key] = self

    def __bool__(self) -> bool:
        return bool(self._values)

    async def aclose(self) -> None:
        """Close the loop-local values, newest first, then forget this loop.

        Runs inside the loop, just before it closes. A failing ``aclose`` is logged and
        does not stop the others.
        """
        while self._values:
            local, value = self._values.popitem()
            if local.aclose is None:
                continue
            try:
                await local.aclose(value)
            except Exception:
                logger.exception("loop_local: closing %r failed", value)
        self.detach()

    def detach(self) -> None:
        """Forget the loop (it is gone, or abandoned after a fork)."""
        if self._key is not None:
            _states.pop(self._key, None)
            self._key = None


def _current_loop_key() -> tuple[str, object] | None:
    import asyncio

    loop = asyncio._get_running_loop()
    if loop is not None:
        return "asyncio", loop
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        return "trio", trio.lowlevel.current_trio_token()
    return None


class LoopLocal(Generic[T]):
    """A value created lazily once per running event loop; see :func:`loop_local`.

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "aclose", "factory")

    def __init__(
        self,
        factory: Callable[[], T],
        *,
        aclose: Callable[[T], Awaitable[object]] | None = None,
    ) -> None:
        if not callable(factory):
            raise TypeError(f"loop_local() needs a callable factory, got {factory!r}")
        if aclose is not None and not callable(aclose):
            raise TypeError(f"loop_local(aclose=...) must be an async callable, got {aclose!r}")
        self.factory = factory
        self.aclose = aclose

    def get(self) -> T:
        """Return the running loop's instance, creating it on first use.

        Call it inside a coroutine that a loopshim runner runs.
        """
        found = _current_loop_key()
        if found is None:
            raise LoopshimError(
                "loop_local.get() must be called inside a coroutine running on an event "
                "loop (it returns that loop's instance); no loop is running in this thread"
            )
        state = _states.get(found[1])
        if state is None:
            raise LoopshimError(
                f"loop_local.get() was called on a {found[0]} loop that loopshim did not "
                "start, so loopshim could not close the value with it; run the coroutine "
                "through a loopshim runner (loopshim.get_runner(...).run(...))"
            )
        try:
            return state._values[self]  # type: ignore[index,return-value]
        except KeyError:
            pass
        value = self.factory()
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()
            raise TypeError(
                f"loop_local factory {self.factory!r} returned an awaitable; the factory "
                "must be a plain callable that returns the value itself"
            )
        # A loop runs one callback at a time, so no other task can race us here.
        state._values[self] = value  # type: ignore[index]
        return value

    def __repr__(self) -> str:
        return f"loop_local({self.factory!r})"


def loop_local(
    factory: Callable[[], T],
    *,
    aclose: Callable[[T], Awaitable[object]] | None = None,
) -> LoopLocal[T]:
    """Declare a value that exists once per running event loop.

    ``factory()`` is called the first time :meth:`LoopLocal.get` runs inside a given
    loop; later calls on that loop return the same instance, like
    :meth:`contextvars.ContextVar.get`. When loopshim closes that loop, ``await
    aclose(instance)`` runs inside it first. Use it at module level for loop-bound
    clients::

        client = loopshim.loop_local(httpx.AsyncClient, aclose=lambda c: c.aclose())

        async def view():
            return await client.get().get("http://127.0.0.1:8000/")

    .. versionadded:: 0.1
    """
    return LoopLocal(factory, aclose=aclose)
