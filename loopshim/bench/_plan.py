"""Planning a run: the contenders and the cells to measure, with those that cannot run
marked (and the ``pip install`` line that would make them run)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import loopshim

from .._info import importable, pip_install_line
from ._async_peers import ASYNC_PEERS
from ._contenders import Contender, cross_loop_contender, loopshim_contender
from ._hosts import HOSTS
from ._internals import backend_library
from ._peers import BASELINE, PEERS
from ._results import BenchResult, BenchSettings, Cell
from ._workloads import WORKLOADS, Workload

__all__ = ["contenders_for", "needs", "plan", "requirements"]


def contenders_for(backends: Sequence[str], scopes: Sequence[str], peers: bool) -> list[Contender]:
    """loopshim's runners for *backends* x *scopes* — as they are, with
    ``reentrant=True``, and awaited from each host loop (process scope) — then the
    peers (or, when *peers* is false, only what the other rows are compared with:
    Flask's default and awaiting directly)."""
    found = [loopshim_contender(b, s) for b in backends for s in scopes]
    found += [loopshim_contender(b, s, reentrant=True) for b in backends for s in scopes]
    if "process" in scopes:
        found += [cross_loop_contender(b, host) for b in backends for host in HOSTS]
    found.extend(PEERS if peers else PEERS[:1])
    found.extend(ASYNC_PEERS if peers else ASYNC_PEERS[:1])
    return found


def needs(modules: Sequence[str]) -> str:
    """``needs anyio, trio: pip install "loopshim[bench,trio]"``."""
    return f"needs {', '.join(modules)}: {pip_install_line(modules)}"


def requirements(workload: Workload, contender: Contender) -> tuple[str, ...]:
    """What a contender needs for a workload: nothing of its own when no async code
    runs (Flask's default serves a sync view without asgiref)."""
    return contender.requires if workload.uses_async else ()


def _takes_part(workload: Workload, contender: Contender) -> bool:
    """A contender that names its workloads takes part in those; the others in every
    workload whose calls come from sync code, except that where no async code runs, only
    loopshim's rows and the plain app take part."""
    if contender.workloads is not None:
        return workload.name in contender.workloads
    if not workload.from_sync:
        return False
    return workload.uses_async or contender.kind == "loopshim" or contender.key == BASELINE


def _backend_missing(backend: str) -> str:
    library = backend_library(backend)
    return needs([library]) if library is not None else "not importable here"


def _missing(modules: Sequence[str]) -> list[str]:
    return [m for m in modules if not importable(m)]


def plan(settings: BenchSettings) -> BenchResult:
    """The cells to measure, with those that cannot run already marked."""
    contenders = contenders_for(settings.backends, settings.scopes, settings.peers)
    installed = set(loopshim.available_backends())
    cells: list[Cell] = []
    skipped: dict[str, str] = {}
    for name in settings.workloads:
        workload = WORKLOADS[name]
        missing = _missing(workload.requires)
        if missing:
            skipped[name] = needs(missing)
            continue
        for contender in contenders:
            if not _takes_part(workload, contender):
                continue
            cell = Cell(workload, contender)
            missing = _missing(requirements(workload, contender))
            if contender.backend is not None and contender.backend not in installed:
                cell.fail("not installed", _backend_missing(contender.backend))
            elif missing:
                cell.fail("not installed", needs(missing))
            cells.append(cell)
    return BenchResult(settings, cells, skipped, started=time.time())
