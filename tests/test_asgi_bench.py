"""benchmarks/asgi.py in its smoke mode: real servers on 127.0.0.1 (Quart and Flask
through the bridge on uvicorn, Flask's default on gunicorn), loaded by wrk for a second
each; every response must be a 200."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

for module in ("flask", "quart", "uvicorn", "httptools", "gunicorn", "greenlet", "anyio"):
    pytest.importorskip(module)
if shutil.which("wrk") is None:
    pytest.skip("wrk is not installed (Debian package: wrk)", allow_module_level=True)

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "asgi.py"


def test_asgi_benchmark_smoke_run(tmp_path: Path) -> None:
    report = tmp_path / "asgi.json"
    variants = "quart-uvicorn,bridge-uvicorn,default-gthread"
    command = [sys.executable, str(BENCH), "--smoke", "--workloads", "trivial,blocking"]
    command += ["--variants", variants, "--threads", "4", "--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(report.read_text())["results"]
    found = {(r["workload"], r["variant"]) for r in results}
    assert found == {
        ("trivial", "quart-uvicorn"),
        ("trivial", "bridge-uvicorn"),
        ("trivial", "default-gthread"),
        ("blocking", "quart-uvicorn"),
        ("blocking", "bridge-uvicorn"),
        ("blocking", "default-gthread"),
    }
    for result in results:
        assert result["errors"] == 0, result
        assert all(rps > 0 for rps in result["rps"]), result
        assert result["handshakes_dropped"] == 0, result
    assert "vs peer" in done.stdout


def test_every_server_queues_more_connections_than_a_workload_opens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listen backlog below a workload's connections makes the kernel drop handshakes
    when wrk opens them all at once; those clients retry a second later, and that second
    becomes the run's p99 (hypercorn's default backlog is 100)."""
    monkeypatch.syspath_prepend(str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("loopshim_asgi_bench", BENCH)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look it up
    spec.loader.exec_module(bench)
    most = max(w.connections for w in bench.WORKLOADS.values())
    for variant in bench.variants():
        argv = list(variant.argv)
        assert "--backlog" in argv, variant.key
        assert int(argv[argv.index("--backlog") + 1]) > most, variant.key
