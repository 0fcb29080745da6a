"""loop_local: one value per running loop, closed with that loop."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import Any

import anyio
import pytest
from conftest import BackendCase

import loopshim
from loopshim.pytest_plugin import LoopRunnerFactory


class Client:
    def __init__(self) -> None:
        self.closed = False


def test_one_instance_per_loop_closed_with_the_loop(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    made: list[Client] = []
    closed: list[Client] = []

    def factory() -> Client:
        made.append(Client())
        return made[-1]

    async def aclose(client: Client) -> None:
        await anyio.sleep(0)
        client.closed = True
        closed.append(client)

    local = loopshim.loop_local(factory, aclose=aclose)

    async def use() -> Client:
        first = local.get()
        await anyio.sleep(0)
        assert local.get() is first
        return first

    runner = loop_runner_factory()
    a1, a2 = runner.run(use), runner.run(use)
    other: list[Client] = []
    t = threading.Thread(target=lambda: other.append(runner.run(use)))
    t.start()
    t.join(30)
    if loop_scope == "process":
        assert a1 is a2 is other[0]  # one loop for everybody
    elif loop_scope == "thread" and loop_backend.options.get("driver") != "public":
        assert a1 is a2  # one loop per thread
        assert other[0] is not a1
    else:
        assert len({id(a1), id(a2), id(other[0])}) == 3  # a loop per call
    runner.close()
    assert made
    assert all(c.closed for c in made)
    assert sorted(map(id, closed)) == sorted(map(id, made))


def test_get_outside_a_loop_is_an_error() -> None:
    local = loopshim.loop_local(Client)
    with pytest.raises(loopshim.LoopshimError, match="no loop is running"):
        local.get()


def test_get_on_a_foreign_loop_is_an_error() -> None:
    local = loopshim.loop_local(Client)

    async def use() -> Any:
        return local.get()

    with pytest.raises(loopshim.LoopshimError, match="loopshim did not start"):
        asyncio.run(use())


@pytest.mark.parametrize("failure", [RuntimeError("aclose failed"), asyncio.CancelledError()])
def test_failing_aclose_is_logged_and_others_still_close(
    loop_runner_factory: LoopRunnerFactory, failure: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    closed: list[str] = []

    async def broken(_: object) -> None:
        raise failure

    async def fine(_: object) -> None:
        closed.append("fine")

    first = loopshim.loop_local(object, aclose=fine)
    second = loopshim.loop_local(object, aclose=broken)

    async def use() -> str:
        first.get()
        second.get()
        return "done"

    runner = loop_runner_factory()
    with caplog.at_level(logging.ERROR, logger="loopshim"):
        assert runner.run(use) == "done"  # in call scope the loop closes within the call
        runner.close()
    assert closed == ["fine"]
    failed = [r for r in caplog.records if "closing" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is not None
    logged = failed[0].exc_info[1]
    if sys.version_info < (3, 11) and isinstance(failure, asyncio.CancelledError):
        # Before 3.11 asyncio hands on a new CancelledError for the one a task raised.
        assert isinstance(logged, asyncio.CancelledError)
    else:
        assert logged is failure
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]


class AsyncioWorkerClient:
    """Like psycopg_pool's pool: a worker task of its own, which its aclose stops and
    awaits (so it fails if the worker was cancelled before aclose ran)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._work())
        self.served = 0

    async def _work(self) -> None:
        while await self.queue.get() is not None:
            self.served += 1

    async def query(self) -> str:
        await self.queue.put(1)
        await asyncio.sleep(0)
        return "ok"

    async def aclose(self) -> None:
        await self.queue.put(None)
        await self.worker


class TrioWorkerClient:
    """The same on trio: a system task reading a memory channel."""

    def __init__(self) -> None:
        import trio

        self.send, receive = trio.open_memory_channel[int | None](100)
        self.finished = trio.Event()
        self.served = 0
        trio.lowlevel.spawn_system_task(self._work, receive)

    async def _work(self, receive: Any) -> None:
        try:
            async for item in receive:
                if item is None:
                    return
                self.served += 1
        finally:
            self.finished.set()

    async def query(self) -> str:
        await self.send.send(1)
        return "ok"

    async def aclose(self) -> None:
        await self.send.send(None)
        await self.finished.wait()


