"""The order in which a loop shuts down (issue 11), reproduced without any server.

A client like ``psycopg_pool.AsyncConnectionPool`` keeps a worker task on its loop, and its
``aclose`` asks the worker to stop and awaits it. So ``loop_local`` values must be closed
while the loop and the clients' own tasks are still alive — after loopshim's own jobs have
drained, before anything left is cancelled — and ``close()`` must not wait out
``shutdown_timeout`` for a library's long-lived task that nothing spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import loopshim
from loopshim.pytest_plugin import LoopRunnerFactory

#: The runners' grace period: long enough that waiting it out is unmistakable.
SHUTDOWN_TIMEOUT = 5.0
#: "Well under shutdown_timeout": what closing a loop with such a client may take.
QUICK = 1.0

BACKENDS = ["asyncio", "uvloop"]


class QueueClient:
    """A client with a long-lived worker task that reads a queue until it gets None."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()
        self.handled: list[int] = []
        #: "stopped" once the worker got None from aclose(), "cancelled" if it was cancelled.
        self.outcome = "running"
        self.worker = asyncio.get_running_loop().create_task(self._work(), name="client-worker")

    async def _work(self) -> None:
        try:
            while (item := await self.queue.get()) is not None:
                self.handled.append(item)
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            raise
        self.outcome = "stopped"

    async def aclose(self) -> None:
        await self.queue.put(None)
        await self.worker


def queue_client() -> tuple[loopshim.LoopLocal[QueueClient], list[QueueClient]]:
    made: list[QueueClient] = []

    def factory() -> QueueClient:
        made.append(QueueClient())
        return made[-1]

    return loopshim.loop_local(factory, aclose=QueueClient.aclose), made


def attempt(fn: Callable[..., Any], *args: Any) -> tuple[float, Any, BaseException | None]:
    """Call *fn*; its duration, result, and what it raised (BaseExceptions included)."""
    started = time.monotonic()
    try:
        result = fn(*args)
    except BaseException as exc:
        return time.monotonic() - started, None, exc
    return time.monotonic() - started, result, None


@pytest.mark.parametrize("loop_backend", BACKENDS)
def test_a_client_that_awaits_its_worker_closes_cleanly_and_quickly(
    loop_runner_factory: LoopRunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client, made = queue_client()

    async def use(n: int) -> int:
        await client.get().queue.put(n)
        await asyncio.sleep(0)
        return n

    runner = loop_runner_factory(shutdown_timeout=SHUTDOWN_TIMEOUT)
    problems: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="loopshim"):
        try:
            for n in range(3):
                seconds, result, error = attempt(runner.run, use, n)
                if error is not None or result != n:
                    problems.append(f"run(use, {n}) raised {error!r} (it returned {result!r})")
                elif seconds > QUICK:  # call scope closes a loop in every call
                    problems.append(f"run(use, {n}) took {seconds:.2f} s")
        finally:
            seconds, _, error = attempt(runner.close)
    if error is not None:
        problems.append(f"close() raised {error!r}")
    if seconds > QUICK:
        problems.append(
            f"close() took {seconds:.2f} s (shutdown_timeout={SHUTDOWN_TIMEOUT:g}) although "
            "nothing was spawned or in flight: only the client's own worker task was left"
        )
    critical = [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL]
    if critical:
        problems.append(f"logged CRITICAL: {critical}")
    outcomes = [c.outcome for c in made]
    if not made or outcomes != ["stopped"] * len(made):
        problems.append(
            f"the clients' workers ended as {outcomes}: each must be stopped by its aclose, "
            "which must run while the worker is alive (not after it was cancelled)"
        )
    handled = sorted(n for c in made for n in c.handled)
    if handled != [0, 1, 2]:
        problems.append(f"the workers handled {handled}, not [0, 1, 2]")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.mark.loopshim_scopes("thread")
