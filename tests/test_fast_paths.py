"""The guarantees on the paths every call takes, where they were made cheaper: uvloop's
``thread`` and ``call`` scope (driven with ``run_forever``, stopped by the call's task)
and ``process``-scope calls from threads other than the main one (on trio, they share
one cancel scope, which only ``close()`` cancels)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from typing import Any

import anyio
import pytest

import loopshim
from loopshim.pytest_plugin import LoopRunnerFactory

var: contextvars.ContextVar[str] = contextvars.ContextVar("fast_paths_var", default="unset")


@pytest.mark.parametrize("loop_backend", ["uvloop"])
@pytest.mark.loopshim_scopes("thread", "call")
def test_uvloop_a_call_that_stops_the_loop_and_returns_leaves_the_next_call_alone(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    async def stops_then_returns() -> str:
        asyncio.get_running_loop().stop()
        return "returned"

    async def waits() -> int:
        await asyncio.sleep(0.001)
        return 3

    with loop_runner_factory() as runner:
        assert runner.run(stops_then_returns) == "returned"
        assert runner.run(waits) == 3


@pytest.mark.parametrize("loop_backend", ["uvloop"])
@pytest.mark.loopshim_scopes("thread", "call")
def test_uvloop_a_call_the_loop_is_stopped_under_fails_and_the_loop_stays_usable(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    async def stops_then_sleeps() -> None:
        asyncio.get_running_loop().stop()
        await asyncio.sleep(0.01)

    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    with loop_runner_factory() as runner:
        with pytest.raises(RuntimeError, match="stopped before"):
            runner.run(stops_then_sleeps)
        assert runner.run(add, 1, 2) == 3


@pytest.mark.parametrize("loop_backend", ["uvloop"])
@pytest.mark.loopshim_scopes("thread", "call")
def test_uvloop_results_errors_context_and_timeouts(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    class Boom(Exception):
        pass

    async def sets_and_returns() -> str:
        var.set("set by the call")
        await asyncio.sleep(0)
        return "result"

    async def raises() -> None:
        await asyncio.sleep(0)
        raise Boom

    async def interrupts() -> None:
        raise KeyboardInterrupt

    with loop_runner_factory(timeout=0.2) as runner:
        token = var.set("caller")
        try:
            assert runner.run(sets_and_returns) == "result"
            assert var.get() == "set by the call"
        finally:
            var.reset(token)
        with pytest.raises(Boom):
            runner.run(raises)
        with pytest.raises(KeyboardInterrupt):
            runner.run(interrupts)
        with pytest.raises(TimeoutError):
            runner.run(asyncio.sleep, 5)
        assert runner.run(asyncio.sleep, 0) is None


@pytest.mark.loopshim_scopes("process")
@pytest.mark.timeout(60)
def test_calls_from_worker_threads_are_cancelled_by_close_before_loop_locals_close(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    events: list[str] = []
    lock = threading.Lock()

    def record(event: str) -> None:
        with lock:
            events.append(event)

    def make_client() -> str:
        return "client"

    async def close_client(value: str) -> None:
        record("loop_local closed")

    client = loopshim.loop_local(make_client, aclose=close_client)
    runner = loop_runner_factory(shutdown_timeout=0.2)
    started = threading.Semaphore(0)
    errors: list[BaseException] = []

    async def long_call() -> None:
        assert client.get() == "client"
        started.release()
        try:
            await anyio.sleep(60)
        finally:
            record("call unwound")

    def caller() -> None:
        try:
            runner.run(long_call)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert started.acquire(timeout=10)
    begun = time.monotonic()
    runner.close()
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - begun < 5
    assert len(errors) == 3
    assert all(isinstance(error, loopshim.RunnerClosed) for error in errors), errors
    assert events == ["call unwound"] * 3 + ["loop_local closed"]


@pytest.mark.loopshim_scopes("process")
@pytest.mark.timeout(60)
def test_one_call_from_a_worker_thread_times_out_alone(
    loop_runner_factory: LoopRunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    runner = loop_runner_factory(timeout=0.3)
    results: dict[str, Any] = {}

    def caller(name: str, seconds: float) -> None:
        try:
            results[name] = runner.run(anyio.sleep, seconds)
        except BaseException as exc:
            results[name] = exc

    slow = threading.Thread(target=caller, args=("slow", 5))
    quick = threading.Thread(target=caller, args=("quick", 0.1))
    with caplog.at_level(logging.WARNING, logger="loopshim"):
        slow.start()
        quick.start()
        slow.join(10)
        quick.join(10)
        assert runner.run(anyio.sleep, 0) is None
    runner.close()
    assert isinstance(results["slow"], TimeoutError)
    assert results["quick"] is None
