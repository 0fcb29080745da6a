"""Background tasks (process scope), closing, and what close() leaves behind."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import sys
import threading
import time
from typing import Any

import anyio
import pytest
from conftest import BackendCase

import loopshim
from loopshim.pytest_plugin import LoopRunnerFactory


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.loopshim_scopes("process")
def test_spawned_task_outlives_the_call_that_started_it(loop_runner: loopshim.LoopRunner) -> None:
    release = threading.Event()

    async def background(n: int) -> int:
        while not release.is_set():
            await anyio.sleep(0.01)
        return n * 2

    async def view() -> concurrent.futures.Future[int]:
        return loop_runner.spawn(background, 21)

    future = loop_runner.run(view)
    assert isinstance(future, concurrent.futures.Future)
    assert not future.done()  # the call returned, the task goes on
    release.set()
    assert future.result(timeout=10) == 42


@pytest.mark.loopshim_scopes("process")
def test_spawn_from_sync_code_never_blocks(loop_runner: loopshim.LoopRunner) -> None:
    async def slow() -> str:
        await anyio.sleep(0.3)
        return "done"

    started = time.monotonic()
    future = loop_runner.spawn(slow)
    assert time.monotonic() - started < 0.25
    assert future.result(timeout=10) == "done"


@pytest.mark.loopshim_scopes("process")
def test_background_failure_is_logged_and_lands_in_future(
    loop_runner: loopshim.LoopRunner, caplog: pytest.LogCaptureFixture
) -> None:
    error = RuntimeError("background failure")

    async def fails() -> None:
        await anyio.sleep(0)
        raise error

    with caplog.at_level(logging.ERROR, logger="loopshim"):
        future = loop_runner.spawn(fails)
        assert future.exception(timeout=10) is error
    assert any(r.exc_info and r.exc_info[1] is error for r in caplog.records)
    assert "background task" in caplog.text
    assert "fails" in caplog.text
    # The loop survived it.
    assert loop_runner.run(anyio.sleep, 0) is None


@pytest.mark.loopshim_scopes("process")
def test_spawned_task_does_not_see_the_callers_context(loop_runner: loopshim.LoopRunner) -> None:
    import contextvars

    user = contextvars.ContextVar("user", default="nobody")

    async def who() -> str:
        return user.get()

    async def view() -> concurrent.futures.Future[str]:
        user.set("alice")
        return loop_runner.spawn(who)

    assert loop_runner.run(view).result(timeout=10) == "nobody"


@pytest.mark.loopshim_scopes("process")
def test_cancelling_the_future_cancels_the_task(loop_runner: loopshim.LoopRunner) -> None:
    cancelled = threading.Event()
    running = threading.Event()

    async def forever() -> None:
        running.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    future = loop_runner.spawn(forever)
    assert running.wait(10)
    assert future.cancel()
    assert cancelled.wait(10)


@pytest.mark.loopshim_scopes("process")
def test_close_drains_then_cancels(loop_runner_factory: LoopRunnerFactory) -> None:
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

    runner = loop_runner_factory(shutdown_timeout=1.0)
    quick_future = runner.spawn(quick)
    endless_future = runner.spawn(endless)
    started = time.monotonic()
    runner.close()
    elapsed = time.monotonic() - started
    assert outcome == {"quick": "finished", "endless": "cancelled"}
    assert 0.9 <= elapsed < 5
    assert quick_future.result(timeout=0) is None
    assert endless_future.cancelled()


@pytest.mark.loopshim_scopes("process")
def test_tasks_cancelled_at_close_are_logged_once_with_their_names(
    loop_runner_factory: LoopRunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def write_order(n: int) -> None:
        await anyio.sleep(60)

    async def send_receipt() -> None:
        await anyio.sleep(60)

    runner = loop_runner_factory()
    for n in range(3):
        runner.spawn(write_order, n)
    runner.spawn(send_receipt)
    with caplog.at_level(logging.WARNING, logger="loopshim"):
        runner.close(timeout=0.1)
    lines = [r.getMessage() for r in caplog.records if "cancelled" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "4 background tasks" in lines[0]
    assert lines[0].count("write_order") == 3
    assert "send_receipt" in lines[0]
    assert "shutdown_timeout" in lines[0]


def test_close_does_not_wait_for_tasks_loopshim_does_not_own(
    loop_runner_factory: LoopRunnerFactory,
    loop_backend: BackendCase,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A library's long-lived task (a pool's worker, a pubsub reader) is cancelled once
    # loopshim's own work is done; close() does not sit out the grace period for it.
    stopped: list[str] = []

    async def reader() -> None:
        try:
            await anyio.sleep(3600)
        finally:
            stopped.append("reader")

    async def start_reader() -> None:
        if loop_backend.name == "trio":
            import trio

            trio.lowlevel.spawn_system_task(reader)
        else:
            import asyncio

            asyncio.get_running_loop().create_task(reader())

    runner = loop_runner_factory(shutdown_timeout=60)
    with caplog.at_level(logging.WARNING, logger="loopshim"):
        runner.run(start_reader)
        started = time.monotonic()
        runner.close()
    assert time.monotonic() - started < 20  # not the 60 s grace period
    assert stopped == ["reader"]
    assert "background task" not in caplog.text  # not loopshim's: nothing to report


@pytest.mark.loopshim_scopes("process")
def test_close_timeout_argument_overrides_shutdown_timeout(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    runner = loop_runner_factory(shutdown_timeout=60)
    future = runner.spawn(anyio.sleep, 60)
    started = time.monotonic()
    runner.close(timeout=0.1)
    assert time.monotonic() - started < 5
    assert future.cancelled()


@pytest.mark.loopshim_scopes("thread", "call")
def test_spawn_outside_process_scope_names_the_fix(loop_runner: loopshim.LoopRunner) -> None:
    with pytest.raises(loopshim.ScopeError, match=r'scope="process"'):
        loop_runner.spawn(anyio.sleep, 0)


def test_close_is_idempotent_and_later_calls_raise(loop_runner: loopshim.LoopRunner) -> None:
    assert loop_runner.run(anyio.sleep, 0) is None
    loop_runner.close()
    loop_runner.close()
    with pytest.raises(loopshim.RunnerClosed):
        loop_runner.run(anyio.sleep, 0)


def test_context_manager_closes(loop_runner_factory: LoopRunnerFactory) -> None:
    with loop_runner_factory() as runner:
        assert runner.run(anyio.sleep, 0) is None
    with pytest.raises(loopshim.RunnerClosed):
        runner.run(anyio.sleep, 0)


@pytest.mark.timeout(60)
def test_close_leaves_no_thread_loop_or_fd_behind(
    loop_runner_factory: LoopRunnerFactory, loop_scope: str
) -> None:
    threads_before = set(threading.enumerate())
    fds_before = _fds()
    runner = loop_runner_factory()

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
    if loop_scope == "process":
        assert any(t.name.startswith("loopshim-") for t in threading.enumerate())
    runner.close()
    keep_going.set()
    alive.join()
    leftover = [t for t in threading.enumerate() if t not in threads_before]
    assert leftover == []
    assert _fds() == fds_before


@pytest.mark.loopshim_scopes("thread")
def test_thread_scope_reaps_loops_of_finished_threads(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    fds_before = _fds()
    with loop_runner_factory() as runner:

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


def _close_while_threads_call(runner: loopshim.LoopRunner, after: float, callers: int) -> int:
    """Close *runner* *after* seconds of calls from *callers* threads, each calling
    until it gets RunnerClosed; how many calls were made (any other error fails)."""
    errors: list[BaseException] = []
    calls = [0] * callers
    started = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        started.wait(10)
        while True:
            try:
                runner.run(anyio.sleep, 0)
            except loopshim.RunnerClosed:
                return
            except BaseException as exc:
                errors.append(exc)
                return
            calls[index] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    started.wait(10)
    time.sleep(after)
    runner.close()
    deadline = time.monotonic() + 20
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert errors == []
    assert not any(t.is_alive() for t in threads)
    return sum(calls)


@pytest.mark.loopshim_scopes("thread")
def test_close_racing_calls_in_many_threads_closes_every_loop_once(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    # close() and the calls agree through the loops' busy and retired marks, not a
    # lock: close at every moment of the calls, and each loop must be closed exactly
    # once, never while a call drives it, and never left open.
    with loop_runner_factory() as warm_up:
        # libuv opens a pipe for the whole process with its first loop in a thread.
        t = threading.Thread(target=warm_up.run, args=(anyio.sleep, 0))
        t.start()
        t.join()
    fds_before = _fds()
    calls = 0
    for attempt in range(15):
        calls += _close_while_threads_call(loop_runner_factory(), 0.002 * attempt, 6)
        assert _fds() == fds_before, f"attempt {attempt}: a loop was left open"
    assert calls > 0


@pytest.mark.loopshim_scopes("thread")
def test_a_call_made_before_this_threads_call_starts_its_loop_is_refused(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    # A finalizer or a signal handler can run between the moment a call marks its loop
    # busy and the moment the loop runs. A call made there must be refused: run on the
    # same loop, its end would clear the busy mark of the call still to come, which
    # close() would then take for idle.
    runner = loop_runner_factory()

    async def nothing() -> str:
        return "done"

    assert runner.run(nothing) == "done"
    loop = runner._scope._local.loop  # type: ignore[attr-defined]
    drive = loop.run_job
    nested: list[BaseException] = []

    def run_job(job: Any) -> None:
        del loop.run_job  # once
        try:
            runner.run(nothing)
        except BaseException as exc:
            nested.append(exc)
        drive(job)

    loop.run_job = run_job
    assert runner.run(nothing) == "done"
    assert len(nested) == 1
    assert isinstance(nested[0], loopshim.ReentrantCallError)
    assert loop.busy is False
    runner.close()
    assert loop.closed


@pytest.mark.loopshim_scopes("process")
def test_call_in_flight_when_closed_gets_runner_closed(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    runner = loop_runner_factory(shutdown_timeout=0.1)
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


@pytest.mark.loopshim_scopes("process")
def test_spawn_and_run_from_a_draining_task_get_runner_closed_at_once(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    runner = loop_runner_factory(shutdown_timeout=3)
    refused: list[BaseException] = []
    closing = threading.Event()

    async def keeps_spawning() -> None:
        while True:
            await anyio.sleep(0.02)
            if closing.is_set():
                try:
                    runner.spawn(anyio.sleep, 0)
                except loopshim.RunnerClosed as exc:
                    refused.append(exc)
                    return

    runner.spawn(keeps_spawning)
    closing.set()
    started = time.monotonic()
    runner.close()
    assert time.monotonic() - started < 2  # the task ended early: no waiting for the grace
    assert len(refused) == 1


def test_spawned_future_settles_when_the_loop_thread_dies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import gc
    import sys

    runner = loopshim.get_runner("asyncio", cached=False)
    started = threading.Event()

    async def waits() -> None:
        started.set()
        await asyncio.sleep(60)

    future = runner.spawn(waits)
    assert started.wait(10)

    async def kill_loop() -> None:
        # A callback raising SystemExit escapes the loop and ends its thread.
        asyncio.get_running_loop().call_soon(sys.exit)

    runner.spawn(kill_loop)
    with pytest.raises(loopshim.RunnerClosed, match="loop thread stopped"):
        future.result(timeout=10)
    # The next call starts a fresh loop thread.
    assert runner.run(anyio.sleep, 0) is None
    runner.close()
    # The dead loop's task, closed by the garbage collector, logs no second failure:
    # its future already said RunnerClosed.
    gc.collect()
    assert not [r for r in caplog.records if "background task" in r.getMessage()]


def test_a_dead_loops_tasks_say_nothing_more_at_exit() -> None:
    """The death is logged once; the tasks it left behind, destroyed at some later
    garbage collection (here: at exit), are not each reported as destroyed but pending."""
    import subprocess

    script = """
