"""The peers of the workloads whose calls are made inside a coroutine.

Re-entrant calls (sync code, called from a coroutine, that has the loop running that
coroutine await another one): greenback on asyncio and trio (``greenback.ensure_portal()``
in the coroutine, ``greenback.await_(...)`` in the sync code), nest_asyncio on asyncio
(``loop.run_until_complete(...)`` from the sync code, on a loop that nest_asyncio
patched), and their floor: awaiting the function directly, as async code would.

nest_asyncio patches asyncio for the whole process — ``nest_asyncio.apply()`` swaps
asyncio's Task and Future for their pure-Python versions and replaces the loop class's
``run_until_complete`` and ``_run_once`` — which would slow down every other asyncio
row. So it runs as its users run it, ``nest_asyncio.apply(loop)``, but in a process of
its own (``_isolated``), which times its batches there.

Awaiting a call on another loop, from a coroutine in the caller thread — the recipes
written by hand for each pair of loops, the floor of ``run_async``: from asyncio to an
asyncio or uvloop loop thread, ``asyncio.wrap_future(asyncio.run_coroutine_threadsafe(...))``;
from asyncio to a trio thread, ``asyncio.to_thread(trio.from_thread.run, ...)``; from
trio, ``trio.to_thread.run_sync`` of the blocking call into the loop thread
(``run_coroutine_threadsafe(...).result()``, or ``trio.from_thread.run``).

Every library is imported inside the set-up that needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final

from ._contenders import AsyncFn, Contender, Prepared
from ._hosts import HOSTS, host_on, start_loop_thread, start_trio_thread
from ._isolated import isolated
from ._peers import takes_coroutine

__all__ = [
    "ASYNC_PEERS",
    "FLOOR",
    "IN_PROCESS",
    "NEST_ASYNCIO",
    "by_hand_key",
]

#: The floor of re-entrant calls: awaiting the function directly.
FLOOR: Final = "await-directly"
#: nest_asyncio, run in a process of its own.
NEST_ASYNCIO: Final = "nest-asyncio"

Setup = Callable[[contextlib.ExitStack[Any]], Prepared]

# --- re-entrant calls -------------------------------------------------------------


def _awaited_directly(stack: contextlib.ExitStack[Any]) -> Prepared:
    def itself(fn: AsyncFn) -> Callable[[], Awaitable[Any]]:
        return fn

    return Prepared(on_loop=host_on(stack, "asyncio"), awaiter=itself)


def _greenback(library: str) -> Setup:
    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        import greenback

        host = host_on(stack, library)

        async def with_portal(fn: Callable[[], Awaitable[Any]]) -> Any:
            await greenback.ensure_portal()
            return await fn()

        return Prepared(
            takes_coroutine(greenback.await_),
            on_loop=lambda fn: host(functools.partial(with_portal, fn)),
        )

    return setup


def _nest_asyncio_here(stack: contextlib.ExitStack[Any]) -> Prepared:
    """nest_asyncio as its users apply it, in this process: only ever set up in a
    process of its own (``_isolated``)."""
    import nest_asyncio  # type: ignore[import-untyped]

    loop = asyncio.new_event_loop()
    stack.callback(loop.close)
    nest_asyncio.apply(loop)

    def on_loop(fn: Callable[[], Awaitable[Any]]) -> Any:
        return loop.run_until_complete(fn())

    return Prepared(takes_coroutine(loop.run_until_complete), on_loop=on_loop)


#: The contenders a process of their own sets up (``_isolated``), by key.
IN_PROCESS: Final = {
    NEST_ASYNCIO: Contender(
        NEST_ASYNCIO,
        "nest_asyncio",
        _nest_asyncio_here,
        ("nest_asyncio",),
        workloads=("reentrant",),
    )
}

# --- awaiting a call on another loop --------------------------------------------------


def by_hand_key(host: str, target: str) -> str:
    """The key of the recipe that awaits, from a *host* loop, a call on a *target*
    loop thread: ``by-hand-trio-to-uvloop``."""
    return f"by-hand-{host}-to-{target}"


def _to_loop_thread(host: str, target: str) -> Setup:
    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        loop = start_loop_thread(stack, target)
        if host == "asyncio":

            def awaiter(fn: AsyncFn) -> Callable[[], Awaitable[Any]]:
                def op() -> Awaitable[Any]:
                    return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fn(), loop))

                return op

        else:
            import trio

            def awaiter(fn: AsyncFn) -> Callable[[], Awaitable[Any]]:
                def blocking() -> Any:
                    return asyncio.run_coroutine_threadsafe(fn(), loop).result()

                return functools.partial(trio.to_thread.run_sync, blocking)

        return Prepared(on_loop=host_on(stack, host), awaiter=awaiter)

    return setup


def _to_trio_thread(host: str) -> Setup:
    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        import trio

        token = start_trio_thread(stack)

        def awaiter(fn: AsyncFn) -> Callable[[], Awaitable[Any]]:
            blocking = functools.partial(trio.from_thread.run, fn, trio_token=token)
            if host == "asyncio":
                return functools.partial(asyncio.to_thread, blocking)
            return functools.partial(trio.to_thread.run_sync, blocking)

        return Prepared(on_loop=host_on(stack, host), awaiter=awaiter)

    return setup


#: How each recipe awaits the call, in a few words (the module's docstring has it all).
_RECIPES: Final = {
    ("asyncio", "asyncio"): "wrap_future",
    ("asyncio", "uvloop"): "wrap_future",
    ("asyncio", "trio"): "to_thread + from_thread.run",
    ("trio", "asyncio"): "to_thread.run_sync",
    ("trio", "uvloop"): "to_thread.run_sync",
    ("trio", "trio"): "to_thread + from_thread.run",
}


def _by_hand(host: str, target: str) -> Contender:
    requires = tuple(dict.fromkeys(lib for lib in (host, target) if lib != "asyncio"))
    setup = _to_trio_thread(host) if target == "trio" else _to_loop_thread(host, target)
    return Contender(
        by_hand_key(host, target),
        f"by hand: {host} → {target} thread ({_RECIPES[host, target]})",
        setup,
        requires,
        workloads=("cross-loop",),
        pair=(host, target),
    )


#: The peers of the async workloads, in table order; the first is the floor of
#: re-entrant calls, which ``--no-peers`` keeps.
ASYNC_PEERS: Final[tuple[Contender, ...]] = (
    Contender(
        FLOOR,
        "awaiting the function directly (the floor)",
        _awaited_directly,
        workloads=("reentrant",),
    ),
    Contender(
        "greenback-asyncio",
        "greenback on asyncio (ensure_portal, await_)",
        _greenback("asyncio"),
        ("greenback",),
        workloads=("reentrant",),
    ),
    Contender(
        "greenback-trio",
        "greenback on trio (ensure_portal, await_)",
        _greenback("trio"),
        ("greenback", "trio"),
        workloads=("reentrant",),
    ),
    Contender(
        NEST_ASYNCIO,
        "nest_asyncio (run_until_complete; a process of its own)",
        isolated(NEST_ASYNCIO),
        ("nest_asyncio",),
        workloads=("reentrant",),
    ),
    *(_by_hand(host, target) for host in HOSTS for target in ("asyncio", "uvloop", "trio")),
)
