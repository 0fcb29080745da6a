"""A Flask app using loopshim, served by a real gunicorn on 127.0.0.1: sync, gthread and
gevent workers, with and without --preload, on every backend where that makes sense.

Every response is checked; SIGTERM must stop the server cleanly after the background
tasks that requests spawned have finished (each leaves a marker file).
"""

from __future__ import annotations

import concurrent.futures
import json
import textwrap
from pathlib import Path

import pytest
from servers import Gunicorn, get, start_gunicorn

pytest.importorskip("gunicorn")
pytest.importorskip("flask")

REQUESTS = 24
CONCURRENCY = 6

APP = """
import contextvars
import os
from pathlib import Path

import anyio
from flask import Flask, g
from loopshim.flask import LoopShim

MARKERS = Path(os.environ["MARKERS"])
user_id = contextvars.ContextVar("user_id")

app = Flask(__name__)
app.config["LOOPSHIM_BACKEND"] = os.environ["BACKEND"]
LoopShim(app)


async def finish_later(uid):
    await anyio.sleep(0.3)
    (MARKERS / uid).write_text(str(os.getpid()))


@app.get("/<uid>")
async def handle(uid):
    user_id.set(uid)
    g.uid = uid
    await anyio.sleep(0.01)
    LoopShim.runner().spawn(finish_later, uid)
    await anyio.sleep(0)
    return {"uid": uid, "var": user_id.get(), "g": g.uid}
"""


def start(tmp_path: Path, worker: str, preload: bool, backend: str) -> Gunicorn:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    (tmp_path / "markers").mkdir()
    options = ["--workers", "2", "--worker-class", worker, "--graceful-timeout", "20"]
    options += ["--log-level", "warning"]
    if worker == "gthread":
        options += ["--threads", "4"]
    if preload:
        options.append("--preload")
    env = {"BACKEND": backend, "MARKERS": str(tmp_path / "markers")}
    return start_gunicorn(tmp_path, "app:app", options, env)


COMBINATIONS = [
    pytest.param(
        worker, preload, backend, id=f"{worker}-{'preload' if preload else 'fork'}-{backend}"
    )
    for worker in ("sync", "gthread", "gevent")
    for preload in (False, True)
    for backend in ("asyncio", "uvloop", "trio")
    if not (worker == "gevent" and backend == "trio")
]


@pytest.mark.parametrize(("worker", "preload", "backend"), COMBINATIONS)
def test_serves_then_drains_on_sigterm(
    tmp_path: Path, worker: str, preload: bool, backend: str
) -> None:
    pytest.importorskip(backend if backend != "asyncio" else "flask")
    if worker == "gevent":
        pytest.importorskip("gevent")
    server = start(tmp_path, worker, preload, backend)
    try:
        uids = [f"user-{i}" for i in range(REQUESTS)]
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            answers = list(pool.map(lambda uid: get(server.port, f"/{uid}"), uids))
    finally:
        code, log = server.stop()
    for uid, (status, body) in zip(uids, answers, strict=True):
        assert status == 200, body
        assert json.loads(body) == {"uid": uid, "var": uid, "g": uid}
    assert code == 0, log
    assert "Traceback" not in log, log
    # Every background task finished before its worker exited.
    assert sorted(p.name for p in (tmp_path / "markers").iterdir()) == sorted(uids)


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_trio_under_gevent_workers_fails_clearly(tmp_path: Path, preload: bool) -> None:
    pytest.importorskip("gevent")
    pytest.importorskip("trio")
    server = start(tmp_path, "gevent", preload, "trio")
    try:
        if preload:  # imported before gevent patched: refused at the first call
            status, _ = get(server.port, "/user-1")
            assert status == 500
        else:  # refused at import: the workers fail to boot and gunicorn gives up
            server.proc.wait(timeout=40)
    finally:
        code, log = server.stop()
    assert "backend 'trio' cannot run under gevent's monkey-patching" in log
    if not preload:
        assert code != 0
