"""A Flask app served through ``loopshim.asgi.to_asgi`` by real ASGI servers started here
on 127.0.0.1 — uvicorn, hypercorn's asyncio and trio workers — in greenlet mode (and
uvicorn in thread mode): concurrency without leaks between requests, async and sync
views, hooks, error handlers, streaming both ways, ``send_file``, disconnects, timeouts;
and lifespan and SIGTERM with background tasks in flight on those and granian. The app is
``tests/asgi_served_app.py``. Every wait is bounded; servers are stopped even on failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import ServerProcess, start_server

pytest.importorskip("flask")
pytest.importorskip("greenlet")
httpx = pytest.importorskip("httpx")

TESTS = Path(__file__).resolve().parent
APP = "asgi_served_app:asgi_app"
CONCURRENT = 200
WAIT = 20.0  # the longest any single wait here lasts
#: uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
CLEAN_EXIT = (0, -signal.SIGTERM)


@dataclass(frozen=True)
class Kind:
    """One server set-up: its id, the package it needs, its command line for a port."""

    id: str
    requires: str
    command: Callable[[int], list[str]]
    env: tuple[tuple[str, str], ...] = ()
    #: The async library the app's loop runs.
    library: str = "asyncio"


def _uvicorn(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)]


KINDS = [
    Kind(
        "uvicorn",
        "uvicorn",
        lambda port: [
            *_uvicorn(port),
            "--lifespan",
            "on",
            "--log-level",
            "warning",
            "--timeout-graceful-shutdown",
            "10",
            APP,
        ],
    ),
    Kind(
        "hypercorn-asyncio",
        "hypercorn",
        lambda port: [
            sys.executable,
            "-m",
            "hypercorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--worker-class",
            "asyncio",
            "--graceful-timeout",
            "10",
            APP,
        ],
    ),
    Kind(
        "hypercorn-trio",
        "hypercorn",
        lambda port: [
            sys.executable,
            "-m",
            "hypercorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--worker-class",
            "trio",
            "--graceful-timeout",
            "10",
            APP,
        ],
        library="trio",
    ),
    Kind(
        "uvicorn-thread-mode",
        "uvicorn",
        lambda port: [*_uvicorn(port), "--lifespan", "on", "--log-level", "warning", APP],
        env=(("ASGI_MODE", "thread"),),
    ),
]
GRANIAN = Kind(
    "granian",
    "granian",
    lambda port: [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        APP,
    ],
)


def _param(kind: Kind) -> Any:
    needed = [kind.requires] + (["trio"] if kind.library == "trio" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    marks = [pytest.mark.skip(reason=f"{', '.join(missing)} not installed")] if missing else []
    return pytest.param(kind, id=kind.id, marks=marks)


@dataclass
class Served:
    kind: Kind
    server: ServerProcess
    markers: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def thread_mode(self) -> bool:
        return ("ASGI_MODE", "thread") in self.kind.env


def start(kind: Kind, directory: Path) -> Served:
    markers = directory / "markers"
    markers.mkdir(exist_ok=True)
    (markers / "payload.bin").write_bytes(os.urandom(1_000_000))
    env = {
        "MARKERS": str(markers),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        **dict(kind.env),
    }
    return Served(kind, start_server(directory, kind.command, env, kind.id), markers)


@pytest.fixture(scope="module", params=[_param(kind) for kind in KINDS])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    kind: Kind = request.param
    running = start(kind, tmp_path_factory.mktemp(kind.id))
    try:
        yield running
    finally:
        code, log = running.server.stop()
    assert code in CLEAN_EXIT, log


def run(coro_fn: Callable[[], Any]) -> Any:
    """Run a client coroutine on a fresh asyncio loop, bounded."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), 60)

    return asyncio.run(bounded())


@pytest.fixture
def client_limits() -> Any:
    return httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=CONCURRENT)


def wait_for_file(path: Path, seconds: float = WAIT) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.02)
    return path.exists()


# --- correctness under load ---------------------------------------------------------


