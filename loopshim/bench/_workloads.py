"""The workloads: what one call does. Each builds, from a prepared contender, a factory
of batch runners (one per caller thread); every call checks its answer.

Most workloads call from sync code in the caller thread, as a WSGI server does. Two make
their calls inside a coroutine, where the contender's loop runs it: ``reentrant`` (sync
code called from the coroutine calls the runner again) and ``cross-loop`` (the
coroutine awaits a call on another loop); the batch's timing loop runs in there.

Workloads that run on every backend use anyio's primitives, which work on asyncio and trio
alike; anyio and Flask are imported inside the function that needs them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from ._contenders import AsyncFn, Prepared
from ._timing import BatchFactory, BatchRunner, Budget, timed_awaits, timed_calls

__all__ = ["CHECKPOINTS", "FANOUT_SLEEP", "FANOUT_TASKS", "WORKLOADS", "BenchError", "Workload"]

CHECKPOINTS: Final = 10
FANOUT_TASKS: Final = 100
FANOUT_SLEEP: Final = 0.010


class BenchError(Exception):
    """A contender gave a wrong answer."""


@dataclass(frozen=True)
class Workload:
    """Something to run once per call. *build* turns a prepared contender into a
    factory of calls, one per caller thread."""

    name: str
    description: str
    build: Callable[[Prepared], BatchFactory]
    #: The libraries it needs (by distribution name, which is also the module's).
    requires: tuple[str, ...] = ()
    #: False when the work involves no async code: then only loopshim (whose Flask
    #: extension is still in the path) and a plain app, the baseline, take part.
    uses_async: bool = True
    #: True: the calls come from sync code in the caller thread, and every contender
    #: that offers that takes part. False: they are made inside a coroutine, and only
    #: the contenders that name the workload take part.
    from_sync: bool = True


def _checked(sync: Callable[[], Any], expected: object) -> Callable[[], None]:
    def call() -> None:
        answer = sync()
        if answer != expected:
            raise BenchError(f"expected {expected!r}, got {answer!r}")

    return call


def _expecting(expected: object) -> Callable[[Any], None]:
    def check(answer: object) -> None:
        if answer != expected:
            raise BenchError(f"expected {expected!r}, got {answer!r}")

    return check


def _offered(prepared: Prepared, what: str) -> Any:
    offered = getattr(prepared, what)
    if offered is None:
        raise BenchError(f"the contender offers no {what}")
    return offered


def _timing(call: Callable[[], None]) -> BatchRunner:
    return functools.partial(timed_calls, call)


def _coroutine_workload(make: Callable[[], tuple[AsyncFn, object]]) -> Callable[..., BatchFactory]:
    def build(prepared: Prepared) -> BatchFactory:
        fn, expected = make()
        sync = _offered(prepared, "to_sync")(fn)
        return lambda: _timing(_checked(sync, expected))

    return build


def _in_coroutine(prepared: Prepared) -> BatchFactory:
    """The batches of the workloads whose calls are made inside a coroutine: the
    coroutine runs on the contender's loop (``on_loop``) and makes the calls to a no-op
    coroutine — awaiting ``awaiter(noop)()`` when the contender offers an awaiter, else
    calling ``to_sync(noop)()`` from sync code it calls, which re-enters that loop."""
    fn, expected = _noop()
    check = _expecting(expected)
    on_loop = _offered(prepared, "on_loop")
    if prepared.awaiter is not None:
        op = prepared.awaiter(fn)

        async def batch(budget: Budget) -> list[int]:
            return await timed_awaits(op, budget, check)

    else:
        call = _offered(prepared, "to_sync")(fn)

        async def batch(budget: Budget) -> list[int]:
            return timed_calls(call, budget, check)  # sync code, called from the coroutine

    def run(budget: Budget) -> list[int]:
        times: list[int] = on_loop(functools.partial(batch, budget))
        return times

    return lambda: run


def _noop() -> tuple[AsyncFn, object]:
    async def noop() -> None:
        return None

    return noop, None


def _checkpoints() -> tuple[AsyncFn, object]:
    from anyio.lowlevel import checkpoint

    async def checkpoints() -> int:
        for _ in range(CHECKPOINTS):
            await checkpoint()
        return CHECKPOINTS

    return checkpoints, CHECKPOINTS


def _fanout() -> tuple[AsyncFn, object]:
    import anyio

    async def fanout() -> int:
        async with anyio.create_task_group() as tasks:
            for _ in range(FANOUT_TASKS):
                tasks.start_soon(anyio.sleep, FANOUT_SLEEP)
        return FANOUT_TASKS

    return fanout, FANOUT_TASKS


def _flask_app(kind: Literal["sync", "async"]) -> Any:
    from flask import Flask

    app = Flask(__name__)
    if kind == "sync":

        @app.route("/")
        def sync_view() -> str:
            return "ok"

    else:

        @app.route("/")
        async def async_view() -> str:
            return "ok"

    return app


def _flask_workload(kind: Literal["sync", "async"]) -> Callable[..., BatchFactory]:
    def build(prepared: Prepared) -> BatchFactory:
        app = _flask_app(kind)
        _offered(prepared, "install")(app)

        def per_thread() -> BatchRunner:
            client = app.test_client()  # one per thread: a client is not thread-safe

            def request() -> None:
                response = client.get("/")
                if response.status_code != 200 or response.data != b"ok":
                    raise BenchError(f"GET / answered {response.status} {response.data[:200]!r}")

            return _timing(request)

        return per_thread

    return build


WORKLOADS: Final[dict[str, Workload]] = {
    w.name: w
    for w in (
        Workload("noop", "a no-op coroutine", _coroutine_workload(_noop)),
        Workload(
            "checkpoints",
            f"a coroutine with {CHECKPOINTS} checkpoints (anyio.lowlevel.checkpoint)",
            _coroutine_workload(_checkpoints),
            ("anyio",),
        ),
        Workload(
            "fanout",
            f"{FANOUT_TASKS} concurrent {FANOUT_SLEEP * 1000:.0f} ms sleeps (anyio task group)",
            _coroutine_workload(_fanout),
            ("anyio",),
        ),
        Workload(
            "flask-sync",
            "one Flask request to a sync view (test client)",
            _flask_workload("sync"),
            ("flask",),
            uses_async=False,
        ),
        Workload(
            "flask-async",
            "one Flask request to an async view (test client)",
            _flask_workload("async"),
            ("flask",),
        ),
        Workload(
            "reentrant",
            "sync code in a coroutine calls the runner again for a no-op",
            _in_coroutine,
            from_sync=False,
        ),
        Workload(
            "cross-loop",
            "a no-op coroutine awaited from another loop (asyncio, trio)",
            _in_coroutine,
            from_sync=False,
        ),
    )
}
