"""Real servers, one worker each, loaded by wrk: Flask through loopshim's ASGI bridge
(``loopshim.asgi.to_asgi``) against Quart on the same servers (uvicorn, hypercorn), Flask
+ loopshim on gunicorn (gevent and gthread workers) and Flask's default (gthread).

    python benchmarks/asgi.py                   # every variant and workload, ~10 minutes
    python benchmarks/asgi.py --smoke           # a second per run (a test runs this)
    python benchmarks/asgi.py --duration 8 --rounds 4 --json asgi.json

Workloads (the views are in ``benchmarks/asgi_apps.py``):

- ``fanout-100`` / ``fanout-400``: an async view awaiting three concurrent 10 ms sleeps,
  at 100 and 400 connections;
- ``trivial``: an async view that returns at once, 100 connections;
- ``blocking``: a sync view doing 10 ms of blocking work, 100 connections; the bridge
  runs it in its worker threads (``--threads``), gunicorn gthread with as many threads.

uvicorn runs with uvloop and httptools (its ``standard`` set-up), and again with
asyncio's own loop (``--loop asyncio``); hypercorn with its uvloop worker.

All servers start at once, each on a free port of 127.0.0.1; then, round after round,
every workload visits every variant in a fresh random order (interleaved, so that a busy
machine affects all alike). wrk (Debian's ``wrk``) keeps the connections busy; its own
CPU use is reported, to show it is not the bottleneck. Servers are stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from server import ServerProcess  # benchmarks/server.py, beside this script

from loopshim._info import describe_machine, library_versions, machine

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 30.0
VERSIONS = ("loopshim", "flask", "quart", "uvicorn", "hypercorn", "gunicorn", "gevent", "uvloop")


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    #: The server's command line, for a port and the number of threads.
    argv: tuple[str, ...]
    #: Which workloads it takes part in.
    workloads: tuple[str, ...]


@dataclass(frozen=True)
class Workload:
    key: str
    path: str
    connections: int


WORKLOADS = {
    w.key: w
    for w in (
        Workload("fanout-100", "/fanout", 100),
        Workload("fanout-400", "/fanout", 400),
        Workload("trivial", "/trivial", 100),
        Workload("blocking", "/blocking", 100),
    )
}
ASYNC = ("fanout-100", "fanout-400", "trivial")
#: Every server's listen backlog (``--backlog``), more than any workload's connections.
#: hypercorn's default is 100: when wrk opened 400 connections at once, the kernel
#: dropped the handshakes beyond the queue (TcpExtListenOverflows counted exactly those
#: connections), those clients retried a second later, and their first requests, sent
#: meanwhile, waited that long; multiplied by wrk's latency correction, that second was
#: hypercorn's p99 in some runs, for Quart and the bridge alike.
BACKLOG = "2048"
ALL = (*ASYNC, "blocking")


def variants() -> list[Variant]:
    py = sys.executable
    uvicorn: tuple[str, ...] = (py, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}")
    uvicorn += ("--backlog", BACKLOG, "--no-access-log", "--log-level", "warning")
    uvicorn += ("--http", "httptools")
    uvicorn_asyncio = (*uvicorn, "--loop", "asyncio")
    uvicorn += ("--loop", "uvloop")
    hypercorn: tuple[str, ...] = (py, "-m", "hypercorn", "--bind", "127.0.0.1:{port}")
    hypercorn += ("--backlog", BACKLOG, "--worker-class", "uvloop")
    gunicorn: tuple[str, ...] = (py, "-m", "gunicorn", "--bind", "127.0.0.1:{port}")
    gunicorn += ("--workers", "1", "--backlog", BACKLOG, "--log-level", "warning")
    gunicorn += ("--chdir", str(HERE))
    gthread = (*gunicorn, "--worker-class", "gthread", "--threads", "{threads}")
    gevent = (*gunicorn, "--worker-class", "gevent", "--worker-connections", "1000")
    return [
        Variant("quart-uvicorn", "Quart, uvicorn", (*uvicorn, "asgi_quart:app"), ALL),
        Variant("bridge-uvicorn", "Flask bridge, uvicorn", (*uvicorn, "asgi_apps:bridge_app"), ALL),
        Variant(
            "quart-uvicorn-asyncio",
            "Quart, uvicorn --loop asyncio",
            (*uvicorn_asyncio, "asgi_quart:app"),
            ALL,
        ),
        Variant(
            "bridge-uvicorn-asyncio",
            "Flask bridge, uvicorn --loop asyncio",
            (*uvicorn_asyncio, "asgi_apps:bridge_app"),
            ALL,
        ),
        Variant("quart-hypercorn", "Quart, hypercorn", (*hypercorn, "asgi_quart:app"), ALL),
        Variant(
            "bridge-hypercorn", "Flask bridge, hypercorn", (*hypercorn, "asgi_apps:bridge_app"), ALL
        ),
        Variant(
            "loopshim-gevent",
            "Flask + loopshim uvloop process, gunicorn gevent",
            (*gevent, "asgi_apps:create_app('loopshim')"),
            ASYNC,
        ),
        Variant(
            "loopshim-gthread",
            "Flask + loopshim uvloop process, gunicorn gthread",
            (*gthread, "asgi_apps:create_app('loopshim')"),
            ASYNC,
        ),
        Variant(
            "default-gthread",
            "Flask's default, gunicorn gthread",
            (*gthread, "asgi_apps:create_app('default')"),
            ALL,
        ),
    ]


@dataclass
class Result:
    #: Server CPU time (user + system, its processes) per request, in µs.
    cpu_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    errors: int = 0
    wrk_cpu: list[float] = field(default_factory=list)
    #: Connection handshakes the kernel dropped, the server's accept queue being full.
    overflows: int = 0

    def median(self, values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2] if ordered else float("nan")


# --- servers -------------------------------------------------------------------------


class Server(ServerProcess):
    def __init__(self, variant: Variant, threads: int) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.variant = variant
        self.name = variant.key
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        argv = [a.format(port=self.port, threads=threads) for a in variant.argv]
        env = {"BENCH_THREADS": str(threads), "PYTHONPATH": str(HERE)}
        self.process = subprocess.Popen(
            argv, cwd=HERE, stdout=self.log, stderr=self.log, env={**os.environ, **env}
        )

    def wait_ready(self, deadline: float) -> None:
        url = f"http://127.0.0.1:{self.port}/trivial"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.variant.key} exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.read() == b"ok":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.variant.key} did not answer:\n{self.output()}")
            time.sleep(0.1)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process *pid* and its descendants, from /proc."""
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


