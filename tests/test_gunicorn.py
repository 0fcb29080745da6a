"""A Flask app using loopshim, served by a real gunicorn on 127.0.0.1: sync, gthread and
gevent workers, with and without --preload, on every backend where that makes sense.

Every response is checked; SIGTERM must stop the server cleanly after the background
tasks that requests spawned have finished (each leaves a marker file).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until_serving(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gunicorn did not start listening within 30 s")


def start(
    tmp_path: Path, worker: str, preload: bool, backend: str
) -> tuple[subprocess.Popen[bytes], int]:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    (tmp_path / "markers").mkdir()
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--worker-class",
        worker,
        "--graceful-timeout",
        "20",
        "--log-level",
        "warning",
    ]
    if worker == "gthread":
        args += ["--threads", "4"]
    if preload:
        args.append("--preload")
    env = {**os.environ, "BACKEND": backend, "MARKERS": str(tmp_path / "markers")}
    proc = subprocess.Popen(
        [*args, "app:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_until_serving(proc, port)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError("gunicorn did not stop within 40 s of SIGTERM") from None
    return proc.returncode, err.decode(errors="replace")


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
    proc, port = start(tmp_path, worker, preload, backend)
    try:
        uids = [f"user-{i}" for i in range(REQUESTS)]
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            answers = list(pool.map(lambda uid: get(port, f"/{uid}"), uids))
    finally:
        code, log = stop(proc)
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
    proc, port = start(tmp_path, "gevent", preload, "trio")
    try:
        if preload:  # imported before gevent patched: refused at the first call
            status, _ = get(port, "/user-1")
            assert status == 500
        else:  # refused at import: the workers fail to boot and gunicorn gives up
            proc.wait(timeout=40)
    finally:
        code, log = stop(proc)
    assert "backend 'trio' cannot run under gevent's monkey-patching" in log
    if not preload:
        assert code != 0
