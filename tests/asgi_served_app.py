"""The Flask app that tests/test_asgi.py serves through ``loopshim.asgi.to_asgi`` with
real ASGI servers (uvicorn, hypercorn's asyncio and trio workers, granian).

Its async code uses anyio, so it runs on asyncio and trio alike. Environment:
``MARKERS`` (a directory where views and background tasks leave marker files),
``ASGI_MODE`` (``greenlet`` or ``thread``), ``ASGI_SYNC`` (``thread`` or ``inline``).
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from flask import (
    Flask,
    Response,
    g,
    render_template_string,
    request,
    send_file,
    stream_with_context,
)

import loopshim
from loopshim.asgi import to_asgi
from loopshim.flask import LoopShim

MARKERS = Path(os.environ["MARKERS"])
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
set_by_view: contextvars.ContextVar[str] = contextvars.ContextVar("set_by_view", default="-")

app = Flask(__name__)
app.secret_key = "test"


class Resource:
    """A loop-bound resource: one per server loop, closed at lifespan shutdown."""

    def __init__(self) -> None:
        self.thread = threading.current_thread().name

    async def aclose(self) -> None:
        await anyio.sleep(0)
        (MARKERS / "local-closed").write_text(self.thread)


resource = loopshim.loop_local(Resource, aclose=lambda r: r.aclose())


def mark(name: str, text: str = "") -> None:
    (MARKERS / name).write_text(text)


@app.before_request
async def identify() -> None:
    rid = request.args.get("rid", "")
    request_id.set(rid)  # a context variable set in an async hook reaches the view
    g.rid = rid
    await anyio.sleep(0)


@app.after_request
def tag(response: Response) -> Response:  # a sync hook: in a worker thread by default
    response.headers["X-Rid"] = f"{g.get('rid', '')}/{request_id.get('')}/{set_by_view.get()}"
    response.headers["X-Hook-Thread"] = threading.current_thread().name
    return response


@app.get("/item")
async def item() -> dict[str, Any]:
    rid = request.args["rid"]
    seen_at_start = request_id.get()
    set_by_view.set(rid)
    await anyio.sleep(float(request.args.get("delay", "0")))
    return {
        "rid": rid,
        "var": seen_at_start,
        "g": g.rid,
        "after": request_id.get(),
        "path": request.path,
        "thread": threading.current_thread().name,
    }


@app.get("/sync")
def sync_item() -> dict[str, Any]:
    time.sleep(float(request.args.get("delay", "0")))
    return {
        "rid": request.args["rid"],
        "var": request_id.get(),
        "g": g.rid,
        "thread": threading.current_thread().name,
        "loop_thread": threading.main_thread().name,
    }


@app.get("/runner")
async def runner() -> dict[str, Any]:
    used = LoopShim.runner()
    return {"name": used.name, "scope": used.scope, "resource": id(resource.get())}


class Teapot(Exception):
    pass


@app.errorhandler(Teapot)
async def teapot(error: Teapot) -> tuple[str, int]:
    await anyio.sleep(0)
    return f"async handler: {sys.exc_info()[1]!r}", 418


@app.errorhandler(LookupError)
def lookup(error: LookupError) -> tuple[str, int]:
    return f"sync handler: {sys.exc_info()[1]!r}", 409


@app.get("/teapot")
async def raise_teapot() -> str:
    await anyio.sleep(0)
    raise Teapot("short and stout")


@app.get("/lookup")
def raise_lookup() -> str:
    raise KeyError("missing")


@app.get("/crash")
async def crash() -> str:
    await anyio.sleep(0)
    raise RuntimeError("unhandled")


@app.context_processor
async def async_processor() -> dict[str, str]:
    await anyio.sleep(0)
    return {"who": "async context processor"}


@app.get("/template")
async def template() -> str:
    await anyio.sleep(0)
    # Rendering is sync code calling the async context processor: a re-entrant call.
    return render_template_string("{{ who }} for {{ rid }}", rid=request.args["rid"])


@app.get("/stream")
def stream() -> Response:
    release = MARKERS / f"release-{request.args['rid']}"

    def generate() -> Any:
        yield "first\n"
        deadline = time.monotonic() + 10
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield f"second for {request.args['rid']}\n"

    return Response(stream_with_context(generate()), mimetype="text/plain")


@app.post("/upload")
def upload() -> dict[str, Any]:
    digest = hashlib.sha256()
    total = 0
    first = request.stream.read(65536)
    digest.update(first)
    total += len(first)
    time.sleep(float(request.args.get("pause", "0")))  # the client must wait meanwhile
    while True:
        chunk = request.stream.read(65536)
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
    return {"bytes": total, "sha256": digest.hexdigest()}


@app.post("/echo")
def echo() -> Response:
    """Streams the body back as it reads it: the response starts before the body is read."""
    stream = request.stream

    def generate() -> Any:
        while chunk := stream.read(65536):
            yield chunk

    return Response(generate(), mimetype="application/octet-stream")


@app.post("/form")
async def form() -> dict[str, Any]:
    await anyio.sleep(0)
    return {"name": request.form["name"], "json": request.args.get("rid")}


@app.get("/file")
def file() -> Response:
    return send_file(MARKERS / "payload.bin", mimetype="application/octet-stream")


@app.route("/slow", methods=["GET", "POST"])
async def slow() -> str:
    rid = request.args["rid"]
    mark(f"started-{rid}")
    try:
        await anyio.sleep(30)
    except anyio.get_cancelled_exc_class():
        mark(f"cancelled-{rid}")
        raise
    return "finished"


@app.route("/endless", methods=["GET", "POST"])
def endless() -> Response:
    rid = request.args["rid"]

    def generate() -> Any:
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                yield "tick\n"
                time.sleep(0.05)
        finally:
            mark(f"stream-closed-{rid}")

    # stream_with_context pushes the request's contexts when the body starts and pops
    # them when it is closed: both must happen in the same context.
    return Response(stream_with_context(generate()), mimetype="text/plain")


@app.get("/too-long")
async def too_long() -> str:
    await anyio.sleep(30)
    return "finished"


async def finish_later(rid: str) -> None:
    await anyio.sleep(0.5)
    mark(f"background-{rid}")


@app.get("/spawn")
async def spawn() -> str:
    rid = request.args["rid"]
    LoopShim.runner().spawn(finish_later, rid)
    return rid


@app.get("/spawn-sync")
def spawn_from_a_thread() -> str:
    rid = request.args["rid"]
    LoopShim.runner().spawn(finish_later, rid)
    return rid


served = to_asgi(
    app,
    mode=os.environ.get("ASGI_MODE", "greenlet"),
    sync=os.environ.get("ASGI_SYNC", "thread"),
    timeout=3,
)


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The served app; a request with ``report`` in its query string leaves a marker
    ``outcome-<rid>`` once the ASGI call is over: ``ok``, or what it raised."""
    query = scope.get("query_string", b"").decode() if scope["type"] == "http" else ""
    if "report" not in query:
        return await served(scope, receive, send)
    rid = dict(part.partition("=")[::2] for part in query.split("&"))["rid"]
    try:
        await served(scope, receive, send)
    except BaseException as exc:
        mark(f"outcome-{rid}", repr(exc))
        raise
    mark(f"outcome-{rid}", "ok")
