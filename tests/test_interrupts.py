"""Interrupts and cancellations that land at awkward moments of a call."""

from __future__ import annotations

import time

import anyio
import pytest
from conftest import BackendCase, make_runner, only_scopes


@only_scopes("process")
@pytest.mark.timeout(60)
def test_a_background_task_cancelled_before_its_first_step_ends(
    case: BackendCase, scope: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The cancellation reaches the loop right after the task was made, before the task
    # took its first step: its coroutine never runs, and the job must end all the same
    # (the same happens to a call whose caller Ctrl-C interrupts at once).
    if case.name == "third_party":
        pytest.skip("the plain third-party backend cancels with job.cancel() alone")
    runner = make_runner(case, scope)
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
