"""The guarantees on the paths every call takes, where they were made cheaper:
``process``-scope calls from threads other than the main one (on trio, they share one
cancel scope, which only ``close()`` cancels)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio
import pytest
from conftest import BackendCase, make_runner, only_scopes

import loopshim


@only_scopes("process")
@pytest.mark.timeout(60)
def test_calls_from_worker_threads_are_cancelled_by_close_before_loop_locals_close(
    case: BackendCase, scope: str
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
    runner = make_runner(case, scope, shutdown_timeout=0.2)
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


@only_scopes("process")
@pytest.mark.timeout(60)
def test_one_call_from_a_worker_thread_times_out_alone(
    case: BackendCase, scope: str, caplog: pytest.LogCaptureFixture
) -> None:
    runner = make_runner(case, scope, timeout=0.3)
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