import asyncio, sys, threading, anyio, loopshim

runner = loopshim.get_runner("asyncio", cached=False)
started = threading.Event()

async def waits():
    started.set()
    await asyncio.sleep(60)

async def kill_loop():
    asyncio.get_running_loop().call_soon(sys.exit)

future = runner.spawn(waits)
started.wait(10)
runner.spawn(kill_loop)
try:
    future.result(timeout=10)
except loopshim.RunnerClosed:
    print("settled")
runner.run(anyio.sleep, 0)
runner.close()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "settled\n"
    assert re.search(r"loop thread \S+ died", done.stderr), done.stderr
    assert "destroyed but it is pending" not in done.stderr


def test_cancelling_a_background_future_as_it_settles_never_breaks_the_loop() -> None:
    """Another thread cancels the future between the task's end and its settling (here:
    while the failure is being logged); finish() runs on the loop and must not raise."""
    import contextvars

    from loopshim.abc import Job

    async def nothing() -> None:
        pass

    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    job: Job[None] = Job(nothing, (), {}, context=contextvars.Context(), future=future)
    job.error = RuntimeError("failed")

    class CancelWhileLogging(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            future.cancel()

    handler = CancelWhileLogging()
    logger = logging.getLogger("loopshim")
    logger.addHandler(handler)
    try:
        job.finish()  # must not raise InvalidStateError
    finally:
        logger.removeHandler(handler)
    assert future.cancelled()


def test_close_timeout_must_be_a_grace_period() -> None:
    runner = loopshim.get_runner("asyncio", scope="call", cached=False)
    for bad in (-1, float("inf"), "5", True):
        with pytest.raises(loopshim.OptionError, match=r"close\(timeout=\.\.\.\) takes the grace"):
            runner.close(timeout=bad)  # type: ignore[arg-type]
    runner.close(timeout=0)


if sys.version_info >= (3, 12):  # shutdown_default_executor(timeout) is new in 3.12

    @pytest.mark.filterwarnings("ignore:The executor did not finish:RuntimeWarning")
    @pytest.mark.loopshim_scopes("thread", "call")
    @pytest.mark.parametrize("loop_backend", ["asyncio", "uvloop"])
    def test_timeout_is_not_held_up_by_a_busy_executor_thread(
        loop_runner_factory: LoopRunnerFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """asyncio's default executor: closing the call's loop waits for it, boundedly."""
        import asyncio

        from loopshim.backends import _asyncio

        monkeypatch.setattr(_asyncio, "CANCEL_GRACE", 0.5)

        async def blocks_a_worker_thread() -> None:
            await asyncio.to_thread(time.sleep, 5)

        runner = loop_runner_factory(timeout=0.2)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            runner.run(blocks_a_worker_thread)
        assert time.monotonic() - started < 3
        runner.close()


@pytest.mark.parametrize("loop_backend", ["asyncio", "uvloop"])
def test_the_default_executor_works_and_is_stopped_at_close(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    import asyncio

    async def in_executor() -> threading.Thread:
        return await asyncio.get_running_loop().run_in_executor(None, threading.current_thread)

    runner = loop_runner_factory()
    workers = {runner.run(in_executor) for _ in range(3)}
    assert threading.current_thread() not in workers
    runner.close()
    for worker in workers:
        worker.join(5)
        assert not worker.is_alive(), worker


def test_a_loops_executor_is_set_up_at_its_first_job_only() -> None:
    from loopshim.backends._asyncio import _LoopExecutor

    unused = _LoopExecutor()
    unused.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        unused.submit(int)
    used = _LoopExecutor()
    assert used.submit(int, "7").result(5) == 7
    (worker,) = used._threads
    used.shut_down_within(5)
    assert not worker.is_alive()
    with pytest.raises(RuntimeError, match="after shutdown"):
        used.submit(int)


def test_a_worker_that_lends_its_place_gets_a_thread_for_the_next_job() -> None:
    # One worker, busy with a job that waits for another job of the same pool: the
    # lent place must start a thread, whatever the pool's count of idle workers says
    # (before 3.12 a worker counts itself idle after every item).
    from loopshim.backends._asyncio import _LoopExecutor

    pool = _LoopExecutor()
    pool.submit(time.sleep, 0.2)  # the pool is set up; its one worker is busy
    pool._max_workers = 1

    def waits_for_another_job() -> str:
        take_back = pool.lend_worker()
        assert take_back is not None
        try:
            return str(pool.submit(lambda: "ran").result(5))
        finally:
            take_back()

    try:
        # Queued behind the sleep: its worker takes it next, still counted idle.
        assert pool.submit(waits_for_another_job).result(10) == "ran"
        assert pool.lend_worker() is None  # not one of the pool's threads
    finally:
        pool.shut_down_within(5)


def test_a_dropped_runner_is_still_drained_at_exit(tmp_path: Any) -> None:
    import subprocess
    import sys

    marker = tmp_path / "drained"
    script = f"""
import gc, anyio, loopshim

async def background():
    await anyio.sleep(0.3)
    open({str(marker)!r}, "w").write("done")

runner = loopshim.get_runner("asyncio", cached=False)
runner.spawn(background)
del runner
gc.collect()
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert marker.read_text() == "done"