@pytest.mark.parametrize("loop_backend", BACKENDS)
def test_a_dead_threads_loop_is_closed_without_failing_another_threads_call(
    loop_runner_factory: LoopRunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """On a thread-per-request server, the loop of a thread that has ended is closed by
    the next call that opens a loop: that unrelated call must not pay for it."""
    client, made = queue_client()

    async def use(n: int) -> int:
        await client.get().queue.put(n)
        return n

    async def unrelated() -> str:
        await asyncio.sleep(0)
        return "unrelated"

    runner = loop_runner_factory(shutdown_timeout=SHUTDOWN_TIMEOUT)
    answers: list[Any] = []
    try:
        with caplog.at_level(logging.DEBUG, logger="loopshim"):
            request = threading.Thread(target=lambda: answers.append(attempt(runner.run, use, 7)))
            request.start()
            request.join(10)
            assert not request.is_alive()
            # A new thread, as the server starts one per request: it opens its own loop
            # and, first, closes the loop the ended thread left behind.
            follow_up = threading.Thread(
                target=lambda: answers.append(attempt(runner.run, unrelated))
            )
            follow_up.start()
            follow_up.join(10)
            assert not follow_up.is_alive()
    finally:
        runner.close()
    (_, first, first_error), (seconds, second, second_error) = answers
    assert (first, first_error) == (7, None)
    assert second_error is None, f"the unrelated call raised {second_error!r}"
    assert second == "unrelated"
    assert seconds < QUICK
    assert [c.outcome for c in made] == ["stopped"]
    assert made[0].handled == [7]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("loop_backend", BACKENDS)
def test_loop_local_accepts_awaitable_clients(loop_runner_factory: LoopRunnerFactory) -> None:
    """``redis.asyncio.Redis`` and ``asyncpg.Pool`` define ``__await__`` (awaiting one
    initialises it); ``loop_local`` hands them over as they are. Neither connects here."""
    redis_asyncio = pytest.importorskip("redis.asyncio")
    asyncpg = pytest.importorskip("asyncpg")
    closed: list[str] = []

    async def close_redis(client: Any) -> None:
        await client.aclose()
        closed.append("redis")

    async def close_pool(pool: Any) -> None:
        closed.append("asyncpg")  # never initialised (awaited): it holds nothing

    redis_client = loopshim.loop_local(
        lambda: redis_asyncio.Redis(host="127.0.0.1", port=9), aclose=close_redis
    )
    pool = loopshim.loop_local(
        lambda: asyncpg.create_pool("postgresql://nobody@127.0.0.1:9/none"), aclose=close_pool
    )

    async def use() -> tuple[str, str, bool]:
        first = redis_client.get()
        assert redis_client.get() is first
        return type(first).__name__, type(pool.get()).__name__, pool.get() is pool.get()

    runner = loop_runner_factory()
    try:
        assert runner.run(use) == ("Redis", "Pool", True)
    finally:
        runner.close()
    assert sorted(closed) == ["asyncpg", "redis"]


def test_an_async_generator_left_suspended_is_closed_with_its_loop(
    loop_runner_factory: LoopRunnerFactory, loop_backend: Any, loop_scope: str
) -> None:
    # Closing a loop closes the async generators still suspended on it (their finally
    # runs on the loop), also when nothing else is left to close. (trio closes them in
    # a cancelled scope, where a finally cannot await: none here.)
    closed: list[str] = []
    kept: list[Any] = []

    async def numbers() -> Any:
        try:
            yield 1
            yield 2
        finally:
            closed.append("closed")

    async def start_one() -> int:
        generator = numbers()
        kept.append(generator)  # still referenced: only closing the loop closes it
        return await generator.__anext__()

    # A call-scope loop, and trio's public thread scope (a trio.run per call), end with
    # the call; the others with close().
    loop_per_call = loop_scope == "call" or loop_backend.options.get("driver") == "public"
    runner = loop_runner_factory()
    assert runner.run(start_one) == 1
    if not loop_per_call:
        assert closed == []
        runner.close()
    assert closed == ["closed"]


@pytest.mark.parametrize("loop_backend", BACKENDS)
def test_an_async_generator_that_will_not_close_is_abandoned_in_bounded_time(
    loop_runner_factory: LoopRunnerFactory,
    loop_scope: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Closing the async generators is bounded: one whose finally ignores cancellation
    # is given up on, with a warning, and the loop still closes.
    from loopshim.backends import _asyncio, _libraries

    grace = 0.2
    monkeypatch.setattr(_asyncio, "CANCEL_GRACE", grace)
    monkeypatch.setattr(_libraries, "CANCEL_GRACE", grace)
    kept: list[Any] = []
    unwinding: list[bool] = []

    async def stubborn() -> Any:
        try:
            yield 1
        finally:
            unwinding.append(True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.01)

    async def start_one() -> int:
        generator = stubborn()
        kept.append(generator)
        return await generator.__anext__()

    runner = loop_runner_factory()
    with caplog.at_level(logging.WARNING, logger="loopshim"):
        elapsed, result, error = attempt(runner.run, start_one)
        assert (result, error) == (1, None)
        if loop_scope != "call":
            elapsed, _, error = attempt(runner.close)
            assert error is None
        else:
            runner.close()
    assert unwinding == [True]
    assert elapsed < 10 * grace + QUICK
    assert "closing the async generators of the" in caplog.text
    assert "timed out" in caplog.text


class _AwaitableShutdownLoop(asyncio.SelectorEventLoop):
    """A loop (``loop_factory``) whose ``shutdown_asyncgens`` returns a future, not a
    coroutine."""

    def shutdown_asyncgens(self) -> Any:  # type: ignore[override]
        return asyncio.ensure_future(super().shutdown_asyncgens(), loop=self)


class _FailingShutdownLoop(asyncio.SelectorEventLoop):
    """A loop whose ``shutdown_asyncgens`` fails, at once or after a step."""

    async def shutdown_asyncgens(self) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("shutdown_asyncgens failed")


@pytest.mark.parametrize("loop_factory", [_AwaitableShutdownLoop, _FailingShutdownLoop])
def test_closing_async_generators_is_contained_whatever_the_loop_does(
    loop_factory: type[asyncio.AbstractEventLoop],
    loop_scope: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Any awaitable will do, and a failure is logged: the call that succeeded still
    # returns, and the loop still closes (its tasks cancelled, its executor stopped).
    runner = loopshim.get_runner(
        "asyncio", scope=loop_scope, cached=False, loop_factory=loop_factory
    )
    kept: list[Any] = []
    cancelled: list[bool] = []

    async def numbers() -> Any:
        yield 1

    async def leftover() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def start() -> int:
        generator = numbers()
        kept.append(generator)  # the loop holds one: shutdown_asyncgens runs
        kept.append(asyncio.get_running_loop().create_task(leftover()))
        await asyncio.sleep(0)
        return await generator.__anext__()

    with caplog.at_level(logging.ERROR, logger="loopshim"):
        assert runner.run(start) == 1
        runner.close()
    assert cancelled == [True]
    failing = loop_factory is _FailingShutdownLoop
    assert ("closing the async generators of the asyncio loop failed" in caplog.text) is failing
