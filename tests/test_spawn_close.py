"""Background tasks (process scope), closing, and what close() leaves behind."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from typing import Any

import anyio
import pytest
from conftest import BackendCase, make_runner, only_scopes

import loopshim


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@only_scopes("process")
def test_spawned_task_outlives_the_call_that_started_it(runner: loopshim.LoopRunner) -> None:
    release = threading.Event()

    async def background(n: int) -> int:
        while not release.is_set():
            await anyio.sleep(0.01)
        return n * 2

    async def view() -> concurrent.futures.Future[int]:
        return runner.spawn(background, 21)

    future = runner.run(view)
    assert isinstance(future, concurrent.futures.Future)
    assert not future.done()  # the call returned, the task goes on
    release.set()
    assert future.result(timeout=10) == 42


@only_scopes("process")
def test_spawn_from_sync_code_never_blocks(runner: loopshim.LoopRunner) -> None:
    async def slow() -> str:
        await anyio.sleep(0.3)
        return "done"

    started = time.monotonic()
    future = runner.spawn(slow)
    assert time.monotonic() - started < 0.25
    assert future.result(timeout=10) == "done"


@only_scopes("process")
def test_background_failure_is_logged_and_lands_in_future(
    runner: loopshim.LoopRunner, caplog: pytest.LogCaptureFixture
) -> None:
    error = RuntimeError("background failure")

    async def fails() -> None:
        await anyio.sleep(0)
        raise error

    with caplog.at_level(logging.ERROR, logger="loopshim"):
        future = runner.spawn(fails)
        assert future.exception(timeout=10) is error
    assert any(r.exc_info and r.exc_info[1] is error for r in caplog.records)
    assert "background task" in caplog.text
    assert "fails" in caplog.text
    # The loop survived it.
    assert runner.run(anyio.sleep, 0) is None


@only_scopes("process")
def test_spawned_task_does_not_see_the_callers_context(runner: loopshim.LoopRunner) -> None:
    import contextvars

    user = contextvars.ContextVar("user", default="nobody")

    async def who() -> str:
        return user.get()

    async def view() -> concurrent.futures.Future[str]:
        user.set("alice")
        return runner.spawn(who)

    assert runner.run(view).result(timeout=10) == "nobody"


@only_scopes("process")
def test_cancelling_the_future_cancels_the_task(runner: loopshim.LoopRunner) -> None:
    cancelled = threading.Event()
    running = threading.Event()

    async def forever() -> None:
        running.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    future = runner.spawn(forever)
    assert running.wait(10)
    assert future.cancel()
    assert cancelled.wait(10)


@only_scopes("process")
def test_close_drains_then_cancels(case: BackendCase, scope: str) -> None:
    outcome: dict[str, str] = {}

    async def quick() -> None:
        await anyio.sleep(0.2)
        outcome["quick"] = "finished"

    async def endless() -> None:
        try:
            await anyio.sleep(60)
            outcome["endless"] = "finished"
        except anyio.get_cancelled_exc_class():
            outcome["endless"] = "cancelled"
            raise

    runner = make_runner(case, scope, shutdown_timeout=1.0)
    quick_future = runner.spawn(quick)
    endless_future = runner.spawn(endless)
    started = time.monotonic()
    runner.close()
    elapsed = time.monotonic() - started
    assert outcome == {"quick": "finished", "endless": "cancelled"}
    assert 0.9 <= elapsed < 5
    assert quick_future.result(timeout=0) is None
    assert endless_future.cancelled()


@only_scopes("process")
def test_close_timeout_argument_overrides_shutdown_timeout(case: BackendCase, scope: str) -> None:
    runner = make_runner(case, scope, shutdown_timeout=60)
    future = runner.spawn(anyio.sleep, 60)
    started = time.monotonic()
    runner.close(timeout=0.1)
    assert time.monotonic() - started < 5
    assert future.cancelled()


@only_scopes("thread", "call")
def test_spawn_outside_process_scope_names_the_fix(runner: loopshim.LoopRunner) -> None:
    with pytest.raises(loopshim.ScopeError, match=r'scope="process"'):
        runner.spawn(anyio.sleep, 0)


def test_close_is_idempotent_and_later_calls_raise(runner: loopshim.LoopRunner) -> None:
    assert runner.run(anyio.sleep, 0) is None
    runner.close()
    runner.close()
    with pytest.raises(loopshim.RunnerClosed):
        runner.run(anyio.sleep, 0)


def test_context_manager_closes(case: BackendCase, scope: str) -> None:
    with make_runner(case, scope) as runner:
        assert runner.run(anyio.sleep, 0) is None
    with pytest.raises(loopshim.RunnerClosed):
        runner.run(anyio.sleep, 0)


@pytest.mark.timeout(60)
def test_close_leaves_no_thread_loop_or_fd_behind(case: BackendCase, scope: str) -> None:
    threads_before = set(threading.enumerate())
    fds_before = _fds()
    runner = make_runner(case, scope)

    def use() -> None:
        for _ in range(5):
            runner.run(anyio.sleep, 0)

    use()
    # Thread scope: loops of other threads, one of them still alive at close().
    finished = threading.Thread(target=use)
    finished.start()
    finished.join()
    keep_going = threading.Event()
    alive_used = threading.Event()

    def use_and_wait() -> None:
        use()
        alive_used.set()
        keep_going.wait(30)

    alive = threading.Thread(target=use_and_wait)
    alive.start()
    assert alive_used.wait(30)
    if scope == "process":
        assert any(t.name.startswith("loopshim-") for t in threading.enumerate())
    runner.close()
    keep_going.set()
    alive.join()
    leftover = [t for t in threading.enumerate() if t not in threads_before]
    assert leftover == []
    assert _fds() == fds_before


@only_scopes("thread")
def test_thread_scope_reaps_loops_of_finished_threads(case: BackendCase, scope: str) -> None:
    fds_before = _fds()
    with make_runner(case, scope) as runner:

        def one_request() -> None:
            runner.run(anyio.sleep, 0)

        # A thread-per-request server: many short-lived threads.
        for _ in range(20):
            t = threading.Thread(target=one_request)
            t.start()
            t.join()
        # At most the newest thread's loop (and this thread's none) stays open.
        assert _fds() - fds_before <= 6
    assert _fds() == fds_before


@only_scopes("process")
def test_call_in_flight_when_closed_gets_runner_closed(case: BackendCase, scope: str) -> None:
    runner = make_runner(case, scope, shutdown_timeout=0.1)
    started = threading.Event()
    result: dict[str, Any] = {}

    async def long_call() -> None:
        started.set()
        await anyio.sleep(60)

    def caller() -> None:
        try:
            runner.run(long_call)
        except BaseException as exc:
            result["error"] = exc

    t = threading.Thread(target=caller)
    t.start()
    assert started.wait(10)
    runner.close()
    t.join(10)
    assert isinstance(result["error"], loopshim.RunnerClosed)
    assert "long_call" in str(result["error"])
