"""Real database, cache and HTTP clients in a Flask app on ``LoopShim``, served by a real
gunicorn (gthread worker) on 127.0.0.1, against the PostgreSQL and Redis servers of
``tests/servers.py`` and an HTTP server in this process (issue 11).

The app is ``tests/real_clients_app.py``. Each backend x scope is served once (one
gunicorn, every client in it) and the tests below read what that run saw:

- asyncio and uvloop, every scope: 100 requests per client, each answer checked; in
  ``process`` scope also 50 concurrent requests against each pool of 10; then SIGTERM
  with nothing in flight: the worker must exit within 1 s (a psycopg pool open) and
  cleanly;
- trio, every scope: httpx answers every request; each asyncio-only client fails at once
  with an error that says trio is the reason and what to use instead;
- apart: SIGTERM while background writes to Postgres are in flight drains them within
  ``shutdown_timeout`` and logs those it had to cancel.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from servers import Gunicorn, get, process_gone, serve, start_gunicorn

for module in ("gunicorn", "flask", "httpx", "asyncpg", "psycopg", "psycopg_pool", "aiosqlite"):
    pytest.importorskip(module)
pytest.importorskip("redis.asyncio")
pytest.importorskip("sqlalchemy.ext.asyncio")
import psycopg  # noqa: E402

HERE = Path(__file__).resolve().parent
ASYNCIO_FAMILY = ["asyncio", "uvloop"]
#: What each client's view answers for n.
EXPECTED: dict[str, Callable[[int], object]] = {
    "psycopg": lambda n: n + 1,
    "asyncpg": lambda n: n * 2,
    "redis": lambda n: n * 3,
    "sqlalchemy-asyncpg": lambda n: n + 4,
    "sqlalchemy-aiosqlite": lambda n: n + 5,
    "httpx": lambda n: f"pong n={n}",
}
CLIENTS = list(EXPECTED)
ASYNCIO_ONLY = ["psycopg", "asyncpg", "redis"]
POOLED = ["psycopg", "asyncpg", "sqlalchemy-asyncpg"]

REQUESTS = 100
CONCURRENCY = 8
#: gunicorn threads: in process scope enough for 50 requests in the app at once.
THREADS = {"process": 56, "thread": CONCURRENCY, "call": CONCURRENCY}
POOL_SIZE = {"process": 10, "thread": 2, "call": 2}
CONCURRENT = 50
HOLD = 0.05
#: How many requests an asyncio-only client gets on trio.
TRIO_TRIES = 3
#: "At once": far below the request timeout.
AT_ONCE = 5.0
REQUEST_TIMEOUT = 20.0
#: Failures after which a client's remaining requests are not sent (a broken worker
#: must not make the run crawl through every request).
GIVE_UP_AFTER = 3
#: The workers' grace period: long, so that a worker that waits it out (the defect the
#: exit tests catch) is told apart from a slow one on a busy machine.
SHUTDOWN_TIMEOUT = 10.0
#: Slack on top of a wait that is expected, for a busy machine.
EXIT_WITHIN = 3.0


@dataclass
class Answer:
    path: str
    status: int | None  # None: no answer
    body: bytes
    seconds: float
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        what = self.error or f"{self.status} {self.body[:300]!r}"
        return f"GET {self.path} -> {what} ({self.seconds:.2f} s)"


@dataclass
class Run:
    """What one gunicorn run of the app saw."""

    answers: dict[str, list[Answer]] = field(default_factory=dict)
    concurrent: dict[str, list[Answer]] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    #: From SIGTERM to the worker's exit; None if it outlived the wait.
    exit_seconds: float | None = None
    code: int | None = None
    log: str = ""
    #: Where the log stood when SIGTERM was sent.
    sigterm_at: int = 0

    @property
    def shutdown_log(self) -> str:
        return self.log[self.sigterm_at :]


def load(port: int, paths: list[str], concurrency: int) -> list[Answer]:
    """GET every path, *concurrency* at a time; after GIVE_UP_AFTER failures the rest
    are not sent."""
    failures = 0
    lock = threading.Lock()

    def one(path: str) -> Answer:
        nonlocal failures
        if failures >= GIVE_UP_AFTER:
            return Answer(path, None, b"", 0.0, f"not sent: {failures} requests failed")
        started = time.monotonic()
        try:
            status, body = get(port, path, timeout=REQUEST_TIMEOUT)
        except (OSError, http.client.HTTPException) as exc:
            status, body, error = None, b"", repr(exc)
        else:
            error = ""
        answer = Answer(path, status, body, time.monotonic() - started, error)
        if status != 200:
            with lock:
                failures += 1
        return answer

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, paths))


def worker_pid(server: Gunicorn) -> int:
    status, body = get(server.port, "/pid", timeout=REQUEST_TIMEOUT)
    assert status == 200, body
    return int(body)


def sigterm_and_time_worker(server: Gunicorn, pid: int) -> float | None:
    """SIGTERM gunicorn; seconds until worker *pid* has exited (None: not within 30 s)."""
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    while time.monotonic() - started < 30:
        if process_gone(pid):
            return time.monotonic() - started
        time.sleep(0.005)
    return None


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """The HTTP server httpx talks to: ``GET /?n=N`` answers ``pong n=N``."""

    def pong(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"pong " + environ.get("QUERY_STRING", "").encode()]

    with serve(pong) as base:
        yield base


@pytest.fixture(scope="module")
def app_env(
    postgres_dsn: str, redis_url: str, upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The app's environment, but for BACKEND, SCOPE and the sizes."""
    return {
        "PG_DSN": postgres_dsn,
        "REDIS_URL": redis_url,
        "UPSTREAM": upstream,
        "SQLITE": str(tmp_path_factory.mktemp("sqlite") / "app.sqlite3"),
        "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
    }


