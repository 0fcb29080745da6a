"""The workloads: what one call does. Each builds, from a prepared contender, a factory
of calls (one per caller thread); every call checks its answer.

Workloads that run on every backend use anyio's primitives, which work on asyncio and trio
alike; anyio and Flask are imported inside the function that needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from ._contenders import AsyncFn, Prepared

__all__ = ["CHECKPOINTS", "FANOUT_SLEEP", "FANOUT_TASKS", "WORKLOADS", "BenchError", "Workload"]

#: Makes a call for one caller thread; called in that thread.
CallFactory = Callable[[], Callable[[], None]]

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
    build: Callable[[Prepared], CallFactory]
    #: The libraries it needs (by distribution name, which is also the module's).
    requires: tuple[str, ...] = ()
    #: False when the work involves no async code: then only loopshim (whose Flask
    #: extension is still in the path) and a plain app, the baseline, take part.
    uses_async: bool = True


def _checked(sync: Callable[[], Any], expected: object) -> Callable[[], None]:
    def call() -> None:
        answer = sync()
        if answer != expected:
            raise BenchError(f"expected {expected!r}, got {answer!r}")

    return call


def _coroutine_workload(make: Callable[[], tuple[AsyncFn, object]]) -> Callable[..., CallFactory]:
    def build(prepared: Prepared) -> CallFactory:
        fn, expected = make()
        sync = prepared.to_sync(fn)
        return lambda: _checked(sync, expected)

    return build


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


def _flask_workload(kind: Literal["sync", "async"]) -> Callable[..., CallFactory]:
    def build(prepared: Prepared) -> CallFactory:
        app = _flask_app(kind)
        prepared.install(app)

        def per_thread() -> Callable[[], None]:
            client = app.test_client()  # one per thread: a client is not thread-safe

            def request() -> None:
                response = client.get("/")
                if response.status_code != 200 or response.data != b"ok":
                    raise BenchError(f"GET / answered {response.status} {response.data[:200]!r}")

            return request

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
    )
}
