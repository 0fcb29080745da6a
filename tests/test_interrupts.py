"""Interrupts and cancellations that land at awkward moments of a call: Ctrl-C in the
main thread at any moment, on every backend and scope — it always comes out as
KeyboardInterrupt, the runner keeps working, no file descriptor is left behind and
nothing hangs (each such test runs in a subprocess that sends SIGINT to its own main
thread) — and a cancellation that reaches a task before its first step."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import anyio
import pytest
from conftest import BACKENDS, BackendCase

import loopshim
from loopshim.pytest_plugin import LoopRunnerFactory

#: loopshim's own backends: the scripts below run in a fresh interpreter, where the
#: suite's third-party backend is not registered.
OWN_BACKENDS = [case for case in BACKENDS if case.id != "third-party"]
#: Backends whose thread-scope loop loopshim drives step by step (trio's public driver
#: is a fresh trio.run per call, which cannot leave a coroutine behind).
DRIVEN_BY_LOOPSHIM = [case for case in OWN_BACKENDS if case.id != "trio-public"]

#: Sends SIGINT to the main thread at a random moment of a burst of short calls, many
#: times over, and reports what came out of each burst.
_AT_RANDOM_MOMENTS = textwrap.dedent(
    """
    import collections, faulthandler, json, os, random, signal, sys, threading, time
    import anyio, loopshim

    backend, scope, options, budget, seed, handler = sys.argv[1:]
    faulthandler.dump_traceback_later(float(budget) + 30, exit=True)  # a hang fails loudly
    random.seed(int(seed))
    handled = []
    sent = signal.SIGINT
    if handler == "default":
        Interrupt = KeyboardInterrupt
    else:
        # The program's own handler, which raises an exception of its own: for SIGINT,
        # or for another signal, which loopshim does not guard (a server's SIGQUIT).
        class Stop(Exception if handler == "own" else SystemExit):
            pass

        def own(signum, frame):
            handled.append(signum)
            raise Stop("stop")

        sent = signal.SIGINT if handler == "own" else signal.SIGUSR1
        signal.signal(sent, own)
        Interrupt = Stop
    runner = loopshim.get_runner(backend, scope=scope, cached=False, **json.loads(options))

    async def noop():
        return 1

    async def short():
        await anyio.sleep(0.0005)
        return 2

    def fds():
        return len(os.listdir("/proc/self/fd"))

    outcomes = collections.Counter()
    unusable = []
    runner.run(short)  # once-per-process set-up (libuv's) is not a leak
    before = fds()
    main = threading.get_ident()
    deadline = time.monotonic() + float(budget)
    while time.monotonic() < deadline:
        timer = threading.Timer(
            random.uniform(0.0002, 0.003), signal.pthread_kill, (main, sent)
        )
        try:
            timer.start()
            for _ in range(50):
                runner.run(random.choice((noop, short)))
            timer.join()
            time.sleep(0.01)
            outcomes["none during the calls"] += 1
        except Interrupt:
            outcomes["interrupted"] += 1
        except BaseException as exc:
            outcomes[f"{type(exc).__name__}: {exc}"] += 1
        while True:  # the signal is sent for sure before the runner is checked
            try:
                timer.join()
                time.sleep(0.001)
                break
            except Interrupt:
                outcomes["interrupted after the calls"] += 1
        try:
            assert runner.run(noop) == 1
        except BaseException as exc:
            unusable.append(repr(exc))
    after = fds()
    runner.close()
    print(
        json.dumps(
            {
                "outcomes": outcomes,
                "unusable": unusable[:5],
                "fds": [before, after],
                "handled": len(handled),
                "handler": repr(signal.getsignal(sent)),
            }
        )
    )
    """
)


def _run(script: str, *args: str, timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def _check_random_moments(case: BackendCase, scope: str, handler: str) -> dict[str, Any]:
    args = (case.name, scope, json.dumps(case.options), "3", "14", handler)
    report = _run(_AT_RANDOM_MOMENTS, *args, timeout=90)
    outcomes = report["outcomes"]
    assert set(outcomes) <= {
        "interrupted",
        "interrupted after the calls",
        "none during the calls",
    }, outcomes
    assert outcomes["interrupted"] >= 20, outcomes
    assert report["unusable"] == []
    before, after = report["fds"]
    assert after == before
    return report


@pytest.mark.parametrize("loop_backend", OWN_BACKENDS)
@pytest.mark.timeout(120)
def test_ctrl_c_at_any_moment_of_a_call(loop_backend: BackendCase, loop_scope: str) -> None:
    report = _check_random_moments(loop_backend, loop_scope, "default")
    assert report["handler"] == repr(signal.default_int_handler)


@pytest.mark.parametrize("loop_backend", OWN_BACKENDS)
@pytest.mark.loopshim_scopes("thread", "call")
@pytest.mark.timeout(120)
def test_ctrl_c_at_any_moment_with_the_programs_own_handler(
    loop_backend: BackendCase, loop_scope: str
) -> None:
    # What the program's handler raises comes out of the call, as KeyboardInterrupt
    # does; the handler runs once per signal and is in place again afterwards.
    report = _check_random_moments(loop_backend, loop_scope, "own")
    outcomes = report["outcomes"]
    assert report["handled"] == sum(outcomes.values()) - outcomes.get("none during the calls", 0)
    assert "own" in report["handler"]


def test_a_uvloop_loop_left_running_by_an_interrupt_is_replaced() -> None:
    # Another signal's handler that raises (not guarded: only SIGINT is) can still land
    # while uvloop sets up or tears down its run, which leaves the loop "already
    # running" for good: the runner notices, and the next call gets a new loop.
    pytest.importorskip("uvloop")
    args = ("uvloop", "thread", "{}", "3", "14", "other")
    report = _run(_AT_RANDOM_MOMENTS, *args, timeout=90)
    assert report["outcomes"]["interrupted"] >= 20, report
    assert report["unusable"] == [], report


#: Ctrl-C twice while a call ignores cancellation — it goes on awaiting, or it is stuck
#: in blocking code — then a call on the same runner.
_TWICE = textwrap.dedent(
    """
    import json, signal, sys, threading, time
    import anyio, loopshim

    backend, options = sys.argv[1:]
    runner = loopshim.get_runner(backend, scope="thread", cached=False, **json.loads(options))
    main = threading.get_ident()
    report = {}

    async def ignores_cancellation():
        end = time.monotonic() + 2
        while time.monotonic() < end:
            try:
                await anyio.sleep(0.01)
            except anyio.get_cancelled_exc_class():
                pass

    async def blocking():
        time.sleep(5)

    def ctrl_c_twice(call_over):
        for _ in range(2):
            time.sleep(0.2)
            if not call_over.is_set():
                signal.pthread_kill(main, signal.SIGINT)

    for fn in (ignores_cancellation, blocking):
        call_over = threading.Event()
        sender = threading.Thread(target=ctrl_c_twice, args=(call_over,))
        sender.start()
        started = time.monotonic()
        try:
            runner.run(fn)
            outcome = "returned"
        except BaseException as exc:
            outcome = type(exc).__name__
        call_over.set()
        seconds = round(time.monotonic() - started, 2)
        sender.join()
        # The next call outlasts the call left behind, which must not end it.
        report[fn.__name__] = [outcome, seconds, runner.run(anyio.sleep, 2.2)]
    runner.close()
    print(json.dumps(report))
    """
)


@pytest.mark.parametrize("loop_backend", DRIVEN_BY_LOOPSHIM)
@pytest.mark.loopshim_scopes("thread")
@pytest.mark.timeout(60)
def test_ctrl_c_twice_stops_waiting_for_a_call_that_ignores_cancellation(
    loop_backend: BackendCase,
) -> None:
    report = _run(_TWICE, loop_backend.name, json.dumps(loop_backend.options), timeout=50)
    for name in ("ignores_cancellation", "blocking"):
        outcome, seconds, after = report[name]
        assert outcome == "KeyboardInterrupt", report
        assert seconds < 1.5, report
        assert after is None, report


@pytest.mark.loopshim_scopes("process")
@pytest.mark.timeout(60)
def test_a_background_task_cancelled_before_its_first_step_ends(
    loop_runner_factory: LoopRunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The cancellation reaches the loop right after the task was made, before the task
    # took its first step: its coroutine never runs, and the job must end all the same
    # (the same happens to a call whose caller Ctrl-C interrupts at once).
    runner = loop_runner_factory()
    futures = []
    for _ in range(20):
        future = runner.spawn(anyio.sleep, 60)
        future.cancel()
        futures.append(future)
    started = time.monotonic()
    runner.close(timeout=10)
    assert time.monotonic() - started < 5
    assert all(future.cancelled() for future in futures)
    assert "ignored cancellation" not in caplog.text


def test_a_guard_left_installed_behaves_as_the_programs_handler() -> None:
    # An exception from another signal's handler can land between installing the guard
    # and activating it, or between deactivating and removing it: the guard left behind
    # must neither swallow Ctrl-C between calls nor stay in place after the next call.
    from loopshim.backends import _interrupts

    previous = signal.getsignal(signal.SIGINT)
    runner = loopshim.get_runner("asyncio", scope="thread", cached=False)
    try:
        assert _interrupts.guard() is not None
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert runner.run(anyio.sleep, 0) is None
        assert signal.getsignal(signal.SIGINT) is previous
    finally:
        signal.signal(signal.SIGINT, previous)
        runner.close()
