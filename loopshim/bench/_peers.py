"""The peers: what a user would otherwise pick to run async code from sync code —
Flask's default (the baseline of every speed-up), the ``run`` functions of asyncio, uvloop,
trio and anyio, anyio's blocking portal — and the two recipes people write by hand, which
are the floors loopshim's scopes are held to: a loop kept per thread, and a loop thread.

Every library is imported inside the set-up that needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from ._contenders import AsyncFn, Contender, Prepared, ToSync
from ._hosts import loop_per_thread, start_loop_thread, start_trio_thread

__all__ = ["BASELINE", "PEERS", "takes_coroutine"]

#: The contender every speed-up is relative to: Flask's default, asgiref's async_to_sync.
BASELINE: Final = "flask-default"

Setup = Callable[[contextlib.ExitStack[Any]], Prepared]


def _replacing_async_to_sync(to_sync: ToSync) -> Prepared:
    """A peer prepared as Flask's docs suggest for another loop: it replaces the app's
    ``async_to_sync``."""

    def install(app: Any) -> None:
        app.async_to_sync = to_sync

    return Prepared(to_sync, install)


def _asgiref(fn: AsyncFn) -> Callable[..., Any]:
    from asgiref.sync import async_to_sync

    return async_to_sync(fn)


def _leave_flask_alone(app: Any) -> None:
    return None


def _flask_default(stack: contextlib.ExitStack[Any]) -> Prepared:
    # A plain Flask app imports asgiref itself, only when it meets an async view.
    return Prepared(_asgiref, _leave_flask_alone)


def _runs_with(run: Callable[[Callable[[], Awaitable[Any]]], Any]) -> ToSync:
    """A to_sync for the ``trio.run(fn)`` family, which takes a function, not a coroutine."""

    def to_sync(fn: AsyncFn) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return run(functools.partial(fn, *args, **kwargs))

        return call

    return to_sync


def takes_coroutine(run: Callable[[Coroutine[Any, Any, Any]], Any]) -> ToSync:
    """A to_sync for the ``asyncio.run(coro)`` family."""

    def to_sync(fn: AsyncFn) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return run(fn(*args, **kwargs))

        return call

    return to_sync


def _run_peer(module: str, adapt: Callable[[Any], ToSync]) -> Setup:
    """The set-up of a peer that runs each call with ``<module>.run``."""

    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        return _replacing_async_to_sync(adapt(importlib.import_module(module).run))

    return setup


def _anyio_portal(backend: str, options: dict[str, Any]) -> Setup:
    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        from anyio.from_thread import start_blocking_portal

        portal = stack.enter_context(start_blocking_portal(backend, options))
        return _replacing_async_to_sync(_runs_with(portal.call))

    return setup


def _loop_per_thread(library: str) -> Setup:
    """The recipe of keeping one event loop per thread and calling its
    ``run_until_complete``: about the least a thread-scope call can cost on *library*."""

    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        loop_of_thread = loop_per_thread(stack, library)
        return _replacing_async_to_sync(
            takes_coroutine(lambda coro: loop_of_thread().run_until_complete(coro))
        )

    return setup


def _loop_thread(library: str) -> Setup:
    """The recipe of one loop in a background thread and ``run_coroutine_threadsafe``:
    about the least a process-scope call can cost on *library*."""

    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        loop = start_loop_thread(stack, library)
        return _replacing_async_to_sync(
            takes_coroutine(lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result())
        )

    return setup


def _trio_thread(stack: contextlib.ExitStack[Any]) -> Prepared:
    """trio's recipe for the same: ``trio.run`` in a background thread, and
    ``trio.from_thread.run`` with its token."""
    import trio

    token = start_trio_thread(stack)
    return _replacing_async_to_sync(
        _runs_with(functools.partial(trio.from_thread.run, trio_token=token))
    )


#: The peers, in table order; the first is the baseline.
PEERS: Final[tuple[Contender, ...]] = (
    Contender(BASELINE, "Flask's default (asgiref)", _flask_default, ("asgiref",)),
    Contender("asyncio.run", "asyncio.run", _run_peer("asyncio", takes_coroutine)),
    Contender("uvloop.run", "uvloop.run", _run_peer("uvloop", takes_coroutine), ("uvloop",)),
    Contender("trio.run", "trio.run", _run_peer("trio", _runs_with), ("trio",)),
    Contender("anyio.run", "anyio.run", _run_peer("anyio", _runs_with), ("anyio",)),
    Contender(
        "anyio-portal-asyncio", "anyio portal, asyncio", _anyio_portal("asyncio", {}), ("anyio",)
    ),
    Contender(
        "anyio-portal-uvloop",
        "anyio portal, uvloop",
        _anyio_portal("asyncio", {"use_uvloop": True}),
        ("anyio", "uvloop"),
    ),
    Contender(
        "anyio-portal-trio", "anyio portal, trio", _anyio_portal("trio", {}), ("anyio", "trio")
    ),
    Contender(
        "loop-per-thread-asyncio", "asyncio loop per thread (by hand)", _loop_per_thread("asyncio")
    ),
    Contender(
        "loop-per-thread-uvloop",
        "uvloop loop per thread (by hand)",
        _loop_per_thread("uvloop"),
        ("uvloop",),
    ),
    Contender("loop-thread-asyncio", "asyncio loop thread (by hand)", _loop_thread("asyncio")),
    Contender(
        "loop-thread-uvloop", "uvloop loop thread (by hand)", _loop_thread("uvloop"), ("uvloop",)
    ),
    Contender("loop-thread-trio", "trio loop thread (by hand)", _trio_thread, ("trio",)),
)