def test_concurrent_requests_never_see_each_other(served: Served, client_limits: Any) -> None:
    async def main() -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(base_url=served.url, limits=client_limits, timeout=WAIT) as c:

            async def one(i: int) -> tuple[str, httpx.Response]:
                rid = f"r{i}"
                path = "/sync" if i % 4 == 0 else "/item"
                delay = f"{(i % 7) / 500:.3f}"
                return rid, await c.get(path, params={"rid": rid, "delay": delay})

            return list(await asyncio.gather(*(one(i) for i in range(CONCURRENT))))

    results = run(main)
    assert len(results) == CONCURRENT
    for i, (rid, response) in enumerate(results):
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["rid"], body["var"], body["g"]) == (rid, rid, rid)
        if i % 4:
            assert body["after"] == rid  # still its own after awaiting, among 200 others
            assert response.headers["X-Rid"] == f"{rid}/{rid}/{rid}"  # set by the view
        else:
            assert response.headers["X-Rid"] == f"{rid}/{rid}/-"


def test_async_views_run_on_the_servers_loop_and_sync_views_in_threads(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=WAIT) as c:
        async_body = c.get("/item", params={"rid": "a"}).json()
        sync_body = c.get("/sync", params={"rid": "s"}).json()
        hook_thread = c.get("/item", params={"rid": "h"}).headers["X-Hook-Thread"]
    if served.thread_mode:
        # The whole WSGI call in a worker thread; the async view awaited on the loop.
        assert sync_body["thread"] != sync_body["loop_thread"]
    else:
        assert async_body["thread"] == sync_body["loop_thread"]  # the server's loop thread
        assert sync_body["thread"] != sync_body["loop_thread"]  # a worker thread
        assert hook_thread != sync_body["loop_thread"]  # the sync after_request hook too


def test_a_blocking_sync_view_does_not_block_the_loop(served: Served) -> None:
    async def main() -> tuple[float, float]:
        async with httpx.AsyncClient(base_url=served.url, timeout=WAIT) as c:
            started = time.monotonic()
            blocking = asyncio.ensure_future(c.get("/sync", params={"rid": "b", "delay": "1.5"}))
            await asyncio.sleep(0.2)
            quick = await c.get("/item", params={"rid": "q"})
            quick_done = time.monotonic() - started
            assert quick.status_code == 200
            assert (await blocking).status_code == 200
            return quick_done, time.monotonic() - started

    quick_done, all_done = run(main)
    assert quick_done < 1.2 < all_done


def test_the_servers_runner_and_loop_local(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=WAIT) as c:
        first = c.get("/runner").json()
        second = c.get("/runner").json()
    assert first["name"] == served.kind.library
    assert first["scope"] == "server"
    assert first["resource"] == second["resource"]  # one per loop, across requests


# --- hooks, errors, templates ------------------------------------------------------------


def test_error_handlers_see_the_exception(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=WAIT) as c:
        teapot = c.get("/teapot")
        lookup = c.get("/lookup")
        crash = c.get("/crash")
    assert teapot.status_code == 418
    assert teapot.text == "async handler: Teapot('short and stout')"
    assert lookup.status_code == 409
    assert lookup.text == "sync handler: KeyError('missing')"
    assert crash.status_code == 500


def test_an_async_context_processor_during_an_async_view(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=WAIT) as c:
        response = c.get("/template", params={"rid": "t1"})
    assert response.status_code == 200
    assert response.text == "async context processor for t1"


def test_the_timeout_cancels_a_view(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=WAIT) as c:
        started = time.monotonic()
        response = c.get("/too-long")
    assert response.status_code == 500
    assert 2.5 < time.monotonic() - started < 10


# --- streaming both ways, files, forms -----------------------------------------------------


def test_a_streamed_response_arrives_chunk_by_chunk(served: Served) -> None:
    release = served.markers / "release-s1"

    async def main() -> list[str]:
        async with (
            httpx.AsyncClient(base_url=served.url, timeout=WAIT) as c,
            c.stream("GET", "/stream", params={"rid": "s1"}) as response,
        ):
            assert response.status_code == 200
            lines = response.aiter_lines()
            first = await anext(lines)  # before the generator goes on: not joined
            release.write_text("go")
            return [first, *[line async for line in lines]]

    assert run(main) == ["first", "second for s1"]