@contextlib.contextmanager
def servers(found: list[Variant], threads: int, problems: list[str]) -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    try:
        for variant in found:
            started[variant.key] = Server(variant, threads)
        deadline = time.monotonic() + START_TIMEOUT
        for server in started.values():
            server.wait_ready(deadline)
        yield started
    finally:
        for server in started.values():
            problem = server.stop()
            if problem:
                problems.append(problem)


# --- wrk -----------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


#: How long each wrk run holds its connections open before the first request (not
#: counted in its duration). uvloop (libuv) accepts one connection per loop iteration,
#: so connections opened all at once against a server still busy with the last run's
#: tail are accepted over hundreds of ms; their first requests wait that long, and wrk,
#: which adds samples for every slow request (its coordinated-omission correction), then
#: reports that start-up as the p99 of the whole run — for Quart and the bridge alike.
CONNECT_HOLD_MS = 1000

#: A wrk script holding each connection's first request back by CONNECT_HOLD_MS (wrk
#: asks ``delay()`` before every request; with one thread, the first calls are the
#: connections' first requests, all made before any response can arrive).
_HOLD_SCRIPT = """
local held = 0
function delay()
  if held < {connections} then
    held = held + 1
    return {hold_ms}
  end
  return 0
end
"""


def listen_overflows() -> int:
    """The kernel's count of handshakes dropped for a full accept queue (all sockets;
    nothing else here listens under load), or 0 where /proc/net/netstat is missing."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


def wrk(port: int, workload: Workload, seconds: int) -> dict[str, Any]:
    """One wrk run of *seconds* after the connections are open (see CONNECT_HOLD_MS);
    its requests/s, p50 and p99 (ms), errors, and the share of a CPU wrk used
    meanwhile."""
    url = f"http://127.0.0.1:{port}{workload.path}"
    hold = CONNECT_HOLD_MS / 1000
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_HOLD_SCRIPT.format(connections=workload.connections, hold_ms=CONNECT_HOLD_MS))
    whole = seconds + int(hold)
    command = ["wrk", "-t1", f"-c{workload.connections}", f"-d{whole}s", "--latency"]
    command += ["--timeout", "10s", "-s", script.name, url]
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        dropped = listen_overflows()
        done = subprocess.run(command, capture_output=True, text=True, timeout=whole + 30)
        dropped = listen_overflows() - dropped
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        os.unlink(script.name)
    out = done.stdout
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / seconds
    count = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    if done.returncode != 0 or not (count and p50 and p99):
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{out}\n{done.stderr}")
    # Requests per second of the time spent loading, the hold left out.
    loaded = _ms(count.group(2) + count.group(3)) / 1000 - hold
    rps = int(count.group(1)) / loaded
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return {
        "rps": rps,
        "p50": _ms(p50.group(1)),
        "p99": _ms(p99.group(1)),
        "errors": errors,
        "cpu": cpu,
        "overflows": dropped,
    }


# --- the run -------------------------------------------------------------------------


def measure(
    found: list[Variant], ports: dict[str, int], pids: dict[str, int], args: argparse.Namespace
) -> dict[tuple[str, str], Result]:
    results: dict[tuple[str, str], Result] = {}
    pairs = [(w, v) for w in args.workloads for v in found if w in v.workloads]
    for workload, variant in pairs:  # warm-up, not kept
        wrk(ports[variant.key], WORKLOADS[workload], args.warmup)
    for round_ in range(args.rounds):
        for workload in args.workloads:
            runs = [v for v in found if workload in v.workloads]
            for variant in random.sample(runs, len(runs)):
                before = cpu_seconds(pids[variant.key])
                got = wrk(ports[variant.key], WORKLOADS[workload], args.duration)
                used = cpu_seconds(pids[variant.key]) - before
                result = results.setdefault((workload, variant.key), Result())
                requests = got["rps"] * args.duration
                result.cpu_us.append(used / requests * 1e6 if requests else float("nan"))
                result.rps.append(got["rps"])
                result.p50.append(got["p50"])
                result.p99.append(got["p99"])
                result.errors += got["errors"]
                result.wrk_cpu.append(got["cpu"])
                result.overflows += got["overflows"]
                dropped = f"  {got['overflows']} handshakes dropped" if got["overflows"] else ""
                print(
                    f"round {round_ + 1}/{args.rounds} {workload:10} {variant.key:17} "
                    f"{got['rps']:8.0f} req/s  p99 {got['p99']:7.1f} ms{dropped}",
                    flush=True,
                )
    return results


#: The peer each row is compared with: Quart on the same server; for the blocking sync
#: view, Flask's sync view under gunicorn gthread.
def peer(workload: str, variant: str) -> str:
    if workload == "blocking":
        return "default-gthread"
    if variant.endswith("hypercorn"):
        return "quart-hypercorn"
    if variant.endswith("uvicorn-asyncio"):
        return "quart-uvicorn-asyncio"
    return "quart-uvicorn"


def report(found: list[Variant], results: dict[tuple[str, str], Result], args: Any) -> str:
    labels = {v.key: v.label for v in found}
    width = max(len(label) for label in labels.values())
    lines = []
    for workload in args.workloads:
        w = WORKLOADS[workload]
        lines.append(f"\n{workload}: GET {w.path}, {w.connections} connections")
        lines.append(
            f"  {'variant':{width}}  {'req/s':>7}  {'p50 ms':>7}  {'p99 ms':>7}  "
            f"{'vs peer':>8}  {'p99 vs peer':>11}  {'CPU µs/req':>10}  errors"
        )
        rows = [(key, r) for (wk, key), r in results.items() if wk == workload]
        rows.sort(key=lambda row: -row[1].median(row[1].rps))
        for key, r in rows:
            base = results.get((workload, peer(workload, key)))
            rps, p99 = r.median(r.rps), r.median(r.p99)
            ratio = f"{rps / base.median(base.rps):.2f}x" if base else "-"
            p99_ratio = f"{p99 / base.median(base.p99):.2f}x" if base else "-"
            lines.append(
                f"  {labels[key]:{width}}  {rps:7.0f}  {r.median(r.p50):7.1f}  {p99:7.1f}  "
                f"{ratio:>8}  {p99_ratio:>11}  {r.median(r.cpu_us):10.0f}  {r.errors}"
            )
    cpu = max((c for r in results.values() for c in r.wrk_cpu), default=0.0)
    overflows = sum(r.overflows for r in results.values())
    lines.append(
        f"\nmedians of {args.rounds} round(s) of {args.duration} s; peer = Quart on the same "
        f"server (for 'blocking': Flask's sync view, gunicorn gthread, {args.threads} threads);"
        f"\nwrk used at most {cpu:.0%} of one CPU in any run; CPU µs/req: the server's "
        "processes' CPU time per request"
    )
    if overflows:
        lines.append(
            f"the kernel dropped {overflows} connection handshakes (full accept queues): "
            "those clients' first requests waited a second or more, which inflates p99"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=int, help="whole seconds per run (default 5; 1 with --smoke)"
    )
    parser.add_argument("--rounds", type=int, help="default 3; 1 with --smoke")
    parser.add_argument("--threads", type=int, default=32, help="worker threads (default 32)")
    parser.add_argument(
        "--workloads",
        type=lambda text: [w for w in text.split(",") if w],
        default=list(WORKLOADS),
        help=f"comma-separated, of {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--variants", type=lambda text: [v for v in text.split(",") if v])
    parser.add_argument("--smoke", action="store_true", help="a short run, for tests")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures to FILE")
    args = parser.parse_args(argv)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; the workloads are {', '.join(WORKLOADS)}")
    keys = [v.key for v in variants()]
    if args.variants and any(v not in keys for v in args.variants):
        parser.error(f"unknown variant in {args.variants}; the variants are {', '.join(keys)}")
    args.duration = args.duration or (1 if args.smoke else 5)
    args.rounds = args.rounds or (1 if args.smoke else 3)
    args.warmup = 1
    if args.duration <= 0 or args.rounds < 1 or args.threads < 1:
        parser.error("--duration, --rounds and --threads must be positive")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian package: wrk)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    found = [v for v in variants() if not args.variants or v.key in args.variants]
    found = [v for v in found if any(w in v.workloads for w in args.workloads)]
    print(
        f"{describe_machine()}; "
        f"{', '.join(f'{k} {v}' for k, v in library_versions(VERSIONS).items())}\n"
        f"one worker per server; {args.threads} threads for sync code; wrk, one thread",
        flush=True,
    )
    problems: list[str] = []
    with servers(found, args.threads, problems) as started:
        ports = {key: s.port for key, s in started.items()}
        pids = {key: s.process.pid for key, s in started.items()}
        results = measure(found, ports, pids, args)
    print(report(found, results, args))
    bad = [f"{w} {v}: {r.errors} errors" for (w, v), r in results.items() if r.errors]
    for problem in problems + bad:
        print(problem, file=sys.stderr)
    if args.json is not None:
        document = {
            "machine": machine(),
            "versions": library_versions(VERSIONS),
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "results": [
                {
                    "workload": w,
                    "variant": v,
                    "peer": peer(w, v),
                    "rps": r.rps,
                    "server_cpu_us_per_request": r.cpu_us,
                    "p50_ms": r.p50,
                    "p99_ms": r.p99,
                    "errors": r.errors,
                    "wrk_cpu": r.wrk_cpu,
                    "handshakes_dropped": r.overflows,
                }
                for (w, v), r in results.items()
            ],
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 1 if problems or bad else 0


if __name__ == "__main__":
    sys.exit(main())
