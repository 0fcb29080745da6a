"""``loopshim.asgi.to_asgi`` without a server: its options (refused at once), a plain
WSGI callable, ``sync="inline"``, the app's runner and test client once served, and an
app freed with its ASGI application. The ASGI application is driven in this process by
httpx's ``ASGITransport`` on an asyncio loop (real servers: ``test_asgi.py``)."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.from_thread
import pytest
from conftest import BackendCase

import loopshim

flask = pytest.importorskip("flask")
pytest.importorskip("greenlet")
httpx = pytest.importorskip("httpx")

from loopshim.asgi import ServerRunner, to_asgi  # noqa: E402
from loopshim.flask import LoopShim  # noqa: E402


def get(asgi_app: Any, path: str, **kwargs: Any) -> Any:
    async def main() -> Any:
        transport = httpx.ASGITransport(app=asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(kwargs.pop("method", "GET"), path, **kwargs)

    return asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "fiber"}, "to_asgi(mode=...) must be one of 'greenlet', 'thread'"),
        ({"mode": "threads"}, "Did you mean 'thread'?"),
        ({"sync": "inlined"}, "Did you mean 'inline'?"),
        ({"mode": "thread", "sync": "inline"}, "sync=...) applies to mode='greenlet'"),
        ({"threads": 0}, "threads=...) must be an int of 1 or more"),
        ({"threads": True}, "threads=...) must be an int of 1 or more"),
        ({"timeout": -1}, "option 'timeout' must be a number of seconds"),
        ({"shutdown_timeout": "5"}, "option 'shutdown_timeout' must be a number of seconds"),
    ],
)
def test_bad_options_are_refused_at_once(options: dict[str, Any], message: str) -> None:
    app = flask.Flask(__name__)
    with pytest.raises(loopshim.OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_asgi(app, **options)
    assert "loopshim" not in app.extensions  # nothing was set up


def test_what_is_not_an_app_is_refused() -> None:
    with pytest.raises(loopshim.ArgumentError, match="a Flask app or a WSGI callable"):
        to_asgi(42)  # type: ignore[arg-type]


def plain_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body, b" from ", threading.current_thread().name.encode()]


def test_a_plain_wsgi_callable_runs_in_a_worker_thread() -> None:
    with pytest.raises(loopshim.OptionError, match="needs a Flask app"):
        to_asgi(plain_wsgi, mode="greenlet")
    response = get(to_asgi(plain_wsgi), "/", method="POST", content=b"hello")
    assert response.status_code == 200
    body, _, thread = response.text.partition(" from ")
    assert body == "hello"
    assert thread.startswith("loopshim-asgi-")


def test_serving_an_app_twice_is_refused() -> None:
    app = flask.Flask(__name__)
    to_asgi(app)
    with pytest.raises(loopshim.UsageError, match="served through to_asgi"):
        to_asgi(app)


def test_sync_inline_runs_sync_views_on_the_loop() -> None:
    app = flask.Flask(__name__)

    @app.get("/")
    def where() -> str:
        return threading.current_thread().name

    inline = get(to_asgi(app, sync="inline"), "/")
    assert inline.text == threading.current_thread().name  # asyncio.run's thread: the loop


@pytest.mark.loopshim_scopes("process")
def test_a_served_app_keeps_its_runner_for_the_test_client(
    loop_backend: BackendCase, loop_scope: str
) -> None:
    app = flask.Flask(__name__)
    app.config.update(
        LOOPSHIM_BACKEND=loop_backend.name,
        LOOPSHIM_SCOPE=loop_scope,
        LOOPSHIM_OPTIONS=dict(loop_backend.options),
    )

    @app.get("/")
    async def index() -> str:
        import sniffio

        await anyio.sleep(0)
        return sniffio.current_async_library()

    to_asgi(app)
    runner = LoopShim.runner(app)
    assert isinstance(runner, ServerRunner)
    assert isinstance(runner, loopshim.LoopRunner)
    assert (runner.name, runner.scope) == ("asgi", "server")  # no server loop yet
    # Outside a served request, the app's own runner: the test client works as before.
    expected = "trio" if loop_backend.name == "trio" else "asyncio"
    assert app.test_client().get("/").text == expected

    async def double(x: int) -> int:
        await anyio.sleep(0)
        return 2 * x

    assert runner.run(double, 21) == 42  # on the app's own runner: no server loop runs
    assert runner.spawn(double, 2).result(timeout=10) == 4
    with pytest.raises(loopshim.UsageError, match="the server closes"):
        runner.close()


def test_the_server_runner_from_other_threads_and_loops() -> None:
    app = flask.Flask(__name__)

    @app.get("/")
    async def index() -> str:
        await anyio.sleep(0)
        return threading.current_thread().name

    asgi_app = to_asgi(app)
    runner = LoopShim.runner(app)

    async def where() -> str:
        await anyio.sleep(0)
        return threading.current_thread().name

    async def serve_one() -> str:
        transport = httpx.ASGITransport(app=asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/")).text

    async def blocking_call() -> str:
        return runner.run(where)  # a sync call from a task of the server's loop

    async def from_another_loop() -> str:
        return runner.run(where)  # blocks this loop's thread until done

    # The portal's loop stands for the server's (no lifespan: made on the first request).
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        server_thread = portal.call(serve_one)
        assert runner.name == "asyncio"
        assert runner.run(where) == server_thread  # from a thread without a loop
        assert asyncio.run(from_another_loop()) == server_thread
        assert portal.call(runner.run_async, where) == server_thread
        with pytest.raises(loopshim.ReentrantCallError, match="outside a served request"):
            portal.call(blocking_call)


def test_an_app_is_freed_with_its_asgi_application() -> None:
    app = flask.Flask(__name__)

    @app.get("/")
    async def index() -> str:
        return "ok"

    asgi_app = to_asgi(app)
    assert get(asgi_app, "/").text == "ok"
    ref = weakref.ref(app)
    del app, asgi_app
    gc.collect()
    assert ref() is None


def test_a_response_goes_out_a_loop_iteration_after_the_views_work() -> None:
    # uvloop accepts one new connection per loop iteration: a request whose Flask work and
    # response ran in one step made every iteration run the whole work of every busy
    # request, and clients connecting meanwhile waited to be accepted (wrk's p99).
    app = flask.Flask(__name__)
    events: list[str] = []

    @app.get("/")
    async def view() -> str:
        events.append("view")
        return "ok"

    asgi_app = to_asgi(app)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "server": ("test", 80),
        "client": ("127.0.0.1", 5000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        events.append(message["type"])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(asgi_app(scope, receive, send))

        def step_ends() -> None:  # scheduled after each step of the task
            events.append("|")
            if not task.done():
                loop.call_soon(step_ends)

        loop.call_soon(step_ends)
        await task

    asyncio.run(main())
    steps = " ".join(events).split("|")
    viewed = next(i for i, step in enumerate(steps) if "view" in step)
    started = next(i for i, step in enumerate(steps) if "http.response.start" in step)
    assert started > viewed, events
    assert "http.response.body" in steps[started]
