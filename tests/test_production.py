"""Faults, signals, stress and soak: what production throws at a runner."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import BackendCase

import loopshim
from loopshim.pytest_plugin import LoopRunnerFactory

ROOT = Path(__file__).resolve().parent.parent


def slow_coroutine_that_blocks(seconds: float) -> Any:
    async def blocking_view() -> str:
        time.sleep(seconds)  # the mistake being caught
        return "finished"

    return blocking_view


@pytest.mark.loopshim_scopes("process")
def test_blocked_loop_is_reported_by_name_and_recovers(
    loop_runner_factory: LoopRunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    runner = loop_runner_factory(block_warning=0.1)
    others: list[Any] = []
    blocker = slow_coroutine_that_blocks(0.6)

    def another_caller() -> None:
        time.sleep(0.05)
        others.append(runner.run(anyio.sleep, 0))

    with caplog.at_level(logging.WARNING, logger="loopshim"):
        thread = threading.Thread(target=another_caller)
        thread.start()
        assert runner.run(blocker) == "finished"
        thread.join(10)
        assert runner.run(anyio.sleep, 0) is None
        deadline = time.monotonic() + 10
        while "responsive again" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    runner.close()
    assert others == [None]  # the other call recovered once the blocker returned
    report = caplog.text
    assert "loop has been blocked for more than 0.1 s by " in report
    assert "slow_coroutine_that_blocks.<locals>.blocking_view" in report
    assert "test_production.py" in report
    assert "time.sleep(seconds)  # the mistake being caught" in report
    assert "responsive again" in report


@pytest.mark.loopshim_scopes("process")
def test_block_warning_can_be_switched_off(
    loop_runner_factory: LoopRunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    runner = loop_runner_factory(block_warning=None)
    with caplog.at_level(logging.WARNING, logger="loopshim"):
        runner.run(slow_coroutine_that_blocks(0.7))  # longer than the 0.5 s default
        runner.close()
    assert "blocked" not in caplog.text
    assert not [t for t in threading.enumerate() if t.name.endswith("-watchdog")]


@pytest.mark.parametrize(
    ("scope", "value", "message"),
    [
        ("thread", 1.0, "'block_warning' applies to process scope only"),
        ("call", None, "'block_warning' applies to process scope only"),
        ("process", 0, "'block_warning' must be a number of seconds greater than 0"),
        ("process", float("inf"), "must be a number of seconds"),
        ("process", "1s", "got '1s' (str)"),
    ],
)
def test_block_warning_is_validated(scope: str, value: object, message: str) -> None:
    with pytest.raises(loopshim.OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        loopshim.get_runner("asyncio", scope=scope, cached=False, block_warning=value)


@pytest.mark.loopshim_scopes("process", "thread")
def test_sigint_during_a_call_cancels_it_and_the_runner_stays_usable(
    loop_runner_factory: LoopRunnerFactory, loop_scope: str
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("signals reach the main thread only; run this test there")
    runner = loop_runner_factory()
    outcome: list[str] = []

    async def long_call() -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        outcome.append("finished")

    # Process-directed, like Ctrl-C in a terminal (Linux hands it to the main thread).
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        runner.run(long_call)
    timer.join()
    assert time.monotonic() - started < 10
    if loop_scope == "process":
        # The loop thread received a cancellation for the coroutine.
        assert outcome == ["cancelled"]
    assert runner.run(anyio.sleep, 0) is None
    runner.close()


def test_32_threads_x_2000_calls(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    threads, calls = 32, 2000
    if loop_scope == "call" or loop_backend.options.get("driver") == "public":
        calls = 200  # a fresh loop per call: the same interleaving, a tenth of the calls
    runner = loop_runner_factory()
    wrong: list[Any] = []
    errors: list[BaseException] = []

    async def echo(thread: int, i: int) -> tuple[int, int]:
        await anyio.sleep(0)
        return thread, i

    def worker(n: int) -> None:
        try:
            for i in range(calls):
                if (got := runner.run(echo, n, i)) != (n, i):
                    wrong.append(got)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(100)
    stuck = [t for t in pool if t.is_alive()]
    runner.close()
    assert not stuck, f"{len(stuck)} caller threads never finished: deadlock"
    assert errors == []
    assert wrong == []


def test_soak_short_variant(loop_scope: str) -> None:
    """benchmarks/soak.py with 20,000 calls per backend (the benchmark makes 100,000)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "soak.py"),
            "--calls",
            "20000",
            "--scopes",
            loop_scope,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["backend"] for r in results] == loopshim.available_backends(), proc.stderr
    for result in results:
        assert result["wrong_results"] == 0, result
        assert result["rss_growth_bytes"] < 5 * 1024 * 1024, result
        assert result["threads_left"] <= 0, result
        assert result["fds_left"] <= 0, result
    assert proc.returncode == 0, proc.stderr
