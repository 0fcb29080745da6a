"""Checks on what callers hand over (an async function, not a coroutine or a plain
function) and on where they call from (not from inside a running loop)."""

from __future__ import annotations

import inspect
import types

from .._errors import ArgumentError, ReentrantCallError
from ._backend import running_library
from ._bridge import available as bridge_available
from ._job import describe_callable

__all__ = [
    "check_async_callable",
    "check_not_in_loop",
    "foreign_loop_error",
    "is_async_callable",
    "is_plain_async_def",
    "own_loop_error",
    "reentrant_error",
    "with_article",
]


def is_async_callable(fn: object) -> bool:
    """Whether *fn* is a coroutine function, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    is_instance = callable(fn) and not inspect.isroutine(fn) and not isinstance(fn, type)
    return is_instance and inspect.iscoroutinefunction(type(fn).__call__)


def is_plain_async_def(fn: object) -> bool:
    """Whether *fn* is a plain ``async def`` function: the common case, recognised
    without inspect's general checks."""
    return type(fn) is types.FunctionType and bool(fn.__code__.co_flags & inspect.CO_COROUTINE)


def check_async_callable(fn: object, where: str) -> None:
    """Raise :class:`~loopshim.ArgumentError` (a :class:`TypeError`) unless
    :func:`is_async_callable` accepts *fn*."""
    if is_async_callable(fn):
        return
    if inspect.iscoroutine(fn):
        name = describe_callable(fn)
        fn.close()  # it can never run now; closing avoids a "never awaited" warning
        raise ArgumentError(
            f"{where}() takes an async function, not a coroutine object: got {name}(...). "
            f"Pass the function and its arguments instead, e.g. {where}(fn, *args) "
            f"rather than {where}(fn(*args))"
        )
    if inspect.isawaitable(fn):
        raise ArgumentError(
            f"{where}() takes an async function, not an awaitable: got {fn!r}. "
            "Wrap it: `async def fn(): return await awaitable`"
        )
    if callable(fn):
        raise ArgumentError(
            f"{where}() takes an async function (defined with 'async def'), but "
            f"{describe_callable(fn)} is a regular callable; call it directly, it needs no "
            "event loop"
        )
    raise ArgumentError(f"{where}() takes an async function, got {fn!r} ({type(fn).__name__})")


def reentrant_error(library: str, what: str) -> ReentrantCallError:
    """The error for a blocking call made from a thread that runs an event loop."""
    return ReentrantCallError(
        f"{what} blocks until the coroutine finishes, but this thread is running an "
        f"event loop ({library}): blocking here would stall that loop or deadlock. "
        "In async code, await the function directly; in sync code called from async "
        "code, move the blocking call to a worker thread (for example with "
        "anyio.to_thread.run_sync or asyncio.to_thread)"
    )


def own_loop_error(library: str, backend: str) -> ReentrantCallError:
    """The error for a call from code running on the runner's own loop (a coroutine
    calling sync code that calls the runner again) when it cannot re-enter."""
    how = (
        'which needs the greenlet package: pip install "loopshim[greenlet]"'
        if not bridge_available()
        else "or, in a Flask app, LOOPSHIM_REENTRANT = True"
    )
    return ReentrantCallError(
        f"the {backend} runner was called again from code running on its own {library} "
        "loop (a coroutine called sync code that calls the runner): waiting here would "
        "stall the loop the call needs. In async code, await the function directly; to "
        f"let sync code re-enter the runner, make it with reentrant=True, {how}"
    )


def foreign_loop_error(library: str, scope: str) -> ReentrantCallError:
    """The error for a call from a thread running another loop, in a scope that would
    have to run a second loop inside it."""
    return ReentrantCallError(
        f"this thread is running {with_article(library)} event loop (a notebook, an async "
        "app), and a "
        f"{scope}-scope runner would have to run its own loop inside it. Use a "
        'process-scope runner (get_runner(..., scope="process")): its run() blocks this '
        "thread until the coroutine is done, like any blocking call; or, from async code, "
        "`await runner.run_async(fn, ...)` on a process-scope runner, which keeps your "
        "loop running"
    )


def with_article(word: str) -> str:
    """*word* after "a" or "an"."""
    return f"an {word}" if word[:1] in ("a", "e", "i", "o", "u") else f"a {word}"


def check_not_in_loop(what: str) -> None:
    """Raise :func:`reentrant_error` if a loop is running in this thread."""
    library = running_library()
    if library is not None:
        raise reentrant_error(library.name, what)
