"""A real-server benchmark: one Flask app per variant, served by gunicorn (gthread
workers) on 127.0.0.1 and loaded by a bounded load generator, comparing a sync view, an
async view on Flask's default, and an async view on each loopshim backend x scope.

    python benchmarks/server.py                 # every variant, about 3 minutes
    python benchmarks/server.py --smoke         # a second or so per variant
    python benchmarks/server.py --scopes process --json server.json

All servers start at once, each on its own free port (a socket bound here and handed to
gunicorn); the load then visits them in rounds, in a fresh random order each round, so
that a busy machine affects every variant alike. The load generator keeps --concurrency
connections busy (one thread each, HTTP/1.1 keep-alive) for a fixed time; every request
carries a unique id that the view echoes, and every response is checked. Servers are
stopped with SIGTERM and waited for.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import math
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import loopshim
from loopshim._info import describe_machine, library_versions, machine
from loopshim._options import SCOPES

HERE = Path(__file__).resolve().parent
BASELINE = "default"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 10.0
VERSIONS = ("loopshim", "flask", "werkzeug", "asgiref", "trio", "uvloop", "gunicorn")


@dataclass
class Variant:
    key: str  # what server_app.create_app() takes
    label: str
    latencies: list[float] = field(default_factory=list)
    #: One (round, requests, seconds) per load slice.
    slices: list[tuple[int, int, float]] = field(default_factory=list)
    wrong: int = 0  # answered, but not with the request's id
    failed: int = 0  # no answer: connection error or timeout
    problems: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def elapsed(self) -> float:
        return sum(seconds for _, _, seconds in self.slices)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else math.nan
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1]

    def note(self, problem: str) -> None:
        if len(self.problems) < 5:
            self.problems.append(problem)

    def record(self) -> dict[str, Any]:
        """The variant's figures, as the ``--json`` documents give them."""
        return {
            "key": self.key,
            "label": self.label,
            "requests": self.requests,
            "elapsed_s": self.elapsed,
            "requests_per_s": self.rps,
            "latency_s": {f"p{p}": self.percentile(p) for p in (50, 90, 99)},
            "wrong": self.wrong,
            "failed": self.failed,
            "problems": self.problems,
        }


def variants(backends: list[str], scopes: list[str]) -> list[Variant]:
    found = [Variant("sync", "sync view"), Variant(BASELINE, "async view, Flask default")]
    for backend in backends:
        for scope in scopes:
            found.append(
                Variant(f"loopshim:{backend}:{scope}", f"async view, loopshim {backend} {scope}")
            )
    return found


# --- the servers ------------------------------------------------------------------


#: The app factory gunicorn calls with a variant's key (a module in this directory).
APP_FACTORY = "server_app:create_app"


