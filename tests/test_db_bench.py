"""benchmarks/db.py in its smoke mode, against the session's PostgreSQL: every variant
measured through the test client and through gunicorn, every response checked."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import loopshim

for module in ("flask", "gunicorn", "asyncpg", "psycopg_pool"):
    pytest.importorskip(module)

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "db.py"


def test_db_benchmark_smoke_run(postgres_dsn: str, tmp_path: Path) -> None:
    report = tmp_path / "db.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--dsn", postgres_dsn, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(report.read_text())
    backends = [b for b in ("asyncio", "uvloop") if b in loopshim.available_backends()]
    expected = ["sync"] + [f"loopshim:{b}:{s}" for b in backends for s in ("thread", "process")]
    for part in ("test_client", "gunicorn"):
        variants = {v["key"]: v for v in document[part]}
        assert sorted(variants) == sorted(expected), part
        assert variants["sync"]["median_vs_sync"] == variants["sync"]["cost_vs_sync"] == 1.0
        for variant in variants.values():
            assert variant["requests"] > 0, variant
            assert variant["wrong"] == variant["failed"] == 0, variant
            assert variant["problems"] == []
            for ratio in ("median_vs_sync", "cost_vs_sync"):
                assert 0 < variant[ratio] < math.inf, variant
    table = done.stdout.splitlines()
    assert "Flask's test client, in process:" in table
    assert "gunicorn on 127.0.0.1:" in table
    assert sum(line.split()[:2] == ["variant", "req/s"] for line in table) == 2


def test_db_benchmark_refuses_trio() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--backends", "trio", "--dsn", "postgresql://unused"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown backend 'trio'; the backends here are: asyncio, uvloop" in done.stderr
