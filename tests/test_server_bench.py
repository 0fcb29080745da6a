"""benchmarks/server.py in its smoke mode: gunicorn on 127.0.0.1 for each variant, a
short bounded load, and every response checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import loopshim

pytest.importorskip("flask")
pytest.importorskip("gunicorn")

SERVER = Path(__file__).resolve().parent.parent / "benchmarks" / "server.py"


def test_server_benchmark_smoke_run(tmp_path: Path) -> None:
    report = tmp_path / "server.json"
    done = subprocess.run(
        [sys.executable, str(SERVER), "--smoke", "--concurrency", "4", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(report.read_text())
    variants = {v["key"]: v for v in document["variants"]}
    expected = ["sync", "default"] + [
        f"loopshim:{b}:process" for b in loopshim.available_backends()
    ]
    assert sorted(variants) == sorted(expected)
    for variant in variants.values():
        assert variant["requests"] > 0, variant
        assert variant["wrong"] == variant["failed"] == 0, variant
        assert variant["problems"] == []
        latency = variant["latency_s"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert variant["requests_per_s"] == pytest.approx(
            variant["requests"] / variant["elapsed_s"]
        )
    table = done.stdout.splitlines()
    assert any(line.split()[:3] == ["variant", "req/s", "p50"] for line in table)
    for variant in variants.values():
        assert any(line.startswith(variant["label"]) for line in table), variant["label"]


def test_server_benchmark_rejects_an_unknown_backend() -> None:
    done = subprocess.run(
        [sys.executable, str(SERVER), "--backends", "nosuchloop"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown backend 'nosuchloop'; the backends here are: " in done.stderr
