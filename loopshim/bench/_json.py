"""The JSON document of ``loopshim bench --json``: every figure, the settings, the
machine and the library versions. README.md ("Command line") documents the fields."""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from .._info import library_versions, machine
from ._peers import BASELINE
from ._results import LIBRARIES, BenchResult, Cell
from ._targets import Target
from ._workloads import WORKLOADS

__all__ = ["JSON_SCHEMA", "iso_time", "to_json", "write_json"]

JSON_SCHEMA: Final = 1


def iso_time(timestamp: float) -> str:
    """Local time in ISO 8601 with a ``+HH:MM`` offset, which
    :meth:`datetime.datetime.fromisoformat` reads on every supported Python (3.10 does
    not read ``+HHMM``)."""
    utc = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    return utc.astimezone().isoformat(timespec="seconds")


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _cell_json(result: BenchResult, cell: Cell) -> dict[str, Any]:
    measured = cell.measured
    return {
        "workload": cell.workload.name,
        "contender": cell.contender.key,
        "label": cell.label,
        "kind": cell.contender.kind,
        "backend": cell.contender.backend,
        "scope": cell.contender.scope,
        "reentrant": cell.contender.reentrant if cell.contender.kind == "loopshim" else None,
        "pair": list(cell.contender.pair) if cell.contender.pair is not None else None,
        "status": cell.status,
        "detail": cell.detail,
        "calls": cell.calls,
        "elapsed_s": cell.elapsed_s,
        "median_s": cell.median_s if measured else None,
        "p95_s": cell.p95_s if measured else None,
        "calls_per_s": _number(cell.calls_per_s) if measured else None,
        "speedup_vs_flask_default": result.speedup(cell),
        "batches": [
            {"round": r, "calls": calls, "elapsed_ns": wall} for r, calls, wall in cell.batches
        ],
        "times_ns": cell.times_ns,
    }


def to_json(result: BenchResult, targets: list[Target], argv: list[str]) -> dict[str, Any]:
    """The whole run as a JSON-ready dict."""
    settings = asdict(result.settings)
    return {
        "schema": JSON_SCHEMA,
        "command": ["loopshim", *argv],
        "started": iso_time(result.started),
        "wall_s": result.wall_s,
        "machine": machine(),
        "versions": library_versions(LIBRARIES),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "baseline": BASELINE,
        "workloads": {
            name: {
                "description": WORKLOADS[name].description,
                "skipped": result.skipped.get(name),
            }
            for name in result.settings.workloads
        },
        "results": [_cell_json(result, cell) for cell in result.cells],
        "targets": [asdict(t) for t in targets],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write *document* compactly: the per-call times make it large."""
    with path.open("w", encoding="utf-8") as file:
        json.dump(document, file, separators=(",", ":"), ensure_ascii=False)
        file.write("\n")
