"""Per-call overhead of a no-op coroutine: every loopshim backend x scope side by side
with what users have today (asgiref's async_to_sync, Flask's default; asyncio.run;
uvloop.run; trio.run; anyio.run; anyio's blocking portal), in one interleaved run.

    python benchmarks/overhead.py               # about 30 s, prints a table and the targets
    python benchmarks/overhead.py --rounds 5 --json overhead.json

Calls are made from a worker thread, as a WSGI server makes them (``--main-thread`` to
call from the main thread instead; uvloop re-arms its signal handling on every run in
the main thread, which costs it about 20 us per call there).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import loopshim

BACKENDS = ("asyncio", "uvloop", "trio")
SCOPES = ("thread", "process", "call")


async def noop() -> None:
    return None


@dataclass
class Candidate:
    label: str
    call: Callable[[], object]
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.times, n=20)[-1]


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@contextlib.contextmanager
def candidates() -> Iterator[list[Candidate]]:
    """Every contender that is installed, set up; torn down on exit."""
    found: list[Candidate] = []
    with contextlib.ExitStack() as stack:
        if _installed("asgiref"):
            from asgiref.sync import async_to_sync

            found.append(Candidate("asgiref async_to_sync", async_to_sync(noop)))
        import asyncio

        found.append(Candidate("asyncio.run", lambda: asyncio.run(noop())))
        if _installed("uvloop"):
            import uvloop

            found.append(Candidate("uvloop.run", lambda: uvloop.run(noop())))
        if _installed("trio"):
            import trio

            found.append(Candidate("trio.run", lambda: trio.run(noop)))
        if _installed("anyio"):
            import anyio
            from anyio.from_thread import start_blocking_portal

            found.append(Candidate("anyio.run", lambda: anyio.run(noop)))
            portals = [("asyncio", "asyncio", {}), ("uvloop", "asyncio", {"use_uvloop": True})]
            portals.append(("trio", "trio", {}))
            for label, backend, options in portals:
                if (label == "uvloop" and not _installed("uvloop")) or (
                    label == "trio" and not _installed("trio")
                ):
                    continue
                portal = stack.enter_context(start_blocking_portal(backend, options))
                found.append(Candidate(f"anyio portal {label}", _bind(portal.call, noop)))
        for backend in BACKENDS:
            if backend not in loopshim.available_backends():
                continue
            for scope in SCOPES:
                runner = loopshim.get_runner(backend, scope=scope, cached=False)
                stack.callback(runner.close)
                found.append(Candidate(f"loopshim {backend} {scope}", _bind(runner.run, noop)))
        yield found


def _bind(fn: Callable[..., object], arg: object) -> Callable[[], object]:
    return lambda: fn(arg)


def _batch(candidate: Candidate, seconds: float) -> None:
    call, times, clock = candidate.call, candidate.times, time.perf_counter
    deadline = clock() + seconds
    while True:
        start = clock()
        call()
        end = clock()
        times.append(end - start)
        if end > deadline:
            return


def measure(found: list[Candidate], rounds: int, seconds: float, main_thread: bool) -> None:
    """Interleave: each round gives every candidate one short batch, in a fresh random
    order, so slow phases of a shared machine hit all of them alike."""

    def work() -> None:
        for candidate in found:  # warm-up: imports, first loops, caches
            for _ in range(20):
                candidate.call()
        for _ in range(rounds):
            for candidate in random.sample(found, len(found)):
                _batch(candidate, seconds)

    if main_thread:
        work()
    else:
        worker = threading.Thread(target=work, name="bench-caller")
        worker.start()
        worker.join()


@dataclass
class Target:
    text: str
    ok: bool
    detail: str


def _find(found: list[Candidate], label: str) -> Candidate | None:
    return next((c for c in found if c.label == label), None)


def check_targets(found: list[Candidate]) -> list[Target]:
    """DESIGN.md's per-call targets, as ratios measured in this run."""
    targets: list[Target] = []
    asgiref = _find(found, "asgiref async_to_sync")
    peers = {"asyncio": "asyncio.run", "uvloop": "uvloop.run", "trio": "trio.run"}
    for backend in BACKENDS:
        thread = _find(found, f"loopshim {backend} thread")
        process = _find(found, f"loopshim {backend} process")
        call = _find(found, f"loopshim {backend} call")
        if asgiref is not None and thread is not None:
            need = 20 if backend == "trio" else 30
            ratio = asgiref.median / thread.median
            targets.append(
                Target(
                    f"{backend} thread >= {need}x faster than asgiref",
                    ratio >= need,
                    f"{ratio:.1f}x",
                )
            )
        if asgiref is not None and process is not None:
            ratio = asgiref.median / process.median
            targets.append(
                Target(f"{backend} process >= 5x faster than asgiref", ratio >= 5, f"{ratio:.1f}x")
            )
        portal = _find(found, f"anyio portal {backend}")
        if portal is not None and process is not None:
            ratio = portal.median / process.median
            targets.append(
                Target(f"{backend} process faster than anyio's portal", ratio > 1, f"{ratio:.2f}x")
            )
        peer = _find(found, peers[backend])
        if peer is not None and call is not None:
            ratio = call.median / peer.median
            targets.append(
                Target(
                    f"{backend} call within 10% of {peer.label}",
                    ratio <= 1.10,
                    f"{ratio:.2f} of it",
                )
            )
    return targets


def report(found: list[Candidate], targets: list[Target]) -> str:
    asgiref = _find(found, "asgiref async_to_sync")
    lines = [
        f"{'candidate':28} {'median us':>10} {'p95 us':>10} {'calls/s':>10} {'vs asgiref':>11}",
    ]
    for c in sorted(found, key=lambda c: c.median):
        ratio = f"{asgiref.median / c.median:10.1f}x" if asgiref else "          -"
        lines.append(
            f"{c.label:28} {c.median * 1e6:10.1f} {c.p95 * 1e6:10.1f} {1 / c.median:10.0f} {ratio}"
        )
    lines.append("")
    for t in targets:
        lines.append(f"[{'PASS' if t.ok else 'FAIL'}] {t.text}: {t.detail}")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("loopshim", "asgiref", "anyio", "trio", "uvloop"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument(
        "--batch", type=float, default=0.15, help="seconds per candidate per round (default 0.15)"
    )
    parser.add_argument("--main-thread", action="store_true", help="call from the main thread")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch <= 0:
        parser.error("--rounds must be at least 1 and --batch greater than 0")
    with candidates() as found:
        measure(found, args.rounds, args.batch, args.main_thread)
    targets = check_targets(found)
    print(f"{platform.machine()} {platform.system()}, {versions()}")
    print(report(found, targets))
    if args.json:
        data = {
            "versions": versions(),
            "caller": "main thread" if args.main_thread else "worker thread",
            "results": {
                c.label: {"median_s": c.median, "p95_s": c.p95, "calls": len(c.times)}
                for c in found
            },
            "targets": [t.__dict__ for t in targets],
        }
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    return 0 if all(t.ok for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
