"""A database benchmark: one ``SELECT 1`` per request, an async view on loopshim through
an asyncpg pool against a sync view through ``psycopg_pool.ConnectionPool``, in one run,
measured twice — through Flask's test client in this process, and served for real by
gunicorn (gthread workers) on 127.0.0.1.

    python benchmarks/db.py                            # starts its own PostgreSQL
    python benchmarks/db.py --dsn postgresql://user@127.0.0.1:5432/db
    python benchmarks/db.py --smoke                    # a second or so per variant

The variants are the sync view and loopshim's backends x scopes (default: asyncio and
uvloop, thread and process scope); the app is ``benchmarks/db_app.py``. Without
``--dsn`` a throw-away PostgreSQL server is started as the tests start theirs
(``tests/servers.py``: initdb into a temporary directory, a free port on 127.0.0.1) and
stopped at the end. Both parts visit the variants in rounds, in a fresh random order each
round; every response is checked. The figures to read are the ratios to the sync view:
per request, how much more (> 1) or less (< 1) an async view costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

import db_app  # noqa: E402
import server  # noqa: E402 - the gunicorn servers and the load generator
from server import Variant, name_list, positive_number  # noqa: E402

from loopshim._info import describe_machine, library_versions, machine  # noqa: E402

SYNC = "sync"
BACKENDS = ["asyncio", "uvloop"]  # asyncpg needs an asyncio loop
SCOPES = ["thread", "process", "call"]
VERSIONS = ("loopshim", "flask", "gunicorn", "asyncpg", "psycopg", "psycopg-pool", "uvloop")
#: Seconds the in-process part may take beyond its planned duration before it is abandoned.
IN_PROCESS_SLACK = 120.0


def variants(backends: list[str], scopes: list[str]) -> list[Variant]:
    found = [Variant(SYNC, "sync view, psycopg_pool.ConnectionPool")]
    for backend in backends:
        for scope in scopes:
            label = f"async view, asyncpg pool, loopshim {backend} {scope}"
            found.append(Variant(f"loopshim:{backend}:{scope}", label))
    return found


# --- in process: Flask's test client ----------------------------------------------


def _client_requests(variant: Variant, client: Any, seconds: float, round_: int) -> None:
    """Requests through *client* for *seconds*, each timed and checked."""
    deadline = time.perf_counter() + seconds
    before = variant.requests
    started = time.perf_counter()
    n = 0
    while time.perf_counter() < deadline:
        request_id = f"{round_}-{n}"
        n += 1
        began = time.perf_counter()
        response = client.get(f"/?id={request_id}")
        variant.latencies.append(time.perf_counter() - began)
        body = response.get_data()
        if response.status_code != 200 or body != request_id.encode():
            variant.wrong += 1
            variant.note(f"id {request_id}: {response.status_code} {body[:100]!r}")
    if round_ >= 0:
        elapsed = time.perf_counter() - started
        variant.slices.append((round_, variant.requests - before, elapsed))
    else:  # warm-up: forget it
        del variant.latencies[before:]


def measure_in_process(found: list[Variant], dsn: str, args: argparse.Namespace) -> None:
    """Every variant's app in this process, called through its test client from one
    worker thread (as a WSGI server calls), in interleaved rounds."""
    failure: list[BaseException] = []

    def run() -> None:
        apps = {}
        try:
            for variant in found:
                apps[variant.key] = db_app.create_app(variant.key, dsn, pool_size=1)
            clients = {key: app.test_client() for key, app in apps.items()}
            for variant in found:
                _client_requests(variant, clients[variant.key], args.warmup, -1)
            for round_ in range(args.rounds):
                for variant in random.sample(found, len(found)):
                    seconds = args.client_duration / args.rounds
                    _client_requests(variant, clients[variant.key], seconds, round_)
        except BaseException as exc:
            failure.append(exc)
        finally:
            for app in apps.values():
                db_app.close_app(app)

    thread = threading.Thread(target=run, name="db-bench-caller")
    thread.start()
    thread.join(args.client_duration + args.warmup * len(found) + IN_PROCESS_SLACK)
    if thread.is_alive():
        raise RuntimeError("the in-process part did not finish in time")
    if failure:
        raise failure[0]


# --- served by gunicorn -----------------------------------------------------------


def measure_served(found: list[Variant], dsn: str, args: argparse.Namespace) -> list[str]:
    """Every variant served by its own gunicorn, loaded in interleaved rounds; the
    problems met starting or stopping the servers."""
    problems: list[str] = []
    os.environ[db_app.DSN_ENV] = dsn  # the servers inherit it
    os.environ[db_app.POOL_ENV] = str(args.threads)  # a connection for every thread
    keys = [v.key for v in found]
    with server.servers(keys, args.workers, args.threads, problems, "db_app:create_app") as up:
        server.measure(found, {key: s.port for key, s in up.items()}, args)
    return problems


# --- the report -------------------------------------------------------------------


def _median(variant: Variant) -> float:
    return variant.percentile(50)


def ratios(found: list[Variant]) -> dict[str, dict[str, float]]:
    """Per variant: its cost per request relative to the sync view's (median time, and
    the inverse of requests per second)."""
    sync = next(v for v in found if v.key == SYNC)
    return {
        v.key: {
            "median_vs_sync": _median(v) / _median(sync),
            "cost_vs_sync": sync.rps / v.rps if v.rps else float("nan"),
        }
        for v in found
    }


def report(title: str, found: list[Variant]) -> str:
    width = max(len(v.label) for v in found)
    ratio = ratios(found)
    lines = [
        title,
        f"{'variant':{width}}  {'req/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  "
        f"{'p50 vs sync':>11}  {'cost vs sync':>12}  {'bad':>4}",
    ]
    for v in sorted(found, key=lambda v: _median(v)):
        lines.append(
            f"{v.label:{width}}  {v.rps:8.0f}  {_median(v) * 1e3:7.3f}  "
            f"{v.percentile(99) * 1e3:7.3f}  {ratio[v.key]['median_vs_sync']:10.2f}x  "
            f"{ratio[v.key]['cost_vs_sync']:11.2f}x  {v.wrong + v.failed:4d}"
        )
    lines.append(
        "vs sync: > 1 is slower than the sync view (p50: median time per request; cost: "
        "the sync view's req/s over the variant's)"
    )
    return "\n".join(lines)


def _part(found: list[Variant]) -> list[dict[str, Any]]:
    ratio = ratios(found)
    return [{**v.record(), **ratio[v.key]} for v in found]


# --- command line -----------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a PostgreSQL DSN (default: start a server here)")
    parser.add_argument(
        "--backends",
        type=name_list(BACKENDS, "backend"),
        help="comma-separated (default: asyncio,uvloop, those installed)",
    )
    parser.add_argument("--scopes", type=name_list(SCOPES, "scope"), default=["thread", "process"])
    parser.add_argument(
        "--duration",
        type=positive_number(float),
        help="gunicorn: seconds of load per variant, over the rounds (default 8; 0.5 --smoke)",
    )
    parser.add_argument(
        "--client-duration",
        type=positive_number(float),
        help="test client: seconds per variant, over the rounds (default 3; 0.3 --smoke)",
    )
    parser.add_argument("--rounds", type=positive_number(int), help="default 4; 1 with --smoke")
    parser.add_argument("--concurrency", type=positive_number(int), default=8)
    parser.add_argument("--workers", type=positive_number(int), default=1, help="gunicorn workers")
    parser.add_argument("--threads", type=positive_number(int), default=8, help="per worker")
    parser.add_argument("--smoke", action="store_true", help="a short run, for tests")
    parser.add_argument("--json", metavar="FILE", type=Path, help="write the figures to FILE")
    args = parser.parse_args(argv)
    import loopshim

    installed = [b for b in BACKENDS if b in loopshim.available_backends()]
    args.backends = args.backends or installed
    smoke = args.smoke
    args.duration = args.duration or (0.5 if smoke else 8.0)
    args.client_duration = args.client_duration or (0.3 if smoke else 3.0)
    args.rounds = args.rounds or (1 if smoke else 4)
    args.warmup = 0.1 if smoke else 0.5
    if args.concurrency > 256:
        parser.error("--concurrency is at most 256: the load is bounded")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: the directory {args.json.parent} does not exist")
    return args


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[str]:
    """*dsn*, or a PostgreSQL server of our own for the run."""
    if dsn:
        yield dsn
        return
    from servers import postgres

    with postgres() as started:
        yield started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"{describe_machine()}; "
        f"{', '.join(f'{k} {v}' for k, v in library_versions(VERSIONS).items())}\n"
        f"one SELECT 1 per request; test client: {args.client_duration:g} s per variant; "
        f"gunicorn gthread, {args.workers} worker(s) x {args.threads} threads, "
        f"{args.concurrency} connections, {args.duration:g} s per variant; "
        f"{args.rounds} round(s)",
        flush=True,
    )
    in_process = variants(args.backends, args.scopes)
    served = variants(args.backends, args.scopes)
    with database(args.dsn) as dsn:
        measure_in_process(in_process, dsn, args)
        print(report("Flask's test client, in process:", in_process), flush=True)
        problems = measure_served(served, dsn, args)
        print(report("\ngunicorn on 127.0.0.1:", served))
    problems += [f"{v.label}: {p}" for v in in_process + served for p in v.problems]
    if problems:
        print("\n".join(problems), file=sys.stderr)
    if args.json is not None:
        document = {
            "machine": machine(),
            "versions": library_versions(VERSIONS),
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "dsn")},
            "test_client": _part(in_process),
            "gunicorn": _part(served),
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    bad = problems or any(v.wrong or v.failed or not v.requests for v in in_process + served)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