class ServerProcess:
    """A server in a process of its own, its output kept in a temporary file (closed by
    :meth:`stop`); ``name`` says which in messages. benchmarks/asgi.py uses it too."""

    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def output(self) -> str:
        """The end of what the server printed."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def stop(self) -> str | None:
        """SIGTERM, then wait; returns a problem, if any."""
        problem = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                problem = f"{self.name} ignored SIGTERM for {STOP_TIMEOUT:g} s"
        if problem is None and self.process.returncode not in (0, -signal.SIGTERM):
            problem = f"{self.name} exited with status {self.process.returncode}:\n{self.output()}"
        self.log.close()
        return problem


class Server(ServerProcess):
    """gunicorn serving one variant on a socket bound here, on a free loopback port."""

    def __init__(
        self, variant: str, workers: int, threads: int, factory: str = APP_FACTORY
    ) -> None:
        self.variant = variant
        self.name = f"gunicorn for {variant!r}"
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = listener.getsockname()[1]
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "gthread",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--bind",
            f"fd://{listener.fileno()}",
            "--chdir",
            str(HERE),
            "--log-level",
            "warning",
            "--graceful-timeout",
            "5",
            f"{factory}({variant!r})",
        ]
        try:
            self.process = subprocess.Popen(
                command, pass_fds=(listener.fileno(),), stdout=self.log, stderr=self.log
            )
        finally:
            listener.close()  # gunicorn has its own copy

    def wait_ready(self, deadline: float) -> None:
        """Return once the server answers a request; raise if it exits or is too slow."""
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn for {self.variant!r} exited with status "
                    f"{self.process.returncode}:\n{self.output()}"
                )
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                connection.request("GET", "/?id=ready")
                response = connection.getresponse()
                body = response.read()
                connection.close()
                if response.status == 200 and body == b"ready":
                    return
                raise RuntimeError(
                    f"gunicorn for {self.variant!r} answered {response.status} {body[:300]!r}"
                )
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"gunicorn for {self.variant!r} did not answer within "
                        f"{START_TIMEOUT:g} s:\n{self.output()}"
                    ) from None
                time.sleep(0.1)


@contextlib.contextmanager
def servers(
    keys: list[str], workers: int, threads: int, problems: list[str], factory: str = APP_FACTORY
) -> Iterator[dict[str, Server]]:
    """Start a server per variant (``factory(key)`` is its app), wait until each answers;
    stop them all on exit, adding what went wrong to *problems*."""
    started: dict[str, Server] = {}
    try:
        for key in keys:
            started[key] = Server(key, workers, threads, factory)
        deadline = time.monotonic() + START_TIMEOUT
        for server in started.values():
            server.wait_ready(deadline)
        yield started
    finally:
        for server in started.values():
            problem = server.stop()
            if problem:
                problems.append(problem)


# --- the load ---------------------------------------------------------------------


def load(variant: Variant, port: int, seconds: float, concurrency: int, round_: int) -> None:
    """Keep *concurrency* connections busy for *seconds*; record every latency and
    check every answer."""
    ids = itertools.count()
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        latencies: list[float] = []
        try:
            while time.perf_counter() < deadline:
                request_id = str(next(ids))
                start = time.perf_counter()
                try:
                    connection.request("GET", f"/?id={request_id}")
                    response = connection.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()  # reconnects on the next request
                    with lock:
                        variant.failed += 1
                        variant.note(f"request {request_id}: {exc!r}")
                    continue
                latencies.append(time.perf_counter() - start)
                if response.status != 200 or body != request_id.encode():
                    with lock:
                        variant.wrong += 1
                        variant.note(f"id {request_id}: {response.status} {body[:100]!r}")
        finally:
            connection.close()
            with lock:
                variant.latencies.extend(latencies)

    before = variant.requests
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if round_ >= 0:
        variant.slices.append((round_, variant.requests - before, time.perf_counter() - start))
    else:  # warm-up: forget it
        del variant.latencies[before:]


def measure(found: list[Variant], ports: dict[str, int], args: argparse.Namespace) -> None:
    slice_seconds = args.duration / args.rounds
    for variant in found:
        load(variant, ports[variant.key], args.warmup, args.concurrency, -1)
    for round_ in range(args.rounds):
        for variant in random.sample(found, len(found)):
            load(variant, ports[variant.key], slice_seconds, args.concurrency, round_)


# --- the report -------------------------------------------------------------------


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def report(found: list[Variant]) -> str:
    base = next(v for v in found if v.key == BASELINE)
    sync = next(v for v in found if v.key == "sync")
    width = max(len(v.label) for v in found)
    lines = [
        f"{'variant':{width}}  {'req/s':>8}  {'p50 ms':>7}  {'p90 ms':>7}  {'p99 ms':>7}  "
        f"{'vs Flask default':>16}  {'vs sync view':>12}  {'bad':>4}"
    ]
    for v in sorted(found, key=lambda v: -v.rps):
        lines.append(
            f"{v.label:{width}}  {v.rps:8.0f}  {v.percentile(50) * 1e3:7.2f}  "
            f"{v.percentile(90) * 1e3:7.2f}  {v.percentile(99) * 1e3:7.2f}  "
            f"{_ratio(v.rps, base.rps):>16}  {_ratio(v.rps, sync.rps):>12}  "
            f"{v.wrong + v.failed:4d}"
        )
    lines.append(
        "req/s ratios: higher is faster; bad = wrong answers + failed requests (must be 0)"
    )
    return "\n".join(lines)


def document(found: list[Variant], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "machine": machine(),
        "versions": library_versions(VERSIONS),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",) and not callable(v)},
        "variants": [
            {
                **v.record(),
                "slices": [{"round": r, "requests": n, "elapsed_s": s} for r, n, s in v.slices],
            }
            for v in found
        ],
    }


# --- command line -----------------------------------------------------------------


def positive_number(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    return parse


def name_list(valid: list[str], kind: str) -> Any:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in valid]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {', '.join(map(repr, unknown)) or '(none given)'}; "
                f"the {kind}s here are: {', '.join(valid)}"
            )
        return names

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    installed = loopshim.available_backends()
    parser.add_argument(
        "--backends",
        type=name_list(installed, "backend"),
        default=installed,
        help="comma-separated (default: every installed one)",
    )
    parser.add_argument(
        "--scopes",
        type=name_list(list(SCOPES), "scope"),
        help="comma-separated (default: all; process with --smoke)",
    )
    parser.add_argument(
        "--duration",
        type=positive_number(float),
        help="seconds of load per variant, over the rounds (default 12; 1 with --smoke)",
    )
    parser.add_argument("--rounds", type=positive_number(int), help="default 4; 1 with --smoke")
    parser.add_argument(
        "--concurrency", type=positive_number(int), default=8, help="connections (default 8)"
    )
    parser.add_argument(
        "--workers", type=positive_number(int), default=1, help="gunicorn workers (default 1)"
    )
    parser.add_argument(
        "--threads", type=positive_number(int), default=8, help="threads per worker (default 8)"
    )
    parser.add_argument("--smoke", action="store_true", help="a short run, for tests")
    parser.add_argument("--json", metavar="FILE", type=Path, help="write the figures to FILE")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.scopes = args.scopes or (["process"] if smoke else list(SCOPES))
    args.duration = args.duration or (1.0 if smoke else 12.0)
    args.rounds = args.rounds or (1 if smoke else 4)
    args.warmup = 0.2 if smoke else 1.0
    if args.concurrency > 256:
        parser.error("--concurrency is at most 256: the load is bounded")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: the directory {args.json.parent} does not exist")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    found = variants(args.backends, args.scopes)
    print(
        f"{describe_machine()}; "
        f"{', '.join(f'{k} {v}' for k, v in library_versions(VERSIONS).items())}\n"
        f"gunicorn gthread, {args.workers} worker(s) x {args.threads} threads; "
        f"{args.concurrency} connections; {args.duration:g} s per variant in {args.rounds} "
        "round(s)",
        flush=True,
    )
    problems: list[str] = []
    with servers([v.key for v in found], args.workers, args.threads, problems) as started:
        measure(found, {key: s.port for key, s in started.items()}, args)
    print(report(found))
    problems += [f"{v.label}: {problem}" for v in found for problem in v.problems]
    print("\n".join(problems), file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(document(found, args), indent=2) + "\n")
        print(f"wrote {args.json}")
    bad = problems or any(v.wrong or v.failed or not v.requests for v in found)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
