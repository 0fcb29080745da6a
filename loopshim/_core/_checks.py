"""Checks on what callers hand over (an async function, not a coroutine or a plain
function) and on where they call from (not from inside a running loop)."""

from __future__ import annotations

import inspect
import types

from .._errors import ArgumentError, ReentrantCallError
from ._bridge import available as bridge_available
from ._job import describe_callable

__all__ = [
    "check_async_callable",
    "close_in_loop_error",
    "foreign_loop_error",
    "is_async_callable",
    "is_plain_async_def",
    "own_loop_error",
    "with_article",
]


def is_async_callable(fn: object) -> bool:
    """Whether *fn* is a coroutine function, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    is_instance = callable(fn) and not inspect.isroutine(fn) and not isinstance(fn, type)
    return is_instance and inspect.iscoroutinefunction(type(fn).__call__)


_FunctionType = types.FunctionType
_CO_COROUTINE = inspect.CO_COROUTINE


def is_plain_async_def(fn: object) -> bool:
    """Whether *fn* is a plain ``async def`` function: the common case, recognised
    without inspect's general checks."""
    return type(fn) is _FunctionType and fn.__code__.co_flags & _CO_COROUTINE != 0


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
    if inspect.isasyncgenfunction(fn):
        raise ArgumentError(
            f"{where}() takes an async function, and {describe_callable(fn)} is an async "
            "generator function: iterate it inside one, e.g. `async def collect(): return "
            "[item async for item in gen()]`, and pass that"
        )
    if callable(fn):
        raise ArgumentError(
            f"{where}() takes an async function (defined with 'async def'), and "
            f"{describe_callable(fn)} is a regular callable. If it returns a coroutine (a "
            f"lambda or partial around an async call), pass the async function and its "
            f"arguments instead: {where}(async_fn, *args); if it is plain sync code, call "
            "it directly: it needs no event loop"
        )
    raise ArgumentError(f"{where}() takes an async function, got {fn!r} ({type(fn).__name__})")


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


def close_in_loop_error(backend: str, library: str, own_loop: bool) -> ReentrantCallError:
    """The error for ``close()`` called from a thread running a loop, where it cannot
    wait: its own loop (it would wait for itself), or another (a thread- or call-scope
    runner closes its loops in the calling thread)."""
    if own_loop:
        return ReentrantCallError(
            f"close() waits for the {backend} runner's loop to finish its work and stop, "
            "but it was called from code running on that loop: it would wait for itself. "
            "Close the runner from outside its loop, e.g. where your program or app shuts "
            "down"
        )
    return ReentrantCallError(
        f"close() runs the clean-up of the {backend} runner's loops in the calling thread, "
        f"and this thread is running {with_article(library)} event loop. Close the runner "
        "from a thread without a running loop"
    )