def start_app(directory: Path, env: dict[str, str], backend: str, scope: str) -> Gunicorn:
    options = ["--worker-class", "gthread", "--workers", "1", "--threads", str(THREADS[scope])]
    options += ["--graceful-timeout", "30", "--log-level", "warning", "--pythonpath", str(HERE)]
    env = {**env, "BACKEND": backend, "SCOPE": scope, "POOL_SIZE": str(POOL_SIZE[scope])}
    return start_gunicorn(directory, "real_clients_app:app", options, env)


def serve_and_load(directory: Path, env: dict[str, str], backend: str, scope: str) -> Run:
    run = Run()
    server = start_app(directory, env, backend, scope)
    try:
        run.pids.append(worker_pid(server))
        on_trio = backend == "trio"
        for client in ["httpx", *ASYNCIO_ONLY] if on_trio else CLIENTS:
            tries = TRIO_TRIES if on_trio and client != "httpx" else REQUESTS
            paths = [f"/{client}/{n}" for n in range(tries)]
            run.answers[client] = load(server.port, paths, CONCURRENCY)
        if scope == "process" and not on_trio:
            for client in POOLED:
                paths = [f"/{client}/{n}?hold={HOLD}" for n in range(CONCURRENT)]
                run.concurrent[client] = load(server.port, paths, CONCURRENT)
        run.pids.append(worker_pid(server))
        # Every request has been answered: nothing is in flight.
        run.sigterm_at = len(server.output())
        run.exit_seconds = sigterm_and_time_worker(server, run.pids[-1])
    finally:
        run.code, run.log = server.stop()
    return run


@pytest.fixture(scope="module")
def served(
    app_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], Run]:
    """``served(backend, scope)``: the run of the app on that backend and scope, made
    at the first test that asks for it."""
    runs: dict[tuple[str, str], Run | BaseException] = {}

    def run(backend: str, scope: str) -> Run:
        if backend != "asyncio":
            pytest.importorskip(backend)
        key = (backend, scope)
        if key not in runs:
            directory = tmp_path_factory.mktemp(f"{backend}-{scope}")
            try:
                runs[key] = serve_and_load(directory, app_env, backend, scope)
            except Exception as exc:
                runs[key] = exc
        found = runs[key]
        if isinstance(found, BaseException):
            raise found
        return found

    return run


