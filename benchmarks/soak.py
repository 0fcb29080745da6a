"""Soak: many calls on one runner, then close; report memory, threads and descriptors.

    python benchmarks/soak.py                         # 100,000 calls, every backend x scope
    python benchmarks/soak.py --calls 20000 --backends asyncio --scopes process --json

For each backend and scope it makes a runner, warms it up, records resident memory, makes
the calls (each awaits a checkpoint and returns its argument, checked), records memory
again, closes the runner and counts threads and open file descriptors. It exits 1 if
memory grew by 5 MB or more, or if a thread or descriptor is left behind after close().
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
from typing import Any

import anyio

import loopshim
from loopshim._options import SCOPES

LIMIT_BYTES = 5 * 1024 * 1024
WARMUP = 2_000


def rss_bytes() -> int:
    """Resident memory now (Linux: /proc; elsewhere the peak, which is an upper bound)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


async def echo(i: int) -> int:
    await anyio.sleep(0)
    return i


def soak(backend: str, scope: str, calls: int) -> dict[str, Any]:
    # A first runner pays the library's once-per-process set-up (libuv opens two
    # descriptors it keeps for good), which close() cannot and should not undo.
    with loopshim.get_runner(backend, scope=scope, cached=False) as first:
        first.run(echo, 0)
    gc.collect()
    threads_before, fds_before = threading.active_count(), open_fds()
    runner = loopshim.get_runner(backend, scope=scope, cached=False)
    for i in range(WARMUP):
        runner.run(echo, i)
    gc.collect()
    rss_before = rss_bytes()
    wrong = sum(runner.run(echo, i) != i for i in range(calls))
    gc.collect()
    rss_after = rss_bytes()
    runner.close()
    gc.collect()
    return {
        "backend": backend,
        "scope": scope,
        "calls": calls,
        "wrong_results": wrong,
        "rss_growth_bytes": rss_after - rss_before,
        "threads_left": threading.active_count() - threads_before,
        "fds_left": open_fds() - fds_before,
    }


def passed(result: dict[str, Any]) -> bool:
    return (
        result["wrong_results"] == 0
        and result["rss_growth_bytes"] < LIMIT_BYTES
        and result["threads_left"] <= 0
        and result["fds_left"] <= 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--backends", default=",".join(loopshim.available_backends()))
    parser.add_argument("--scopes", default=",".join(SCOPES))
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"--calls must be 1 or more, got {args.calls}")
    ok = True
    for backend in args.backends.split(","):
        for scope in args.scopes.split(","):
            result = soak(backend, scope, args.calls)
            fine = passed(result)
            ok = ok and fine
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                print(
                    f"{backend:8} {scope:8} {result['calls']:>7} calls  "
                    f"RSS {result['rss_growth_bytes'] / 1024:+8.0f} KiB  "
                    f"threads left {result['threads_left']}  fds left {result['fds_left']}  "
                    f"{'ok' if fine else 'FAIL'}",
                    flush=True,
                )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
