"""Real servers on 127.0.0.1, started and stopped by the tests: werkzeug's threaded
server running a Flask app (and the loopshim.wsgi adapter) on every backend and scope,
loaded by a bounded concurrent client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import random
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from conftest import BackendCase
from servers import serve

import loopshim

flask = pytest.importorskip("flask")
from flask import Flask, g, request  # noqa: E402
from werkzeug.wrappers import Request, Response  # noqa: E402

from loopshim.flask import LoopShim  # noqa: E402
from loopshim.wsgi import to_wsgi  # noqa: E402

REQUESTS = 200
#: The no-leak test: 1,000 requests, 50 at a time.
LEAK_REQUESTS = 1000
CONCURRENCY = 50


def load(base: str, paths: list[str]) -> list[httpx.Response]:
    """GET every path, CONCURRENCY at a time, each with a bounded timeout."""
    with (
        httpx.Client(base_url=base, timeout=30) as client,
        concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool,
    ):
        return list(pool.map(client.get, paths))


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """A plain WSGI service the async views talk to over HTTP."""

    def pong(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"pong " + environ.get("QUERY_STRING", "").encode()]

    with serve(pong) as base:
        yield base


def shim_app(loop_backend: BackendCase, loop_scope: str) -> Flask:
    app = Flask(__name__)
    app.config.update(
        LOOPSHIM_BACKEND=loop_backend.name,
        LOOPSHIM_SCOPE=loop_scope,
        LOOPSHIM_OPTIONS=dict(loop_backend.options),
    )
    LoopShim(app)
    return app


user_id: contextvars.ContextVar[str] = contextvars.ContextVar("user_id", default="anonymous")


def test_no_request_sees_another_requests_data(loop_backend: BackendCase, loop_scope: str) -> None:
    app = shim_app(loop_backend, loop_scope)

    async def from_background(uid: str) -> str:
        return f"{uid}:{user_id.get()}"

    @app.route("/user/<uid>")
    async def whoami(uid: str) -> dict[str, Any]:
        seen_at_start = user_id.get()
        user_id.set(uid)
        g.uid = uid
        for _ in range(3):
            await anyio.sleep(random.uniform(0, 0.003))
            if user_id.get() != uid or g.uid != uid or request.view_args["uid"] != uid:
                return {"error": f"{uid} saw {user_id.get()}/{g.uid}"}
        background = None
        if loop_scope == "process":
            background = await anyio.to_thread.run_sync(
                lambda: LoopShim.runner(app).spawn(from_background, uid).result(10)
            )
        return {"uid": user_id.get(), "g": g.uid, "start": seen_at_start, "bg": background}

    try:
        with serve(app) as base:
            uids = [f"u{i}" for i in range(LEAK_REQUESTS)]
            responses = load(base, [f"/user/{u}" for u in uids])
        for uid, response in zip(uids, responses, strict=True):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["uid"] == uid
            assert body["g"] == uid
            assert body["start"] == "anonymous"
            if loop_scope == "process":
                # A spawned task gets an empty context: the request's id does not reach it.
                assert body["bg"] == f"{uid}:anonymous"
    finally:
        LoopShim.runner(app).close()


def test_wsgi_adapter_under_a_real_server(loop_backend: BackendCase, loop_scope: str) -> None:
    async def handler(req: Request) -> Response:
        user_id.set(req.args["n"])
        await anyio.sleep(random.uniform(0, 0.003))
        return Response(f"{req.args['n']} {user_id.get()}")

    application = to_wsgi(
        handler, backend=loop_backend.name, scope=loop_scope, **loop_backend.options
    )
    with serve(application) as base:
        responses = load(base, [f"/?n={i}" for i in range(REQUESTS)])
    assert [r.text for r in responses] == [f"{i} {i}" for i in range(REQUESTS)]
    loopshim.get_runner(loop_backend.name, scope=loop_scope, **loop_backend.options).close()


def test_wsgi_adapter_rejects_bad_handlers_and_results() -> None:
    def sync_handler(req: Request) -> Response:
        return Response("sync")

    with pytest.raises(TypeError, match="regular callable"):
        to_wsgi(sync_handler)  # type: ignore[arg-type]

    async def returns_text(req: Request) -> str:
        return "not a response"

    application = to_wsgi(returns_text, scope="call")  # type: ignore[arg-type]
    from werkzeug.test import Client

    with pytest.raises(TypeError, match="must return a werkzeug Response"):
        Client(application).get("/")


@pytest.mark.loopshim_scopes("process")
def test_module_level_loop_bound_objects_survive_requests(
    loop_backend: BackendCase, loop_scope: str, upstream: str
) -> None:
    """The top complaint about Flask's async views: a client or queue created once
    works on the first request and breaks on the second. Not here."""
    client = httpx.AsyncClient(base_url=upstream)
    queue: asyncio.Queue[int] | None = None if loop_backend.name == "trio" else asyncio.Queue()
    app = shim_app(loop_backend, loop_scope)

    @app.route("/proxy/<int:n>")
    async def proxy(n: int) -> str:
        reply = await client.get("/", params={"n": n})
        if queue is not None:
            await queue.put(n)
            assert await queue.get() == n
        return reply.text

    try:
        with serve(app) as base:
            responses = load(base, [f"/proxy/{n}" for n in range(10)])
        assert [r.text for r in responses] == [f"pong n={n}" for n in range(10)]
    finally:
        runner = LoopShim.runner(app)
        runner.run(client.aclose)
        runner.close()


@pytest.mark.loopshim_scopes("thread")
def test_loop_local_client_survives_requests_in_thread_scope(
    loop_backend: BackendCase, loop_scope: str, upstream: str
) -> None:
    clients: list[httpx.AsyncClient] = []

    def make_client() -> httpx.AsyncClient:
        clients.append(httpx.AsyncClient(base_url=upstream))
        return clients[-1]

    async def close_client(c: httpx.AsyncClient) -> None:
        await c.aclose()

    client = loopshim.loop_local(make_client, aclose=close_client)
    app = shim_app(loop_backend, loop_scope)

    @app.route("/proxy/<int:n>")
    async def proxy(n: int) -> str:
        return (await client.get().get("/", params={"n": n})).text

    test_client = app.test_client()  # one thread, so one loop for every request
    try:
        assert [test_client.get(f"/proxy/{n}").text for n in range(5)] == [
            f"pong n={n}" for n in range(5)
        ]
        if loop_backend.options.get("driver") != "public":
            assert len(clients) == 1  # one client, reused by all five requests
    finally:
        LoopShim.runner(app).close()
    assert all(c.is_closed for c in clients)
