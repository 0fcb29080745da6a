"""What ``loopshim info`` reports: the interpreter, the backends and their library
versions, the default backend and scope and why, and what to install for the rest."""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass
from typing import Final

from ._bench_report import describe_machine, library_versions
from ._core import (
    BUILTIN_BACKENDS,
    ENV_VAR,
    available_backends,
    backend_origin,
    default_backend,
    install_hint,
    known_backends,
    load_backend,
)
from ._options import DEFAULT_SCOPE, SCOPES

__all__ = ["BackendInfo", "backend_infos", "format_info"]

#: The libraries ``loopshim bench`` uses, beyond the backends.
BENCH_MODULES: Final = ("flask", "asgiref", "anyio", "matplotlib")


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
        return BackendInfo(
            name, "not installed", f"{builtin.requires} does not support {sys.platform}"
        )
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
    present = library_versions(BENCH_MODULES)
    lines.append("  " + (", ".join(f"{k} {v}" for k, v in present.items()) or "none installed"))
    absent = [m for m in BENCH_MODULES if m not in present]
    if absent:
        lines.append(f"  missing: {', '.join(absent)} ({install_hint('bench')})")
    return "\n".join(lines), usable
