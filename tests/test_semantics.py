"""What every backend keeps in every scope: results, exceptions, context variables,
sys.exc_info(), timeouts, re-entrancy, threads and fork."""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import re
import select
import sys
import threading
import time
import traceback
from typing import Any

import anyio
import pytest
from conftest import BACKENDS, BackendCase

import loopshim
from loopshim.pytest_plugin import LoopRunnerFactory

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


async def add(a: int, b: int = 0, *, scale: int = 1) -> int:
    await anyio.sleep(0)
    return (a + b) * scale


def test_returns_value_and_forwards_arguments(loop_runner: loopshim.LoopRunner) -> None:
    assert loop_runner.run(add, 1, 2, scale=10) == 30
    assert loop_runner.run(add, 5) == 5


def test_wrap_keeps_metadata_and_forwards_arguments(loop_runner: loopshim.LoopRunner) -> None:
    sync_add = loop_runner.wrap(add)
    assert sync_add(2, b=3, scale=2) == 10
    assert sync_add.__name__ == "add"
    assert sync_add.__wrapped__ is add  # type: ignore[attr-defined]
    assert inspect.signature(sync_add) == inspect.signature(add)
    assert not inspect.iscoroutinefunction(sync_add)


if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12+

    def test_wrap_of_a_marked_coroutine_function_is_not_marked(
        loop_runner: loopshim.LoopRunner,
    ) -> None:
        def returns_coroutine() -> Any:
            return add(1, 1)

        marked = inspect.markcoroutinefunction(returns_coroutine)
        wrapped = loop_runner.wrap(marked)
        assert wrapped() == 2
        assert not inspect.iscoroutinefunction(wrapped)


class Boom(Exception):
    pass


async def raise_it(exc: BaseException) -> None:
    await anyio.sleep(0)
    raise exc


def _frames(tb: Any) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(tb)]


@pytest.mark.parametrize("exc_type", [Boom, KeyboardInterrupt, SystemExit, GeneratorExit])
def test_exceptions_propagate_unchanged(loop_runner: loopshim.LoopRunner, exc_type: type) -> None:
    original = exc_type("from the coroutine")
    with pytest.raises(exc_type) as info:
        loop_runner.run(raise_it, original)
    assert info.value is original
    assert "raise_it" in _frames(info.value.__traceback__)
    # The runner is still usable afterwards.
    assert loop_runner.run(add, 20, 22) == 42


def test_context_flows_in_and_back_out(loop_runner: loopshim.LoopRunner) -> None:
    async def read_then_set() -> str:
        seen = request_id.get()
        await anyio.sleep(0)
        request_id.set("set-inside")
        return seen

    token = request_id.set("caller")
    try:
        assert loop_runner.run(read_then_set) == "caller"
        assert request_id.get() == "set-inside"
    finally:
        request_id.reset(token)


