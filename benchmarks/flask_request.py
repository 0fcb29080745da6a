"""One Flask request through the test client: a sync view, an async view on Flask's
default (asgiref), and an async view on every loopshim backend x scope, interleaved in
one run; then a view that gathers 100 concurrent 10 ms sleeps, on every backend.

Also timed: a sync view that makes one bare round trip to another thread (a lock
handed there and back), the least any call to a loop in another thread — ``process``
scope — can cost on this machine.

    python benchmarks/flask_request.py          # about 40 s
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from flask import Flask

sys.path.insert(0, str(Path(__file__).parent))
from overhead import BACKENDS, SCOPES, Candidate, Target, measure, versions

import loopshim
from loopshim.flask import LoopShim


class RoundTrip:
    """A thread that answers at once: a bare round trip to another thread and back."""

    def __init__(self) -> None:
        self._there, self._back = threading.Lock(), threading.Lock()
        self._there.acquire()
        self._back.acquire()
        threading.Thread(target=self._answer, daemon=True).start()

    def _answer(self) -> None:
        while True:
            self._there.acquire()
            self._back.release()

    def __call__(self) -> None:
        self._there.release()
        self._back.acquire()


def make_app(backend: str | None, scope: str = "process") -> Flask:
    app = Flask(__name__)
    if backend is not None:
        app.config.update(LOOPSHIM_BACKEND=backend, LOOPSHIM_SCOPE=scope)
        LoopShim(app)

    @app.route("/sync")
    def sync_view() -> str:
        return "ok"

    if backend is None:
        round_trip = RoundTrip()

        @app.route("/round-trip")
        def round_trip_view() -> str:
            round_trip()
            return "ok"

    @app.route("/async")
    async def async_view() -> str:
        return "ok"

    @app.route("/fanout")
    async def fanout() -> str:
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(anyio.sleep, 0.01)
        return "ok"

    return app


def _get(app: Flask, path: str) -> Callable[[], object]:
    client = app.test_client()

    def request() -> object:
        response = client.get(path)
        assert response.status_code == 200
        return response

    return request


def request_candidates() -> list[Candidate]:
    default = make_app(None)
    found = [
        Candidate("sync view", _get(default, "/sync")),
        Candidate("async view, Flask default", _get(default, "/async")),
        Candidate("sync view + thread round trip", _get(default, "/round-trip")),
    ]
    for backend in BACKENDS:
        if backend not in loopshim.available_backends():
            continue
        for scope in SCOPES:
            app = make_app(backend, scope)
            found.append(Candidate(f"async view, {backend} {scope}", _get(app, "/async")))
    return found


def check(found: list[Candidate]) -> list[Target]:
    sync = found[0]
    targets = []
    for candidate in found[3:]:
        scope = candidate.label.rsplit(" ", 1)[1]
        limit = {"thread": 1.15, "process": 1.5}.get(scope)
        if limit is None:
            continue
        ratio = candidate.median / sync.median
        targets.append(
            Target(f"{candidate.label} <= {limit}x a sync view", ratio <= limit, f"{ratio:.2f}x")
        )
    return targets


def fanout_times(repeat: int) -> dict[str, float]:
    """Median response time of the 100 x 10 ms fan-out view, per backend."""
    results = {}
    for backend in BACKENDS:
        if backend not in loopshim.available_backends():
            continue
        request = _get(make_app(backend, "thread"), "/fanout")
        request()  # warm-up
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            request()
            times.append(time.perf_counter() - start)
        results[backend] = statistics.median(times)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=float, default=0.15)
    parser.add_argument("--fanout-repeat", type=int, default=30)
    args = parser.parse_args(argv)
    found = request_candidates()
    measure(found, args.rounds, args.batch, main_thread=False)
    sync = found[0]
    print(versions())
    print(f"{'request':34} {'median us':>10} {'p95 us':>10} {'vs sync view':>13}")
    for c in found:
        ratio = c.median / sync.median
        print(f"{c.label:34} {c.median * 1e6:10.1f} {c.p95 * 1e6:10.1f} {ratio:12.2f}x")
    targets = check(found)
    fanout = fanout_times(args.fanout_repeat)
    print()
    for backend, seconds in fanout.items():
        targets.append(
            Target(
                f"{backend}: 100 concurrent 10 ms sleeps answer in <= 20 ms",
                seconds <= 0.020,
                f"{seconds * 1e3:.1f} ms",
            )
        )
    for t in targets:
        print(f"[{'PASS' if t.ok else 'FAIL'}] {t.text}: {t.detail}")
    return 0 if all(t.ok for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