def test_values_close_while_library_tasks_still_run(
    loop_runner_factory: LoopRunnerFactory,
    loop_backend: BackendCase,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The shutdown order: loopshim's own jobs, then loop-local values (whose aclose may
    # await the client's own tasks), and only then is whatever is left cancelled. And
    # close() does not wait the grace period out for the client's long-lived worker.
    client_type = TrioWorkerClient if loop_backend.name == "trio" else AsyncioWorkerClient
    closed: list[int] = []

    async def aclose(client: Any) -> None:
        await client.aclose()
        closed.append(client.served)

    client = loopshim.loop_local(client_type, aclose=aclose)

    async def view() -> str:
        return await client.get().query()  # type: ignore[no-any-return]

    runner = loop_runner_factory(shutdown_timeout=60)
    with caplog.at_level(logging.WARNING, logger="loopshim"):
        assert [runner.run(view) for _ in range(3)] == ["ok"] * 3
        started = time.monotonic()
        runner.close()
        took = time.monotonic() - started
    assert took < 20, f"close() waited {took:.1f} s for a library task"  # not the 60 s
    assert closed
    assert all(closed)
    assert sum(closed) == 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_an_aclose_that_never_finishes_is_bounded(
    loop_runner_factory: LoopRunnerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from loopshim._core import _backend

    monkeypatch.setattr(_backend, "CLEANUP_GRACE", 0.3)
    closed: list[str] = []

    async def hang(_: object) -> None:
        await anyio.sleep_forever()

    async def fine(_: object) -> None:
        closed.append("fine")

    first = loopshim.loop_local(object, aclose=fine)
    stuck = loopshim.loop_local(object, aclose=hang)

    async def use() -> str:
        first.get()
        stuck.get()
        return "done"

    runner = loop_runner_factory()
    with caplog.at_level(logging.ERROR, logger="loopshim"):
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append((runner.run(use), runner.close())))
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "a hanging aclose was not bounded"
    assert outcome == [("done", None)]
    assert closed == ["fine"]
    assert "did not finish" in caplog.text


class Awaitable:
    """A client that is itself awaitable, as redis.asyncio.Redis and asyncpg.Pool are."""

    def __await__(self) -> Any:
        yield from asyncio.sleep(0).__await__()
        return self


def test_values_may_be_awaitable(loop_runner_factory: LoopRunnerFactory) -> None:
    local = loopshim.loop_local(Awaitable)

    async def use() -> bool:
        value = local.get()
        return isinstance(value, Awaitable) and local.get() is value

    with loop_runner_factory() as runner:
        assert runner.run(use) is True


def test_an_async_factory_is_awaited_once_per_loop_by_aget(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    made: list[Client] = []

    async def make() -> Client:
        await anyio.sleep(0.01)
        made.append(Client())
        return made[-1]

    local = loopshim.loop_local(make)

    async def use() -> list[Client]:
        results: list[Client] = []

        async def one() -> None:
            results.append(await local.aget())

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
        results.append(await local.aget())
        return results

    runner = loop_runner_factory()
    results = runner.run(use)
    runner.close()
    assert len(made) == 1
    assert all(r is made[0] for r in results)


def test_a_failing_async_factory_is_retried_by_the_next_aget(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    attempts: list[int] = []

    async def make() -> Client:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("database not ready")
        return Client()

    local = loopshim.loop_local(make)

    async def use() -> tuple[str, bool]:
        try:
            await local.aget()
        except ConnectionError as exc:
            first = str(exc)
        return first, isinstance(await local.aget(), Client)

    with loop_runner_factory() as runner:
        assert runner.run(use) == ("database not ready", True)


def test_get_on_an_async_factory_says_to_use_aget() -> None:
    async def make() -> Client:
        return Client()

    local = loopshim.loop_local(make)

    async def use() -> Any:
        return local.get()

    runner = loopshim.get_runner("asyncio", scope="call", cached=False)
    with pytest.raises(TypeError, match=r"is an async function .* `await local\.aget\(\)`"):
        runner.run(use)


def test_aget_works_with_a_plain_factory() -> None:
    local = loopshim.loop_local(Client)

    async def use() -> bool:
        return await local.aget() is local.get()

    with loopshim.get_runner("asyncio", scope="call", cached=False) as runner:
        assert runner.run(use) is True


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="callable factory"):
        loopshim.loop_local(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aclose"):
        loopshim.loop_local(Client, aclose="close")  # type: ignore[arg-type]


@pytest.mark.loopshim_scopes("thread", "call")
def test_an_aclose_may_call_its_runner_while_the_loop_closes(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    # While a runner closes one of its loops, code running on that loop (an aclose) is
    # on the runner's own loop: run_async awaits in place there.
    runner = loop_runner_factory()
    outcomes: list[object] = []

    async def helper() -> str:
        return "helped"

    async def aclose(value: object) -> None:
        try:
            outcomes.append(await runner.run_async(helper))
        except Exception as exc:
            outcomes.append(exc)

    thing = loopshim.loop_local(object, aclose=aclose)

    async def use() -> bool:
        return thing.get() is thing.get()

    assert runner.run(use) is True
    runner.close()
    assert outcomes == ["helped"]