def test_context_never_leaks_between_calls(loop_runner: loopshim.LoopRunner) -> None:
    """Two "requests" in two threads on one runner: each sees only its own value,
    including while both are in flight at the same time."""
    barrier = threading.Barrier(2, timeout=10)
    seen: dict[str, list[str]] = {"a": [], "b": []}

    async def handle(name: str) -> None:
        seen[name].append(request_id.get())
        request_id.set(f"{name}-inside")
        await anyio.sleep(0.01)
        seen[name].append(request_id.get())

    def request(name: str) -> None:
        contextvars.copy_context().run(_request_body, name)

    def _request_body(name: str) -> None:
        barrier.wait()
        loop_runner.run(handle, name)
        seen[name].append(request_id.get())
        loop_runner.run(handle, name)

    threads = [threading.Thread(target=request, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen["a"] == ["none", "a-inside", "a-inside", "a-inside", "a-inside"]
    assert seen["b"] == ["none", "b-inside", "b-inside", "b-inside", "b-inside"]
    assert request_id.get() == "none"


def test_exc_info_inside_coroutine_is_the_callers_exception(
    loop_runner: loopshim.LoopRunner,
) -> None:
    async def report() -> Any:
        await anyio.sleep(0)
        return sys.exc_info()[1]

    handled = Boom("being handled")
    try:
        raise handled
    except Boom:
        tb_before = handled.__traceback__
        assert loop_runner.run(report) is handled
        assert handled.__traceback__ is tb_before
    assert loop_runner.run(report) is None


def test_exception_raised_in_handler_chains_to_handled_one(
    loop_runner: loopshim.LoopRunner,
) -> None:
    async def fail() -> None:
        raise ValueError("in the error handler")

    handled = Boom("original")
    try:
        raise handled
    except Boom:
        with pytest.raises(ValueError, match="in the error handler") as info:
            loop_runner.run(fail)
    assert info.value.__context__ is handled


def test_timeout_cancels_with_backend_cancellation(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    cancelled = []

    async def too_slow() -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise

    with loop_runner_factory(timeout=0.2) as runner:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"too_slow did not finish within 0\.2 s"):
            runner.run(too_slow)
        assert time.monotonic() - started < 10
        assert cancelled == [True]
        assert runner.run(add, 1, 1) == 2


def test_a_coroutine_may_catch_its_own_timeout_and_return(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    async def stubborn() -> str:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            return "cleaned up"
        return "slept"

    with loop_runner_factory(timeout=0.1) as runner:
        assert runner.run(stubborn) == "cleaned up"


@pytest.mark.timeout(20)
def test_reentrant_blocking_call_raises_instead_of_deadlocking(
    loop_runner: loopshim.LoopRunner,
) -> None:
    def sync_helper() -> int:
        return loop_runner.run(add, 1, 1)

    async def calls_back_into_sync_code() -> int:
        await anyio.sleep(0)
        return sync_helper()

    with pytest.raises(loopshim.ReentrantCallError, match="reentrant=True"):
        loop_runner.run(calls_back_into_sync_code)
    assert loop_runner.run(add, 2, 2) == 4


@pytest.mark.timeout(60)
def test_many_threads_share_one_runner(loop_runner: loopshim.LoopRunner) -> None:
    calls_per_thread = 200

    async def echo(thread: int, i: int) -> tuple[int, int]:
        await anyio.sleep(0)
        return thread, i

    errors: list[BaseException] = []
    wrong: list[Any] = []

    def worker(thread: int) -> None:
        try:
            for i in range(calls_per_thread):
                result = loop_runner.run(echo, thread, i)
                if result != (thread, i):
                    wrong.append(result)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not any(t.is_alive() for t in threads), "a caller thread is stuck"
    assert errors == []
    assert wrong == []


def _wait_child(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child hung")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_runner_used_before_fork_works_in_child(loop_runner: loopshim.LoopRunner) -> None:
    async def whoami() -> tuple[int, int]:
        await anyio.sleep(0)
        return os.getpid(), threading.get_ident()

    parent = os.getpid()
    before = loop_runner.run(whoami)
    assert before[0] == parent
    children = {}
    for _ in range(3):  # every child, not just the first
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report and leave without returning into pytest
            code = 1
            try:
                answer = loop_runner.run(whoami)[0]
                os.write(write_end, str(answer).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        children[pid] = read_end
    for pid, read_end in children.items():
        assert _wait_child(pid, 30) == 0
        ready, _, _ = select.select([read_end], [], [], 5)
        assert ready
        assert int(os.read(read_end, 64)) == pid
        os.close(read_end)
    # The parent's loop was not touched: same process, same loop thread.
    assert loop_runner.run(whoami) == before


def test_functools_partial_and_async_callable_objects_are_accepted(
    loop_runner: loopshim.LoopRunner,
) -> None:
    class Handler:
        async def __call__(self, x: int) -> int:
            return x + 1

    assert loop_runner.run(functools.partial(add, 1), 2) == 3
    assert loop_runner.run(Handler(), 41) == 42


@pytest.mark.loopshim_scopes("process")
@pytest.mark.timeout(30)
def test_ctrl_c_while_waiting_never_hangs(loop_runner: loopshim.LoopRunner) -> None:
    """SIGINT reaches the main thread while it waits for the loop thread: whether the
    call has just finished or not, KeyboardInterrupt comes out and nothing hangs."""
    import signal

    main = threading.get_ident()

    async def interrupts_the_caller() -> str:
        signal.pthread_kill(main, signal.SIGINT)
        await anyio.sleep(0.01)
        return "done"

    def call_then_linger() -> None:
        loop_runner.run(interrupts_the_caller)
        time.sleep(5)  # the signal may land just after the call returned

    for _ in range(5):
        with pytest.raises(KeyboardInterrupt):
            call_then_linger()
    assert loop_runner.run(add, 1, 2) == 3


@pytest.mark.loopshim_scopes("thread")
@pytest.mark.parametrize(
    "loop_backend",
    [
        pytest.param(("trio", {"driver": driver}), id=f"trio-{driver}")
        for driver in ("internal", "public")
    ],
)
def test_trio_system_tasks_do_not_inherit_the_first_callers_context(
    loop_runner: loopshim.LoopRunner,
) -> None:
    import trio

    async def probe() -> list[str]:
        seen: list[str] = []

        async def system_task() -> None:
            seen.append(request_id.get())

        trio.lowlevel.spawn_system_task(system_task)
        await trio.sleep(0.01)
        return seen

    with loop_runner as runner:
        for name in ("request-1", "request-2"):
            token = request_id.set(name)
            try:
                # Never an earlier call's value (the bug: the first caller's, forever).
                assert runner.run(probe) in (["none"], [name])
            finally:
                request_id.reset(token)


# -- what a call sees of its loop, whether or not it ever waits ------------------------


async def runs_then_waits(events: list[str]) -> str:
    request_id.set("before-waiting")
    events.append("ran without waiting")
    await anyio.sleep(0.01)
    events.append("woke once")
    await anyio.sleep(0)
    return request_id.get()


def test_a_call_may_run_without_waiting_then_wait(loop_runner: loopshim.LoopRunner) -> None:
    events: list[str] = []
    started = time.monotonic()
    assert loop_runner.run(runs_then_waits, events) == "before-waiting"
    assert time.monotonic() - started >= 0.01
    assert events == ["ran without waiting", "woke once"]
    assert request_id.get() == "before-waiting"  # copied back
    request_id.set("none")


def test_inside_a_call_the_loop_is_running(
    loop_backend: BackendCase, loop_runner: loopshim.LoopRunner
) -> None:
    import sniffio

    def firstiter(agen: Any) -> None:
        pass

    def finalizer(agen: Any) -> None:
        pass

    async def look_around() -> dict[str, Any]:
        seen = {
            "library": sniffio.current_async_library(),
            "task": anyio.get_current_task().name,
            "hooks": sys.get_asyncgen_hooks(),
        }
        if seen["library"] == "asyncio":
            import asyncio

            seen["running"] = asyncio.get_running_loop().is_running()
            seen["current task"] = asyncio.current_task() is not None
        return seen

    outer = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter, finalizer)
    try:
        for _ in range(2):  # the first call opens the loop, the second reuses it
            seen = loop_runner.run(look_around)
            assert seen["library"] == ("trio" if loop_backend.name == "trio" else "asyncio")
            assert seen["task"]
            assert seen["hooks"].firstiter is not firstiter  # the loop's own hooks
            assert sys.get_asyncgen_hooks() == (firstiter, finalizer)  # restored
            if loop_backend.name != "trio":
                assert seen["running"]
                assert seen["current task"]
    finally:
        sys.set_asyncgen_hooks(*outer)


@pytest.mark.parametrize("how", ["set to the same value", "set then reset", "left alone"])
def test_copy_back_leaves_untouched_variables_alone(
    loop_runner: loopshim.LoopRunner, how: str
) -> None:
    other: contextvars.ContextVar[str] = contextvars.ContextVar("other")

    async def touch() -> None:
        value = request_id.get()
        if how == "set to the same value":
            request_id.set(value)
        elif how == "set then reset":
            request_id.reset(request_id.set("changed"))
        other.set("set inside")  # always copied back

    token = request_id.set("caller")
    try:
        loop_runner.run(touch)
        assert request_id.get() == "caller"
        assert other.get() == "set inside"
    finally:
        request_id.reset(token)


def test_calls_from_a_worker_thread_keep_every_guarantee(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    """A server's worker thread, where no signal can interrupt a call: results,
    exceptions, context variables, sys.exc_info() and timeouts all still hold."""

    async def slow() -> None:
        await anyio.sleep(30)

    async def report() -> Any:
        request_id.set("from the worker's call")
        return sys.exc_info()[1]

    outcome: dict[str, Any] = {}

    def worker() -> None:
        with loop_runner_factory() as runner, loop_runner_factory(timeout=0.1) as timed:
            outcome["sum"] = runner.run(add, 2, 3)
            original = Boom("in a worker")
            try:
                runner.run(raise_it, original)
            except Boom as exc:
                outcome["same error"] = exc is original
            handled = Boom("handled")
            try:
                raise handled
            except Boom:
                outcome["exc_info"] = runner.run(report) is handled
            outcome["copied back"] = request_id.get()
            started = time.monotonic()
            try:
                timed.run(slow)
            except TimeoutError:
                outcome["timed out"] = time.monotonic() - started < 10
            outcome["usable"] = runner.run(add, 1)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    assert outcome == {
        "sum": 5,
        "same error": True,
        "exc_info": True,
        "copied back": "from the worker's call",
        "timed out": True,
        "usable": 1,
    }


@pytest.mark.loopshim_scopes("thread", "call")
@pytest.mark.timeout(30)
def test_ctrl_c_while_a_call_waits_cancels_it(loop_runner_factory: LoopRunnerFactory) -> None:
    """SIGINT reaches the main thread while it drives its loop: the coroutine is
    cancelled and unwinds, KeyboardInterrupt comes out, and the runner stays usable."""
    import signal

    unwound: list[str] = []

    async def sleeps() -> None:
        try:
            await anyio.sleep(10)
        finally:
            unwound.append("unwound")

    with loop_runner_factory() as runner:
        for _ in range(2):
            timer = threading.Timer(
                0.2, signal.pthread_kill, (threading.get_ident(), signal.SIGINT)
            )
            timer.start()
            started = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                runner.run(sleeps)
            timer.join()
            assert time.monotonic() - started < 5
        assert unwound == ["unwound", "unwound"]
        assert runner.run(add, 1, 2) == 3


def test_a_blocking_call_from_a_trio_callback(loop_runner: loopshim.LoopRunner) -> None:
    """Sync code trio runs outside any task (a run_sync_soon callback) is on the trio
    thread, as code in a task is: a process-scope runner blocks it until the call is
    done; the other scopes, which would run a second loop there, refuse."""
    trio = pytest.importorskip("trio")
    outcomes: list[object] = []

    def callback() -> None:
        try:
            outcomes.append(loop_runner.run(add, 1, 1))
        except BaseException as exc:
            outcomes.append(exc)

    async def main() -> None:
        trio.lowlevel.current_trio_token().run_sync_soon(callback)
        await trio.sleep(0.05)

    trio.run(main)
    assert len(outcomes) == 1
    if loop_runner.scope == "process":
        assert outcomes == [2]
    else:
        assert isinstance(outcomes[0], loopshim.ReentrantCallError)
        assert "running a trio event loop" in str(outcomes[0])


# -- asyncio loops driven in the caller's thread -------------------------------------


@pytest.mark.loopshim_scopes("thread", "call")
@pytest.mark.parametrize("loop_backend", ["asyncio", "uvloop"])
def test_callbacks_a_calls_last_step_schedules_run_before_it_returns(
    loop_runner: loopshim.LoopRunner,
) -> None:
    import asyncio

    events: list[str] = []
    tasks: list[asyncio.Future[None]] = []

    async def child() -> None:
        events.append("child started")

    async def schedules_and_returns(wait_first: bool) -> None:
        if wait_first:
            await asyncio.sleep(0)
        asyncio.get_running_loop().call_soon(events.append, "callback")
        tasks.append(asyncio.ensure_future(child()))

    with loop_runner as runner:
        for wait_first in (False, True):
            events.clear()
            runner.run(schedules_and_returns, wait_first)
            assert events == ["callback", "child started"]


@pytest.mark.loopshim_scopes("thread", "call")
@pytest.mark.parametrize("loop_backend", ["asyncio"])
def test_stopping_the_loop_inside_a_call(loop_runner: loopshim.LoopRunner) -> None:
    """As with run_until_complete: a call that stops the loop and then waits fails, one
    that returns at once is fine, and the loop stays usable."""
    import asyncio

    async def stops_then_waits() -> None:
        asyncio.get_running_loop().stop()
        await asyncio.sleep(0)

    async def stops_then_returns() -> str:
        asyncio.get_running_loop().stop()
        return "returned"

    with loop_runner as runner:
        with pytest.raises(RuntimeError, match="stopped before"):
            runner.run(stops_then_waits)
        assert runner.run(stops_then_returns) == "returned"
        assert runner.run(add, 1, 2) == 3


@pytest.mark.loopshim_scopes("thread", "process")
@pytest.mark.parametrize("loop_backend", ["asyncio", "uvloop"])
def test_a_task_factory_set_on_the_loop_makes_later_calls_tasks(
    loop_runner: loopshim.LoopRunner,
) -> None:
    import asyncio

    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def install() -> None:
        asyncio.get_running_loop().set_task_factory(factory)

    with loop_runner as runner:
        runner.run(install)
        assert runner.run(add, 2, 2) == 4
    assert made[0].startswith("_execute")  # the next call's task (loopshim's wrapper)


@pytest.mark.loopshim_scopes("thread", "call")
@pytest.mark.parametrize("loop_backend", ["asyncio"])
def test_a_loop_class_with_its_own_run_forever_is_run_through_it(
    loop_runner_factory: LoopRunnerFactory,
) -> None:
    import asyncio

    runs: list[str] = []

    class Instrumented(asyncio.SelectorEventLoop):
        def run_forever(self) -> None:
            runs.append("run_forever")
            super().run_forever()

    with loop_runner_factory(loop_factory=Instrumented) as runner:
        assert runner.run(add, 1, 1) == 2
        assert runner.run(add, 2, 2) == 4
    assert runs[:2] == ["run_forever", "run_forever"]


@pytest.mark.parametrize("loop_backend", [case for case in BACKENDS if case.id != "third-party"])
def test_debug_mode_reports_slow_steps_by_the_users_coroutine(
    loop_runner_factory: LoopRunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # asyncio's debug mode reports a slow task step by the task; trio has no such
    # report, and loopshim's debug mode logs one. Either names the coroutine the call
    # ran, not loopshim's task around it. (The suite's third-party backend has no
    # debug mode.)
    async def blocks_the_loop() -> None:
        time.sleep(0.15)

    runner = loop_runner_factory(debug=True)
    with runner, caplog.at_level("WARNING"):
        runner.run(blocks_the_loop)
    slow = [r.getMessage() for r in caplog.records if re.search("took|blocked", r.getMessage())]
    assert slow, caplog.text
    assert all("blocks_the_loop" in message for message in slow), slow


class NoBoolEquality:
    """Like a numpy array: ``==`` gives something that cannot be a bool."""

    def __eq__(self, other: object) -> Any:
        return self

    def __bool__(self) -> bool:
        raise ValueError("the truth value of this object is ambiguous")

    __hash__ = object.__hash__


class AlwaysEqual:
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


payload: contextvars.ContextVar[object] = contextvars.ContextVar("payload")


@pytest.mark.parametrize("kind", [NoBoolEquality, AlwaysEqual])
def test_copy_back_compares_values_by_identity(
    loop_runner: loopshim.LoopRunner, kind: type
) -> None:
    before, after = kind(), kind()

    async def replace() -> str:
        payload.set(after)
        return "ok"

    def call() -> tuple[str, object]:
        payload.set(before)
        return loop_runner.run(replace), payload.get()

    assert contextvars.copy_context().run(call) == ("ok", after)


@pytest.mark.parametrize("loop_backend", ["trio"])
def test_an_asyncio_only_library_on_trio_gets_a_note_naming_the_fix(
    loop_runner: loopshim.LoopRunner,
) -> None:
    import asyncio

    async def asyncio_only_client() -> None:
        asyncio.get_running_loop()  # what redis.asyncio, asyncpg and psycopg_pool do

    with pytest.raises(RuntimeError, match="no running event loop") as caught:
        loop_runner.run(asyncio_only_client)
    loop_runner.close()
    notes = getattr(caught.value, "__notes__", [])
    assert len(notes) == 1
    assert "trio backend" in notes[0]
    assert '"asyncio"' in notes[0]
    assert "anyio" in notes[0]
    assert "loopshim" in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize("loop_backend", ["trio"])
def test_other_errors_on_trio_get_no_note(loop_runner: loopshim.LoopRunner) -> None:
    async def fails() -> None:
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else") as caught:
        loop_runner.run(fails)
    loop_runner.close()
    assert not getattr(caught.value, "__notes__", None)


class BrokenRepr:
    """An async callable whose repr fails (and which, as an instance, has no
    ``__qualname__`` of its own to fall back on)."""

    async def __call__(self) -> None:
        await anyio.sleep(30)

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


def test_a_timeout_is_raised_whatever_the_callables_repr_does(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    runner = loop_runner_factory(timeout=0.2)
    with pytest.raises(TimeoutError, match="BrokenRepr object"):
        runner.run(BrokenRepr())
    runner.close()
