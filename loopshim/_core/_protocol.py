"""The :class:`LoopRunner` protocol: what every runner provides, loopshim's own and
fully custom ones alike."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LoopRunner"]

P = ParamSpec("P")
T = TypeVar("T")


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

    async def run_async(
        self, async_fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``async_fn(*args, **kwargs)`` run on this runner's loop, from a coroutine
        on any loop."""

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
