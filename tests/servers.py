"""Real servers that tests (and benchmarks/db.py) start themselves on 127.0.0.1, and
always stop:

- PostgreSQL and Redis from Debian's packages (``postgresql``, ``redis-server``):
  :func:`postgres` and :func:`redis` are context managers yielding a DSN / URL, and the
  session fixtures ``postgres_dsn`` and ``redis_url`` (imported by ``conftest.py``) wrap
  them. A test that needs one is skipped only when the server's binaries are absent.
- gunicorn serving an app module from a directory: :func:`start_gunicorn` starts one on a
  free port and waits until it listens; its ``stop()`` sends SIGTERM and returns the exit
  status and output (call it in a ``finally``). :func:`start_server` does the same for
  any server command (uvicorn, hypercorn, granian).
- :func:`serve`: werkzeug's threaded server running a WSGI app in this process.

Every wait here is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: Where Debian's ``postgresql-NN`` package puts the server binaries (not on PATH).
DEBIAN_POSTGRES = Path("/usr/lib/postgresql")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- PostgreSQL -------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: from PATH, else the newest of
    Debian's ``/usr/lib/postgresql/NN/bin``; None when PostgreSQL is not installed."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).resolve().parent] if on_path else []

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)

    if DEBIAN_POSTGRES.is_dir():
        found = [p / "bin" for p in DEBIAN_POSTGRES.iterdir()]
        candidates += sorted(found, key=version, reverse=True)
    for directory in candidates:
        if all(os.access(directory / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _unprivileged() -> dict[str, Any]:
    """subprocess arguments that run PostgreSQL's tools as an ordinary user: as root,
    the ``postgres`` user (``nobody`` if there is none), since PostgreSQL refuses to run
    as root; as anyone else, the current user (no arguments)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        account = pwd.getpwnam("nobody")
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _run(command: Sequence[str], as_user: dict[str, Any], timeout: float) -> None:
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, **as_user
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with status {done.returncode}:\n{done.stdout}{done.stderr}"
        )


@contextlib.contextmanager
def postgres(bin_dir: Path | None = None) -> Iterator[str]:
    """A throw-away PostgreSQL server: a new cluster (trust authentication, superuser
    ``postgres``) in a temporary directory, listening on a free port of 127.0.0.1 with its
    unix socket in that directory. Yields its DSN; stops it (``pg_ctl stop -m fast``) and
    removes the directory on exit, whatever happens."""
    bin_dir = bin_dir or postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (Debian package: postgresql)")
    as_user = _unprivileged()
    # Under /tmp, not pytest's tmp_path: that one is private to the current user, and as
    # root the server runs as another user who must reach its directory.
    base = Path(tempfile.mkdtemp(prefix="loopshim-pg-"))
    data, log = base / "data", base / "server.log"
    if as_user:
        os.chown(base, as_user["user"], as_user["group"])
    pg_ctl = str(bin_dir / "pg_ctl")
    try:
        initdb = [str(bin_dir / "initdb"), "--pgdata", str(data), "--auth", "trust"]
        initdb += ["--username", "postgres", "--encoding", "UTF8", "--locale", "C", "--no-sync"]
        _run(initdb, as_user, timeout=120)
        for attempt in range(3):  # another process may take the free port meanwhile
            port = free_port()
            options = (
                f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB"
            )
            start = [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "30", "-o", options]
            try:
                _run([*start, "start"], as_user, timeout=START_TIMEOUT + 10)
                break
            except RuntimeError:
                if attempt == 2:
                    raise RuntimeError(f"PostgreSQL did not start; its log:\n{_tail(log)}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        try:
            if (data / "postmaster.pid").exists():  # it runs, or started in part
                stop = [pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"]
                try:
                    _run(stop, as_user, timeout=STOP_TIMEOUT + 10)
                except (RuntimeError, subprocess.TimeoutExpired):
                    _kill_postmaster(data)
                    raise
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError as exc:
        return f"({exc})"


# --- Redis ------------------------------------------------------------------------


def redis_server_binary() -> str | None:
    """``redis-server`` from PATH or Debian's location; None when it is not installed."""
    found = shutil.which("redis-server")
    if found:
        return found
    debian = Path("/usr/bin/redis-server")
    return str(debian) if os.access(debian, os.X_OK) else None


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis(binary: str | None = None) -> Iterator[str]:
    """A throw-away Redis server on a free port of 127.0.0.1, without persistence, its
    working directory a temporary one. Yields its URL; terminates it on exit."""
    binary = binary or redis_server_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (Debian package: redis-server)")
    with tempfile.TemporaryDirectory(prefix="loopshim-redis-") as base:
        log = Path(base) / "server.log"
        port = free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", base]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _redis_answers(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited at start:\n{_tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer PING:\n{_tail(log)}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)


# --- the session fixtures ---------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The DSN of a PostgreSQL server started for this test session."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server binaries are absent (Debian package: postgresql)")
    with postgres(bin_dir) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a Redis server started for this test session."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is absent (Debian package: redis-server)")
    with redis(binary) as url:
        yield url


# --- gunicorn ---------------------------------------------------------------------


def get(port: int, path: str, timeout: float = 20) -> tuple[int, bytes]:
    """GET *path* on its own connection (closed afterwards: nothing stays kept alive)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until_serving(proc: subprocess.Popen[bytes], port: int, name: str = "gunicorn") -> None:
    """Return once *port* accepts connections, or once *proc* has exited."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{name} did not start listening within {START_TIMEOUT:g} s")


@dataclass
class Gunicorn:
    """A server started by :func:`start_gunicorn` or :func:`start_server`; its output
    goes to a file (a pipe nobody reads could fill up and block it)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    name: str = "gunicorn"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> tuple[int, str]:
        """SIGTERM the server (if it still runs) and wait for it; its status and output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
            raise AssertionError(
                f"{self.name} did not stop within {STOP_TIMEOUT:g} s of SIGTERM:\n{self.output()}"
            ) from None
        return self.proc.returncode, self.output()


#: A server process started by :func:`start_server`.
ServerProcess = Gunicorn


def start_server(
    directory: Path,
    command: Callable[[int], Sequence[str]],
    env: dict[str, str] | None = None,
    name: str = "server",
) -> ServerProcess:
    """Start ``command(port)`` in *directory* for a free port of 127.0.0.1, its output in
    ``<name>-<port>.log`` there; return once the port accepts connections."""
    port = free_port()
    log = directory / f"{name}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(command(port)),
            cwd=directory,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(proc, port, log, name)
    try:
        wait_until_serving(proc, port, name)
    except BaseException:
        server.stop()
        raise
    return server


def start_gunicorn(
    directory: Path, app: str, options: Sequence[str], env: dict[str, str] | None = None
) -> Gunicorn:
    """Start ``gunicorn [options] app`` in *directory* on a free port of 127.0.0.1, its
    output in ``gunicorn-<port>.log`` there; return once it listens."""

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *options, app]

    return start_server(directory, command, env, "gunicorn")


def process_gone(pid: int) -> bool:
    """Whether process *pid* has exited (a zombie its parent has not reaped counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# --- an in-process HTTP server ----------------------------------------------------


@contextlib.contextmanager
def serve(app: Callable[..., Any]) -> Iterator[str]:
    """Serve the WSGI *app* with werkzeug's threaded server on a free loopback port, in
    a thread of this process; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