def wrong(answers: list[Answer], expected: Callable[[Answer], bool]) -> str:
    bad = [a for a in answers if not (a.status == 200 and expected(a))]
    unsent = sum(a.status is None and a.error.startswith("not sent") for a in bad)
    return (
        f"{len(bad) - unsent} of {len(answers)} wrong ({unsent} more not sent), e.g.:\n"
        + "\n".join(map(str, bad[:3]))
    )


def correct_value(client: str) -> Callable[[Answer], bool]:
    def check(answer: Answer) -> bool:
        n = int(answer.path.split("/")[2].split("?")[0])
        body = answer.json()
        return bool(body["client"] == client and body["value"] == EXPECTED[client](n))

    return check


#: Log lines that say something went wrong: a level, or the last line of a traceback.
PROBLEM = re.compile(
    r"CRITICAL|ERROR|Traceback|\w+Warning: |^\w[\w.]*(Error|Exception|Cancelled\w*|Interrupt)\b"
)


def log_problems(log: str) -> list[str]:
    """The distinct problem lines of a log, in order."""
    lines = [line for line in log.splitlines() if PROBLEM.search(line)]
    return list(dict.fromkeys(lines))


def summary(log: str) -> str:
    problems = log_problems(log)
    return "\n".join(problems[:20]) + ("\n..." if len(problems) > 20 else "")


# --- asyncio and uvloop -----------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("loop_backend", ASYNCIO_FAMILY)
def test_every_response_is_correct(
    served: Callable[[str, str], Run], loop_backend: str, loop_scope: str, client: str
) -> None:
    answers = served(loop_backend, loop_scope).answers[client]
    assert len(answers) == REQUESTS
    ok = correct_value(client)
    assert all(a.status == 200 and ok(a) for a in answers), wrong(answers, ok)


@pytest.mark.parametrize("client", POOLED)
@pytest.mark.parametrize("loop_backend", ASYNCIO_FAMILY)
def test_50_concurrent_requests_share_a_pool_of_10(
    served: Callable[[str, str], Run], loop_backend: str, client: str
) -> None:
    answers = served(loop_backend, "process").concurrent[client]
    assert len(answers) == CONCURRENT
    ok = correct_value(client)
    assert all(a.status == 200 and ok(a) for a in answers), wrong(answers, ok)
    # More requests were in the view at once than the pool has connections: they
    # really waited for one another's connections.
    assert max(a.json()["peak"] for a in answers) > POOL_SIZE["process"]


@pytest.mark.parametrize("loop_backend", ASYNCIO_FAMILY)
def test_the_worker_never_died_and_shut_down_cleanly(
    served: Callable[[str, str], Run], loop_backend: str, loop_scope: str
) -> None:
    run = served(loop_backend, loop_scope)
    assert run.pids[0] == run.pids[-1], "the worker was replaced:\n" + summary(run.log)
    assert "Booting worker" not in run.log, summary(run.log)
    assert run.code == 0, summary(run.shutdown_log)
    assert log_problems(run.shutdown_log) == [], run.shutdown_log[-5000:]


@pytest.mark.parametrize("loop_backend", ASYNCIO_FAMILY)
def test_the_worker_exits_at_sigterm_without_waiting_when_nothing_is_in_flight(
    served: Callable[[str, str], Run], loop_backend: str, loop_scope: str
) -> None:
    """With its clients open (in process scope the module-level psycopg pool, whose
    worker tasks never end by themselves; in thread scope every thread's loop-local
    pools), nothing spawned and no request in flight."""
    seconds = served(loop_backend, loop_scope).exit_seconds
    assert seconds is not None, "the worker was still running 30 s after SIGTERM"
    # Typically 0.2-0.6 s; waiting out the grace period was the defect.
    assert seconds < SHUTDOWN_TIMEOUT / 2, (
        f"the worker took {seconds:.2f} s from SIGTERM to exit "
        f"(shutdown_timeout={SHUTDOWN_TIMEOUT:g})"
    )


