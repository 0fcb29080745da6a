"""What ``loopshim info`` reports: the interpreter, the backends and their library
versions, the default backend and scope and why, and what to install for the rest.

The machine and version helpers here are also what ``loopshim bench`` and the scripts in
``benchmarks/`` record with their figures; this module needs nothing from the bench.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import itertools
import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ._core import (
    BUILTIN_BACKENDS,
    ENV_VAR,
    available_backends,
    backend_origin,
    default_backend,
    known_backends,
    load_backend,
)
from ._options import DEFAULT_SCOPE, SCOPES

__all__ = [
    "BackendInfo",
    "backend_infos",
    "describe_machine",
    "extras",
    "format_info",
    "importable",
    "library_versions",
    "machine",
    "pip_install_line",
    "smallest_cover",
]

#: The extra whose libraries ``loopshim bench`` uses, beyond the backends.
BENCH_EXTRA: Final = "bench"
#: Extras for loopshim's own development: never suggested to users.
_DEVELOPMENT_EXTRAS: Final = frozenset({"test"})


# --- the machine and the libraries ------------------------------------------------


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """``{distribution: version}`` for those of *names* that are installed."""
    found: dict[str, str] = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def machine() -> dict[str, Any]:
    """The machine and interpreter, as benchmarks record them."""
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


def describe_machine() -> str:
    """``CPython 3.11.7 on Linux x86_64, 2 CPUs``."""
    m = machine()
    return f"{m['implementation']} {m['python']} on {m['system']} {m['machine']}, {m['cpus']} CPUs"


# --- extras -----------------------------------------------------------------------

_NAME: Final = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER: Final = re.compile(r"""\bextra\s*==\s*["']([^"']+)["']""")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extras() -> dict[str, frozenset[str]]:
    """loopshim's extras for users and the distributions each one brings, read from the
    installed package's metadata (``{}`` when loopshim's metadata is not installed, as
    when it runs from a source tree)."""
    try:
        requirements = importlib.metadata.requires("loopshim") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    found: dict[str, set[str]] = {}
    for requirement in requirements:
        name, extra = _NAME.match(requirement), _EXTRA_MARKER.search(requirement)
        if name is None or extra is None or extra.group(1) in _DEVELOPMENT_EXTRAS:
            continue
        if _normalized(name.group(1)) == "loopshim":  # an extra made of extras ("all")
            continue
        found.setdefault(extra.group(1), set()).add(_normalized(name.group(1)))
    return {extra: frozenset(names) for extra, names in found.items()}


def smallest_cover(missing: Iterable[str], offered: Mapping[str, frozenset[str]]) -> list[str]:
    """The fewest extras of *offered* that together bring every one of *missing* they
    can; between covers of the same size, the one that installs the fewest distributions
    (then the first by name)."""
    wanted = {_normalized(m) for m in missing}
    wanted &= set().union(*offered.values()) if offered else set()
    useful = sorted(extra for extra, names in offered.items() if names & wanted)
    for size in range(len(useful) + 1):
        covers = [c for c in itertools.combinations(useful, size) if wanted <= _union(c, offered)]
        if covers:
            best = min(covers, key=lambda c: (len(_union(c, offered)), c))
            return list(best)
    return useful  # not reached: all of useful covers every wanted name


def _union(chosen: Iterable[str], offered: Mapping[str, frozenset[str]]) -> set[str]:
    return set().union(*(offered[extra] for extra in chosen))


def pip_install_line(
    modules: Iterable[str], offered: Mapping[str, frozenset[str]] | None = None
) -> str:
    """The one ``pip install`` line that provides *modules* (each named as its
    distribution): the smallest set of loopshim's extras that covers them, then any
    module that no extra brings, by name."""
    modules = list(dict.fromkeys(modules))
    offered = extras() if offered is None else offered
    chosen = smallest_cover(modules, offered)
    covered = _union(chosen, offered)
    loose = [m for m in modules if _normalized(m) not in covered]
    parts = ([f'"loopshim[{",".join(chosen)}]"'] if chosen else []) + loose
    return f"pip install {' '.join(parts)}"


def importable(module: str) -> bool:
    """Whether *module* can be found on the import path (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class BackendInfo:
    """One backend as this interpreter sees it."""

    name: str
    #: "installed", "not installed" or "broken".
    status: str
    #: Where it comes from and which library version, or what went wrong.
    detail: str
    #: What to run to make it usable ("" when it is).
    fix: str = ""

    @property
    def usable(self) -> bool:
        """Whether the backend can be used here."""
        return self.status == "installed"


def _version_of(module: str) -> str:
    try:
        return f"{module} {importlib.metadata.version(module)}"
    except importlib.metadata.PackageNotFoundError:
        found = getattr(sys.modules.get(module), "__version__", None)
        return f"{module} {found}" if found else module


def _builtin_info(name: str, available: list[str]) -> BackendInfo:
    builtin = BUILTIN_BACKENDS[name]
    if builtin.requires is None:
        return BackendInfo(name, "installed", f"built in (Python {sys.version.split()[0]})")
    hint = builtin.install_command
    if sys.platform in builtin.unsupported_platforms:
        reason = f"{builtin.requires} does not support {sys.platform}"
        return BackendInfo(name, "not installed", reason)
    if name not in available:
        return BackendInfo(name, "not installed", f"needs {builtin.requires}", hint)
    try:
        load_backend(name)
    except ImportError as exc:
        return BackendInfo(name, "broken", f"fails to import: {exc}", hint)
    return BackendInfo(name, "installed", _version_of(builtin.requires))


def _third_party_info(name: str) -> BackendInfo:
    origin = backend_origin(name)
    try:
        load_backend(name)
    except ImportError as exc:
        return BackendInfo(name, "broken", f"{origin} fails to load: {exc}", "reinstall or fix it")
    return BackendInfo(name, "installed", origin)


def backend_infos() -> list[BackendInfo]:
    """Every backend known here: the built-in ones, then third-party ones."""
    available = available_backends()
    third_party = known_backends()[len(BUILTIN_BACKENDS) :]
    return [_builtin_info(n, available) for n in BUILTIN_BACKENDS] + [
        _third_party_info(n) for n in third_party
    ]


def _selection(
    backend: str | None, scope: str | None, infos: dict[str, BackendInfo]
) -> tuple[list[str], bool]:
    """The lines saying which backend and scope are selected and why; and whether the
    selected backend can be used."""
    if backend is not None:
        name, why = backend, "from --backend"
    else:
        name, source = default_backend()
        why = f"from ${ENV_VAR}" if source != "default" else f"fallback: ${ENV_VAR} is not set"
    info = infos.get(name)
    if info is None:
        problem = f"unknown backend; the backends are {', '.join(infos)}"
    elif not info.usable:
        problem = f"{info.status}, {info.detail}" + (f": {info.fix}" if info.fix else "")
    else:
        problem = ""
    lines = [f"  backend  {name}  ({why})"]
    if problem:
        lines.append(f"           cannot be used: {problem}")
    if scope is not None:
        lines.append(f"  scope    {scope}  (from --scope)")
    else:
        lines.append(f"  scope    {DEFAULT_SCOPE}  (fallback; a Flask app can set LOOPSHIM_SCOPE)")
    lines.append(f"  (the scopes: {', '.join(SCOPES)})")
    return lines, not problem


def format_info(backend: str | None = None, scope: str | None = None) -> tuple[str, bool]:
    """The report, and whether the selected backend can be used."""
    from . import __version__

    infos = {info.name: info for info in backend_infos()}
    width = max(len(n) for n in infos)
    lines = [
        f"loopshim {__version__}",
        f"{describe_machine()}; interpreter {sys.executable}",
        "",
        "Backends:",
    ]
    status_width = max(len(info.status) for info in infos.values())
    for info in infos.values():
        lines.append(f"  {info.name:{width}}  {info.status:{status_width}}  {info.detail}")
    lines += ["", "Selected:"]
    selection, usable = _selection(backend, scope, infos)
    lines += selection
    missing = [info for info in infos.values() if info.fix]
    if missing:
        lines += ["", "To install the missing backends:"]
        lines += [f"  {info.name:{width}}  {info.fix}" for info in missing]
    lines += ["", "For loopshim bench:"]
    lines += _bench_libraries()
    return "\n".join(lines), usable


def _bench_libraries() -> list[str]:
    """The libraries of the ``bench`` extra with their versions, and one ``pip install``
    line for those that cannot be imported."""
    offered = extras()
    names = sorted(offered.get(BENCH_EXTRA, ()))
    if not names:
        return ["  (unknown here: loopshim's package metadata, which lists them, is not installed)"]
    # A distribution's module is its name with "_" for "-" (nest-asyncio: nest_asyncio).
    present = [n for n in names if importable(n.replace("-", "_"))]
    versions = library_versions(present)
    shown = ", ".join(f"{n} {versions[n]}" if n in versions else n for n in present)
    lines = ["  " + (shown or "none installed")]
    absent = [n for n in names if n not in present]
    if absent:
        lines.append(f"  missing {', '.join(absent)}: {pip_install_line(absent, offered)}")
    return lines
