"""The event loops the bench keeps by hand, for the peers and for the workloads whose
calls are made inside a coroutine: an asyncio or uvloop loop per caller thread, one in
a thread of its own, trio in a thread of its own, and the hosts that run a coroutine
in the caller thread on asyncio (a loop kept per thread) or trio (one run per batch).

Every library is imported inside the function that needs it; whatever is started is
stopped by the run's exit stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final

__all__ = [
    "HOSTS",
    "OnLoop",
    "host_on",
    "loop_per_thread",
    "new_loop",
    "start_loop_thread",
    "start_trio_thread",
]

#: Runs an async function to completion in a coroutine on a loop, from the caller
#: thread; returns its result.
OnLoop = Callable[[Callable[[], Awaitable[Any]]], Any]

#: The loops a coroutine may await a call on another loop from (the cross-loop workload).
HOSTS: Final = ("asyncio", "trio")


def new_loop(library: str) -> asyncio.AbstractEventLoop:
    """A new asyncio loop: uvloop's for ``uvloop``, else asyncio's own."""
    if library == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def loop_per_thread(
    stack: contextlib.ExitStack[Any], library: str
) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function that returns the calling thread's own loop of *library*, made at its
    first call; every loop is closed with *stack*."""
    local = threading.local()
    made: list[asyncio.AbstractEventLoop] = []

    @stack.callback
    def close_loops() -> None:
        for loop in made:
            loop.close()

    def loop_of_thread() -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop | None = getattr(local, "loop", None)
        if loop is None:
            loop = local.loop = new_loop(library)
            made.append(loop)
        return loop

    return loop_of_thread


def start_loop_thread(stack: contextlib.ExitStack[Any], library: str) -> asyncio.AbstractEventLoop:
    """A loop of *library* running forever in a thread of its own, until *stack* closes."""
    loop = new_loop(library)
    thread = threading.Thread(target=loop.run_forever, name=f"bench-{library}-loop")
    thread.start()

    @stack.callback
    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    return loop


def start_trio_thread(stack: contextlib.ExitStack[Any]) -> Any:
    """``trio.run`` in a thread of its own, until *stack* closes; returns its token
    (a ``trio.lowlevel.TrioToken``)."""
    import trio

    started = threading.Event()
    handles: dict[str, Any] = {}

    async def serve() -> None:
        handles["token"] = trio.lowlevel.current_trio_token()
        handles["stop"] = stop = trio.Event()
        started.set()
        await stop.wait()

    thread = threading.Thread(target=trio.run, args=(serve,), name="bench-trio-loop")
    thread.start()
    started.wait()
    token = handles["token"]

    @stack.callback
    def stop() -> None:
        trio.from_thread.run_sync(handles["stop"].set, trio_token=token)
        thread.join()

    return token


def host_on(stack: contextlib.ExitStack[Any], library: str) -> OnLoop:
    """Run a coroutine in the caller thread: on asyncio or uvloop, on a loop kept per
    caller thread (``run_until_complete``); on trio, in a run of its own (a trio run
    cannot be resumed once it returns)."""
    if library == "trio":
        import trio

        def on_trio(fn: Callable[[], Awaitable[Any]]) -> Any:
            return trio.run(fn)

        return on_trio
    loop_of_thread = loop_per_thread(stack, library)

    def on_asyncio(fn: Callable[[], Awaitable[Any]]) -> Any:
        return loop_of_thread().run_until_complete(fn())

    return on_asyncio
