"""Runners over their whole life: dropped runners, shared runners, loop threads that die,
threads loopshim did not start, fork while another thread holds a lock, Ctrl-C while a
loop starts, cancelled background futures, and what is registered with the interpreter."""

from __future__ import annotations

import _thread
import concurrent.futures
import gc
import os
import signal
import subprocess
import sys
import textwrap
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


def _loopshim_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("loopshim-")]


@pytest.mark.loopshim_scopes("process")
def test_cancelled_background_futures_count_as_done(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    runner = loop_runner_factory()
    by_user = runner.spawn(anyio.sleep, 60)
    by_close = runner.spawn(anyio.sleep, 60)
    finished = runner.spawn(anyio.sleep, 0)
    assert by_user.cancel()
    done, _ = concurrent.futures.wait([by_user, finished], timeout=10)
    assert done == {by_user, finished}
    runner.close(timeout=0)
    done, _ = concurrent.futures.wait([by_close], timeout=10)
    assert done == {by_close}
    assert by_close.cancelled()
    assert list(concurrent.futures.as_completed([by_user, by_close], timeout=10))


@pytest.mark.loopshim_scopes("process", "thread")
def test_a_dropped_private_runner_is_closed_when_collected(
    loop_backend: BackendCase, loop_scope: str
) -> None:
    before_threads = len(_loopshim_threads())
    before_fds = _fds()
    for _ in range(20):
        # Made directly: loop_runner_factory keeps its runners, to close them.
        runner = loopshim.get_runner(
            loop_backend.name, scope=loop_scope, cached=False, **loop_backend.options
        )
        runner.run(anyio.sleep, 0)
        del runner
    gc.collect()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(_loopshim_threads()) <= before_threads + 1 and _fds() <= before_fds + 4:
            break
        time.sleep(0.1)
    # A reaper thread may still be finishing; no loop thread or descriptor is pinned.
    assert len([t for t in _loopshim_threads() if t.name != "loopshim-reaper"]) <= before_threads
    assert _fds() <= before_fds + 4


@pytest.mark.loopshim_scopes("thread")
def test_thread_scope_closes_the_loops_of_threads_threading_did_not_start(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    # mod_wsgi and uWSGI serve requests in C threads: current_thread() is a dummy
    # thread that never looks dead, and a new thread may reuse an ended one's id.
    runner = loop_runner_factory()
    before = _fds()
    done = threading.Semaphore(0)

    def serve() -> None:
        runner.run(anyio.sleep, 0)
        done.release()

    for _ in range(30):
        _thread.start_new_thread(serve, ())
        assert done.acquire(timeout=10)
        time.sleep(0.01)  # let the thread end
    gc.collect()
    runner.run(anyio.sleep, 0)  # a new loop here closes the ended threads' loops
    assert _fds() <= before + 12
    runner.close()
    assert _fds() <= before + 4


@pytest.mark.loopshim_scopes("process")
def test_after_a_loop_thread_dies_the_next_calls_get_a_new_loop(
    loop_runner_factory: LoopRunnerFactory,
    loop_backend: BackendCase,
    loop_scope: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = loop_runner_factory()
    assert runner.run(anyio.sleep, 0) is None
    for _ in range(5):
        dead = _kill_loop_thread(runner, loop_backend)
        dead.join(10)
        assert not dead.is_alive()
        assert runner.run(anyio.sleep, 0) is None  # not RunnerClosed
    runner.close()


async def _current_thread() -> threading.Thread:
    return threading.current_thread()


def _kill_loop_thread(runner: loopshim.LoopRunner, backend: BackendCase) -> threading.Thread:
    # The runner's own loop thread (other runners' loop threads bear the same name).
    thread = runner.run(_current_thread)

    async def kill() -> None:
        if backend.name == "trio":
            import trio

            def die() -> None:
                raise SystemExit

            trio.lowlevel.current_trio_token().run_sync_soon(die)
        else:
            import asyncio

            asyncio.get_running_loop().call_soon(sys.exit)

    runner.spawn(kill)
    return thread


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_child_forked_while_another_thread_holds_the_registry_lock_does_not_hang() -> None:
    from loopshim._core import _lifecycle

    lock = _lifecycle.registry_lock()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: its copy of the lock is held by a thread it lacks
            code = 2
            try:
                runner = loopshim.get_runner("asyncio", scope="call")
                code = 0 if runner.run(anyio.sleep, 0) is None else 1
            finally:
                os._exit(code)
    finally:
        release.set()
        holder.join(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung in get_runner()")


def test_ctrl_c_while_a_process_runner_starts_leaves_no_loop_thread(tmp_path: Any) -> None:
    # SIGINT lands while the first call waits for the loop thread to come up.
    script = tmp_path / "start.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, threading, time, anyio, loopshim
            from loopshim.backends._asyncio import AsyncioLoopThread

            def slow(self, _serve=AsyncioLoopThread.serve):
                time.sleep(1.0)  # the loop comes up slowly: Ctrl-C arrives meanwhile
                _serve(self)

            AsyncioLoopThread.serve = slow
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            runner = loopshim.get_runner("asyncio", cached=False)
            try:
                runner.run(anyio.sleep, 0)
            except KeyboardInterrupt:
                print("interrupted")
            runner.close()
            time.sleep(0.2)
            left = [t.name for t in threading.enumerate() if t.name.startswith("loopshim-")]
            print("left:", left)
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "interrupted" in done.stdout, done.stderr
    assert "left: []" in done.stdout, done.stdout + done.stderr


def test_importing_loopshim_registers_nothing_with_the_interpreter() -> None:
    code = textwrap.dedent(
        """
        import atexit, os
        calls = []
        real_register, real_at_fork = atexit.register, os.register_at_fork
        def register(f, *a, **k):
            calls.append(f.__module__)
            return real_register(f, *a, **k)
        atexit.register = register
        def at_fork(**hooks):
            calls.extend(f"at_fork {h.__module__}" for h in hooks.values())
            return real_at_fork(**hooks)
        os.register_at_fork = at_fork
        import loopshim, loopshim.flask, loopshim.abc, loopshim.pytest_plugin
        print("after import:", [c for c in calls if "loopshim" in c])
        loopshim.get_runner("asyncio", scope="call").run(__import__("asyncio").sleep, 0)
        print("after use:", [c for c in calls if "loopshim" in c])
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "after import: []" in done.stdout
    assert (
        "after use: ['loopshim._core._lifecycle', 'at_fork loopshim._core._lifecycle']"
        in done.stdout
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_exit_says_what_it_waits_for_and_abandons_quietly(backend: str) -> None:
    pytest.importorskip(backend)
    # A forgotten fire-and-forget task delays exit by shutdown_timeout: the log says
    # so; a task that ignores cancellation is abandoned without a "destroyed but
    # pending" line from asyncio.
    code = textwrap.dedent(
        f"""
        import logging, anyio, loopshim
        logging.basicConfig(level=logging.WARNING)
        runner = loopshim.get_runner({backend!r}, shutdown_timeout=0.3)

        async def forgotten():
            await anyio.sleep(60)

        async def stubborn():
            with anyio.CancelScope(shield=True):  # ignores cancellation for a while
                await anyio.sleep(30)

        runner.spawn(forgotten)
        if {backend!r} == "asyncio":
            runner.spawn(stubborn)
        runner.run(anyio.sleep, 0.05)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "waiting up to 0.3 s (the " in done.stderr
    assert "forgotten" in done.stderr
    assert "destroyed but it is pending" not in done.stderr
