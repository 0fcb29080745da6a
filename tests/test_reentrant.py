"""Calls from async code: re-entrant calls on a runner's own loop (the greenlet bridge),
calls from a thread running another loop (a notebook, an async app), and awaiting a
runner from any loop (run_async)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import sys
import threading
from typing import Any

import anyio
import pytest
from conftest import BACKENDS, BackendCase

import loopshim
from loopshim.pytest_plugin import LoopRunnerFactory

pytest.importorskip("greenlet")

level: contextvars.ContextVar[str] = contextvars.ContextVar("level", default="none")


class Boom(Exception):
    pass


@pytest.mark.timeout(30)
def test_a_chain_three_deep_sees_and_sets_context_and_exc_info(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    runner = loop_runner_factory(reentrant=True)

    async def innermost() -> tuple[str, BaseException | None]:
        await anyio.sleep(0)
        seen = level.get()
        level.set("innermost")
        return seen, sys.exc_info()[1]

    def sync_two() -> tuple[str, BaseException | None]:
        try:
            raise Boom("handled by sync_two")
        except Boom:
            return runner.run(innermost)

    async def middle() -> tuple[str, BaseException | None]:
        await anyio.sleep(0)
        level.set("middle")
        return sync_two()

    def sync_one() -> Any:
        return runner.run(middle)

    async def outer() -> tuple[Any, str]:
        level.set("outer")
        await anyio.sleep(0)
        result = sync_one()
        return result, level.get()

    (seen, handled), after = runner.run(outer)
    assert seen == "middle"  # the inner call sees the outer call's context
    assert isinstance(handled, Boom)  # and the exception its caller was handling
    assert after == "innermost"  # and what it sets comes back
    assert level.get() == "innermost"  # all the way to the first caller
    runner.close()


@pytest.mark.timeout(60)
def test_a_hundred_reentering_calls_from_sixteen_threads(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    runner = loop_runner_factory(reentrant=True)

    async def inner(n: int) -> int:
        await anyio.sleep(0.001)
        return n * 2

    def helper(n: int) -> int:
        return runner.run(inner, n) + 1

    async def outer(n: int) -> int:
        await anyio.sleep(0)
        return helper(n)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda n: runner.run(outer, n), range(100)))
    assert results == [n * 2 + 1 for n in range(100)]
    runner.close()


@pytest.mark.timeout(30)
def test_an_inner_call_that_raises(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    runner = loop_runner_factory(reentrant=True)
    raised = Boom("inner")

    async def fails() -> None:
        await anyio.sleep(0)
        raise raised

    def helper() -> BaseException | None:
        try:
            runner.run(fails)
        except Boom as exc:
            return exc
        return None

    async def outer() -> BaseException | None:
        await anyio.sleep(0)
        return helper()

    assert runner.run(outer) is raised  # the same object, through the sync frames
    runner.close()


@pytest.mark.loopshim_scopes("process")
@pytest.mark.timeout(30)
def test_an_inner_call_that_times_out(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    # A background task has no timeout of its own: its inner call's is the one to fire.
    runner = loop_runner_factory(reentrant=True, timeout=0.3)
    cleaned: list[str] = []

    async def hangs() -> None:
        try:
            await anyio.sleep(30)
        finally:
            cleaned.append("inner")

    def helper() -> str:
        try:
            runner.run(hangs)
        except TimeoutError:
            return "timed out"
        return "no error"

    async def outer() -> str:
        await anyio.sleep(0)
        return helper()

    assert runner.spawn(outer).result(10) == "timed out"
    assert cleaned == ["inner"]
    runner.close()


@pytest.mark.timeout(30)
def test_the_outer_calls_timeout_cancels_the_inner_coroutine(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    runner = loop_runner_factory(reentrant=True, timeout=0.5)
    seen: list[str] = []

    async def inner() -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            seen.append("inner cancelled")
            raise

    def helper() -> None:
        runner.run(inner)

    async def outer() -> None:
        await anyio.sleep(0.3)  # the inner call's own deadline comes after the outer's
        helper()

    with pytest.raises(TimeoutError):
        runner.run(outer)
    assert seen == ["inner cancelled"]
    assert runner.run(anyio.sleep, 0) is None
    runner.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_an_inner_base_exception_reaches_the_first_caller(
    loop_runner_factory: LoopRunnerFactory,
    loop_backend: BackendCase,
    loop_scope: str,
    error: type[BaseException],
) -> None:
    runner = loop_runner_factory(reentrant=True)
    raised = error("from the inner call")

    async def inner() -> None:
        await anyio.sleep(0)
        raise raised

    async def outer() -> None:
        await anyio.sleep(0)
        runner.run(inner)

    with pytest.raises(error) as caught:
        runner.run(outer)
    assert caught.value is raised
    assert runner.run(anyio.sleep, 0) is None
    runner.close()


@pytest.mark.loopshim_scopes("process")
@pytest.mark.timeout(30)
def test_cancelling_the_outer_task_cancels_the_inner_coroutine(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    runner = loop_runner_factory(reentrant=True)
    waiting = threading.Event()
    seen: list[str] = []

    async def inner() -> None:
        waiting.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            seen.append("inner cancelled")
            raise

    async def outer() -> None:
        await anyio.sleep(0)
        runner.run(inner)

    future = runner.spawn(outer)
    assert waiting.wait(10)
    future.cancel()
    concurrent.futures.wait([future], timeout=10)
    runner.close()
    assert seen == ["inner cancelled"]


@pytest.mark.loopshim_scopes("process")
@pytest.mark.timeout(30)
def test_the_loop_serves_other_calls_while_a_reentrant_call_waits(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    # The inner call waits for an event only another call can set: were the loop held
    # by the waiting sync code, this would never finish.
    runner = loop_runner_factory(reentrant=True)
    started = threading.Event()
    box: dict[str, Any] = {}

    async def make_event() -> None:
        box["event"] = anyio.Event()

    async def inner() -> str:
        started.set()
        await box["event"].wait()
        return "released"

    def helper() -> str:
        return runner.run(inner)

    async def outer() -> str:
        await anyio.sleep(0)
        return helper()

    async def release() -> str:
        box["event"].set()
        return "set"

    runner.run(make_event)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(runner.run, outer)
        assert started.wait(10)
        assert runner.run(release) == "set"  # a second request, served meanwhile
        assert pending.result(10) == "released"
    runner.close()


@pytest.mark.timeout(20)
def test_without_the_option_a_reentrant_call_names_it(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    runner = loop_runner_factory()

    async def inner() -> None:
        pass

    async def outer() -> None:
        await anyio.sleep(0)
        runner.run(inner)

    with pytest.raises(loopshim.ReentrantCallError, match=r"reentrant=True"):
        runner.run(outer)
    runner.close()


# -- a running loop in the caller's thread ------------------------------------------------


async def double(n: int) -> int:
    await anyio.sleep(0)
    return n * 2


def _asyncio_app(call: Any) -> Any:
    # What a notebook does: its loop runs, and a cell's code is called synchronously
    # from a callback of it.
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(lambda: done.set_result(call()))
        return await done

    return asyncio.run(main())


def _trio_app(call: Any) -> Any:
    import trio

    async def main() -> Any:
        return call()

    return trio.run(main)


HOSTS = {"asyncio": _asyncio_app, "trio": _trio_app}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.loopshim_scopes("process")
def test_process_scope_runs_from_a_thread_running_another_loop(
    loop_runner_factory: LoopRunnerFactory, host: str
) -> None:
    if host == "trio":
        pytest.importorskip("trio")
    runner = loop_runner_factory()
    assert HOSTS[host](lambda: runner.run(double, 21)) == 42
    assert HOSTS[host](lambda: runner.wrap(double)(4)) == 8
    runner.close()


@pytest.mark.loopshim_scopes("thread", "call")
@pytest.mark.timeout(30)
@pytest.mark.parametrize("host", sorted(HOSTS))
def test_other_scopes_refuse_a_thread_running_another_loop(
    loop_runner_factory: LoopRunnerFactory, host: str
) -> None:
    if host == "trio":
        pytest.importorskip("trio")
    runner = loop_runner_factory()

    def call() -> Any:
        with pytest.raises(loopshim.ReentrantCallError) as caught:
            runner.run(double, 1)
        return str(caught.value)

    message = HOSTS[host](call)
    assert f"running {'an' if host == 'asyncio' else 'a'} {host} event loop" in message
    assert 'scope="process"' in message
    assert "run_async" in message
    assert "to_thread" not in message  # advice that can deadlock (issue: executor threads)
    runner.close()


# -- awaiting a runner from any loop ------------------------------------------------------


def _run_on(host: str, main: Any) -> Any:
    if host == "asyncio":
        return asyncio.run(main())
    import trio

    return trio.run(main)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("host", ["asyncio", "trio"])
@pytest.mark.loopshim_scopes("process")
def test_run_async_from_another_loop(loop_runner_factory: LoopRunnerFactory, host: str) -> None:
    if host == "trio":
        pytest.importorskip("trio")
    runner = loop_runner_factory()

    async def work(n: int, *, scale: int) -> tuple[int, str]:
        await anyio.sleep(0.01)
        seen = level.get()
        level.set("set on the runner")
        return n * scale, seen

    async def fails() -> None:
        raise Boom("on the runner")

    raised: list[BaseException] = []

    async def main() -> Any:
        level.set("caller")
        result = await runner.run_async(work, 2, scale=5)
        try:
            await runner.run_async(fails)
        except Boom as exc:
            raised.append(exc)
        return result, level.get()

    assert _run_on(host, main) == ((10, "caller"), "set on the runner")
    assert str(raised[0]) == "on the runner"
    runner.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("host", ["asyncio", "trio"])
@pytest.mark.loopshim_scopes("process")
def test_cancelling_run_async_cancels_the_call_with_the_runners_cancellation(
    loop_runner_factory: LoopRunnerFactory, host: str
) -> None:
    if host == "trio":
        pytest.importorskip("trio")
    runner = loop_runner_factory()
    seen: list[str] = []

    async def slow() -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled on the runner")
            raise

    async def main() -> str:
        with anyio.move_on_after(0.2):
            await runner.run_async(slow)
        return "caller went on"

    assert _run_on(host, main) == "caller went on"
    assert seen == ["cancelled on the runner"]
    assert runner.run(double, 2) == 4
    runner.close()


@pytest.mark.timeout(30)
def test_run_async_on_the_runners_own_loop_awaits_in_place(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    runner = loop_runner_factory()

    async def inner() -> Any:
        return threading.current_thread()

    async def outer() -> bool:
        return await runner.run_async(inner) is threading.current_thread()

    assert runner.run(outer) is True
    runner.close()


@pytest.mark.loopshim_scopes("thread", "call")
def test_run_async_from_another_loop_needs_process_scope(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    runner = loop_runner_factory()

    async def main() -> None:
        await runner.run_async(double, 1)

    with pytest.raises(loopshim.ScopeError, match='scope="process"'):
        asyncio.run(main())
    runner.close()


def test_run_async_outside_a_loop_is_a_usage_error() -> None:
    runner = loopshim.get_runner("asyncio", cached=False)
    coro = runner.run_async(double, 1)
    with pytest.raises(loopshim.UsageError, match="inside a running event loop"):
        coro.send(None)
    runner.close()


# -- Flask: what the bridge makes work in async views -------------------------------------

flask = pytest.importorskip("flask")


def reentrant_app(loop_backend: BackendCase, loop_scope: str) -> Any:
    """An app whose async views run sync Flask code that calls async code again."""
    from blinker import Namespace
    from flask import Flask, current_app, g, render_template_string

    from loopshim.flask import LoopShim

    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        LOOPSHIM_BACKEND=loop_backend.name,
        LOOPSHIM_SCOPE=loop_scope,
        LOOPSHIM_OPTIONS=dict(loop_backend.options),
    )
    LoopShim(app)
    signals = Namespace()
    order_placed = signals.signal("order-placed")

    @app.context_processor
    async def inject() -> dict[str, str]:
        await anyio.sleep(0)
        return {"who": f"processor for {g.rid}"}

    async def audit(sender: Any, rid: str) -> None:
        await anyio.sleep(0)
        g.audited = rid

    order_placed.connect(audit, app, weak=False)

    def needs_quota(rid: str) -> bool:
        # What an extension decorator does inside a view: ensure_sync on an async check.
        async def check() -> bool:
            await anyio.sleep(0)
            return rid != "denied"

        return bool(current_app.ensure_sync(check)())

    @app.route("/order/<rid>")
    async def order(rid: str) -> str:
        g.rid = rid
        await anyio.sleep(0.001)
        if not needs_quota(rid):
            return "denied"
        order_placed.send(app, _async_wrapper=app.ensure_sync, rid=rid)
        page = render_template_string("{{ who }}")
        return f"{page}; audited {g.audited}"

    return app


@pytest.mark.timeout(60)
def test_flask_async_views_reenter_through_the_test_client(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    client = reentrant_app(loop_backend, loop_scope).test_client()
    for rid in ("a1", "b2", "c3"):
        assert client.get(f"/order/{rid}").text == f"processor for {rid}; audited {rid}"
    assert client.get("/order/denied").text == "denied"


@pytest.mark.timeout(120)
def test_flask_async_views_reenter_under_a_real_server(
    loop_runner_factory: LoopRunnerFactory, loop_backend: BackendCase, loop_scope: str
) -> None:
    from servers import serve

    app = reentrant_app(loop_backend, loop_scope)
    with serve(app) as base:
        import httpx

        def fetch(rid: str) -> str:
            return httpx.get(f"{base}/order/{rid}", timeout=30).text

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            pages = list(pool.map(fetch, [f"r{n}" for n in range(40)]))
    assert pages == [f"processor for r{n}; audited r{n}" for n in range(40)]


# -- a trio program with asyncio-only clients ---------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["asyncio", "uvloop"])
def test_a_trio_program_uses_asyncpg_and_redis_through_an_asyncio_runner(
    backend: str, postgres_dsn: str, redis_url: str
) -> None:
    trio = pytest.importorskip("trio")
    asyncpg = pytest.importorskip("asyncpg")
    redis_asyncio = pytest.importorskip("redis.asyncio")
    if backend == "uvloop":
        pytest.importorskip("uvloop")
    runner = loopshim.get_runner(backend, cached=False)
    pool = loopshim.loop_local(
        lambda: asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4),
        aclose=lambda p: p.close(),
    )
    cache = loopshim.loop_local(
        lambda: redis_asyncio.from_url(redis_url), aclose=lambda r: r.aclose()
    )
    cancelled: list[str] = []

    async def query(sql: str) -> Any:
        return await (await pool.aget()).fetchval(sql)

    async def remember(key: str, value: str) -> Any:
        client = cache.get()
        await client.set(key, value)
        return await client.get(key)

    async def slow_query() -> None:
        try:
            await (await pool.aget()).execute("SELECT pg_sleep(30)")
        except asyncio.CancelledError:
            cancelled.append("query cancelled")
            raise

    async def main() -> tuple[Any, Any, Any]:
        one = await runner.run_async(query, "SELECT 1")
        stored = await runner.run_async(remember, "loopshim", "trio")
        with trio.move_on_after(0.5):
            await runner.run_async(slow_query)
        after = await runner.run_async(query, "SELECT 2")  # the pool still works
        return one, stored, after

    assert trio.run(main) == (1, b"trio", 2)
    assert cancelled == ["query cancelled"]
    runner.close()


#: loopshim's own backends (a third-party backend lends no workers unless it says how),
#: each with the worker pools its loop has.
_POOLS = [
    pytest.param(*case.values, pool, id=f"{case.id}-{pool}", marks=case.marks)
    for case in BACKENDS
    if case.id != "third-party"
    for pool in ("anyio", "asyncio")
    if pool == "anyio" or case.values[0].name != "trio"
]


@pytest.mark.parametrize(("loop_backend", "pool"), _POOLS)
@pytest.mark.loopshim_scopes("process")
@pytest.mark.timeout(60)
def test_calls_from_the_loops_own_worker_threads_outnumbering_them(
    loop_backend: BackendCase, loop_runner_factory: LoopRunnerFactory, pool: str
) -> None:
    # A coroutine hands a blocking call to a worker thread, which calls the runner
    # again, whose coroutine needs a worker thread too: with more such calls than
    # workers (asyncio's default executor has min(32, CPUs + 4), anyio's and trio's
    # limiter 40), every worker would wait for a call that waits for a worker.
    to_thread: Any = asyncio.to_thread if pool == "asyncio" else anyio.to_thread.run_sync
    runner = loop_runner_factory()
    callers = 60

    async def inner(n: int) -> int:
        return await to_thread(lambda: n * 2)

    async def outer(n: int) -> int:
        return await to_thread(runner.run, inner, n)

    async def all_of_them() -> list[int]:
        results = [0] * callers

        async def one(n: int) -> None:
            results[n] = await outer(n)

        async with anyio.create_task_group() as group:
            for n in range(callers):
                group.start_soon(one, n)
        return results

    assert runner.run(all_of_them) == [n * 2 for n in range(callers)]