def test_an_upload_is_read_as_the_app_reads_it(served: Served) -> None:
    size = 32 * 1024 * 1024
    block = os.urandom(64 * 1024)
    sent_at: list[float] = []

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            sent_at.append(time.monotonic())
            yield block

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(base_url=served.url, timeout=WAIT) as c:
            return await c.post("/upload", params={"pause": "1.0"}, content=body())

    response = run(main)
    assert response.status_code == 200, response.text
    expected = hashlib.sha256(block * (size // len(block))).hexdigest()
    assert response.json() == {"bytes": size, "sha256": expected}
    # Back-pressure: while the app paused after its first read, the client could not
    # send the whole body (the server and the kernel buffer a few MB at most).
    assert sent_at[-1] - sent_at[0] > 0.8


def test_a_body_read_while_the_response_streams(served: Served) -> None:
    body = os.urandom(2 * 1024 * 1024)
    with httpx.Client(base_url=served.url, timeout=WAIT) as c:
        response = c.post("/echo", content=body)
    assert response.status_code == 200
    assert len(response.content) == len(body)
    assert response.content == body


def test_a_form_post(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=WAIT) as c:
        response = c.post("/form", params={"rid": "f"}, data={"name": "ada"})
    assert response.json() == {"name": "ada", "json": "f"}


def test_send_file(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=WAIT) as c:
        response = c.get("/file")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == "1000000"
    assert response.content == (served.markers / "payload.bin").read_bytes()


# --- disconnects ------------------------------------------------------------------------


def test_a_client_that_disconnects_cancels_the_view(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.server.port), timeout=WAIT) as sock:
        sock.sendall(b"GET /slow?rid=d1 HTTP/1.1\r\nHost: test\r\n\r\n")
        assert wait_for_file(served.markers / "started-d1")
    # The backend's own cancellation reached the view's coroutine.
    assert wait_for_file(served.markers / "cancelled-d1", 10)
    with httpx.Client(base_url=served.url, timeout=WAIT) as c:  # the server is fine
        assert c.get("/item", params={"rid": "after"}).status_code == 200


def test_a_disconnect_during_an_upload_views_await(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.server.port), timeout=WAIT) as sock:
        body = b"x" * 1000  # read ahead by the bridge, so that the disconnect is watched for
        head = f"POST /slow?rid=d2 HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        assert wait_for_file(served.markers / "started-d2")
    assert wait_for_file(served.markers / "cancelled-d2", 10)


@pytest.mark.parametrize("body", [b"", b"x" * 1000], ids=["get", "post-unread-body"])
def test_a_streamed_response_stops_when_the_client_goes_away(served: Served, body: bytes) -> None:
    rid = f"e{len(body)}"
    method = "POST" if body else "GET"
    head = f"{method} /endless?rid={rid}&report=1 HTTP/1.1\r\nHost: test\r\n"
    if body:  # read ahead when the response starts, so that a disconnect is watched for
        head += f"Content-Length: {len(body)}\r\n"
    with socket.create_connection(("127.0.0.1", served.server.port), timeout=WAIT) as sock:
        sock.sendall(f"{head}\r\n".encode() + body)
        received = b""
        while b"tick" not in received:  # bounded by the socket's timeout
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
    # The generator is closed (its finally block runs) long before its 20 s are up, and
    # stream_with_context pops the request's contexts without an error.
    assert wait_for_file(served.markers / f"stream-closed-{rid}", 10)
    assert wait_for_file(served.markers / f"outcome-{rid}", 10)
    assert (served.markers / f"outcome-{rid}").read_text() == "ok"


# --- lifespan and SIGTERM ---------------------------------------------------------------


@pytest.mark.parametrize("kind", [_param(kind) for kind in [*KINDS[:3], GRANIAN]])
def test_sigterm_drains_background_tasks_and_closes_loop_locals(kind: Kind, tmp_path: Path) -> None:
    running = start(kind, tmp_path)
    try:
        with httpx.Client(base_url=running.url, timeout=WAIT) as c:
            assert c.get("/runner").status_code == 200  # makes the loop_local value
            rids = [f"bg{i}" for i in range(5)]
            for rid in rids:
                path = "/spawn-sync" if rid == "bg0" else "/spawn"
                assert c.get(path, params={"rid": rid}).text == rid
    finally:
        started = time.monotonic()
        code, log = running.server.stop()  # at once: the tasks are still running
    assert code in CLEAN_EXIT, log
    assert time.monotonic() - started < 10
    assert "Traceback" not in log, log
    for rid in rids:
        assert (running.markers / f"background-{rid}").exists(), log
    assert (running.markers / "local-closed").exists(), log