# --- trio -------------------------------------------------------------------------


def test_httpx_works_on_trio(served: Callable[[str, str], Run], loop_scope: str) -> None:
    run = served("trio", loop_scope)
    answers = run.answers["httpx"]
    assert len(answers) == REQUESTS
    ok = correct_value("httpx")
    assert all(a.status == 200 and ok(a) for a in answers), wrong(answers, ok)
    assert run.pids[0] == run.pids[-1], "the worker was replaced:\n" + summary(run.log)
    assert run.code == 0, summary(run.shutdown_log)


@pytest.mark.parametrize("client", ASYNCIO_ONLY)
def test_asyncio_only_clients_fail_at_once_on_trio_saying_why(
    served: Callable[[str, str], Run], loop_scope: str, client: str
) -> None:
    """asyncpg, redis.asyncio and psycopg's async pool need an asyncio loop: on trio
    they fail (never hang), and the error — its notes included — names trio and says
    to use asyncio or uvloop."""
    answers = served("trio", loop_scope).answers[client]
    assert len(answers) == TRIO_TRIES
    for answer in answers:
        assert answer.status == 500, answer
        assert answer.seconds < AT_ONCE, answer
        error = answer.json()
        text = "\n".join([error["message"], *error["notes"]])
        assert "trio" in text, f"{error['error']}: {text}"
        assert "asyncio" in text, f"{error['error']}: {text}"
        assert "uvloop" in text, f"{error['error']}: {text}"


# --- background writes at SIGTERM --------------------------------------------------


@pytest.mark.parametrize("loop_backend", ASYNCIO_FAMILY)
def test_sigterm_drains_background_writes_and_logs_those_it_cancels(
    loop_backend: str, app_env: dict[str, str], postgres_dsn: str, tmp_path: Path
) -> None:
    if loop_backend != "asyncio":
        pytest.importorskip(loop_backend)
    quick, slow, grace = 20, 10, 2.0
    table = f"writes_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (n integer PRIMARY KEY)")
    env = {**app_env, "WRITES_TABLE": table, "SHUTDOWN_TIMEOUT": str(grace)}
    server = start_app(tmp_path, env, loop_backend, "process")
    try:
        pid = worker_pid(server)
        spawned = [f"/spawn/{n}?delay=0.5" for n in range(quick)]
        spawned += [f"/spawn/{n}?delay=60" for n in range(quick, quick + slow)]
        answers = load(server.port, spawned, CONCURRENCY)
        assert all(a.status == 200 for a in answers), wrong(answers, lambda a: True)
        # The quick writes are still sleeping: SIGTERM now.
        seconds = sigterm_and_time_worker(server, pid)
    finally:
        code, log = server.stop()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        written = [n for (n,) in conn.execute(f"SELECT n FROM {table} ORDER BY n")]
        conn.execute(f"DROP TABLE {table}")
    assert written == list(range(quick)), summary(log)
    assert seconds is not None
    assert seconds < grace + EXIT_WITHIN, f"{seconds:.2f} s from SIGTERM to exit:\n{summary(log)}"
    cancelled = [
        line
        for line in log.splitlines()
        if "cancel" in line.lower() and re.search(rf"\b{slow}\b", line)
    ]
    assert cancelled, f"no log line says the {slow} unfinished writes were cancelled:\n{log}"
    # Logged once, naming them.
    assert len(cancelled) == 1, cancelled
    assert "write_later" in log[log.index(cancelled[0]) :], log
    assert code == 0, summary(log)
