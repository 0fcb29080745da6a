"""The backend registry: built-in backends imported lazily, third-party ones from
:func:`register_backend` or the ``loopshim.backends`` entry-point group, and the
cache that makes every caller of :func:`get_runner` share one runner (and one loop)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from ._errors import BackendNotFound, BackendUnavailable, OptionError
from ._gevent import refuse_backend, threading_patched
from ._options import DEFAULT_SCOPE, check_scope, did_you_mean
from ._runner import LoopRunner

__all__ = ["available_backends", "get_runner", "register_backend", "run"]

T = TypeVar("T")

#: A backend factory: ``factory(scope=..., **options) -> LoopRunner``.
BackendFactory = Callable[..., LoopRunner]

ENTRY_POINT_GROUP: Final = "loopshim.backends"
ENV_VAR: Final = "LOOPSHIM_BACKEND"
DEFAULT_BACKEND: Final = "asyncio"


@dataclass(frozen=True)
class _BuiltIn:
    module: str
    factory: str
    requires: str | None = None  # the import the backend needs
    extra: str | None = None  # the loopshim extra that installs it
    gevent_ok: bool = True  # whether it runs under gevent's monkey-patching

    @property
    def install_command(self) -> str:
        return _pip_extra(self.extra)


def _pip_extra(extra: str | None) -> str:
    return f'pip install "loopshim[{extra}]"'


BUILTIN_BACKENDS: Final[dict[str, _BuiltIn]] = {
    "asyncio": _BuiltIn("loopshim.backends._asyncio", "create_asyncio_runner"),
    "uvloop": _BuiltIn("loopshim.backends._asyncio", "create_uvloop_runner", "uvloop", "uvloop"),
    "trio": _BuiltIn(
        "loopshim.backends._trio", "create_trio_runner", "trio", "trio", gevent_ok=False
    ),
}

#: Which loopshim extra installs a backend's library.
_EXTRA_OF_MODULE: Final[dict[str, str]] = {
    b.requires: b.extra for b in BUILTIN_BACKENDS.values() if b.requires and b.extra
}


def install_hint(module: str) -> str:
    """The ``pip install`` line that provides *module*."""
    extra = _EXTRA_OF_MODULE.get(module)
    return _pip_extra(extra) if extra else f"pip install {module}"


_registered: dict[str, BackendFactory] = {}
_cache: dict[tuple[Any, ...], LoopRunner] = {}
_lock = threading.Lock()


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in found}


def _installed(builtin: _BuiltIn) -> bool:
    return builtin.requires is None or importlib.util.find_spec(builtin.requires) is not None


def available_backends() -> list[str]:
    """The names of the backends that can be used here: the built-in ones whose library
    is installed, then those added with :func:`register_backend` or through the
    ``loopshim.backends`` entry-point group (not imported until used).

    .. versionadded:: 0.1
    """
    names = [name for name, builtin in BUILTIN_BACKENDS.items() if _installed(builtin)]
    extra = sorted((set(_registered) | set(_entry_points())) - set(names))
    return names + extra


def known_backends() -> list[str]:
    """Every backend name known here, usable or not: the built-in ones, then the sorted
    names added with :func:`register_backend` or through entry points."""
    third_party = sorted((set(_registered) | set(_entry_points())) - set(BUILTIN_BACKENDS))
    return [*BUILTIN_BACKENDS, *third_party]


def backend_origin(name: str) -> str:
    """Where third-party backend *name* comes from, in words."""
    if name in _registered:
        return "registered with register_backend()"
    ep = _entry_points()[name]
    return f"entry point {ep.value} ({_distribution(ep, 'unknown distribution')})"


def _distribution(ep: importlib.metadata.EntryPoint, unknown: str) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else unknown


def register_backend(name: str, factory: BackendFactory, *, replace: bool = False) -> None:
    """Make *factory* available as backend *name*.

    *factory* is called as ``factory(scope=scope, **options)`` and must return a
    :class:`~loopshim.LoopRunner`. Installed packages can do the same without code by
    declaring an entry point in the ``loopshim.backends`` group.

    .. versionadded:: 0.1
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"backend names are identifiers such as 'my_loop'; got {name!r}")
    if not callable(factory):
        raise TypeError(f"register_backend() needs a callable factory, got {factory!r}")
    if not replace and (name in BUILTIN_BACKENDS or name in _registered):
        raise ValueError(f"backend {name!r} is already defined; pass replace=True to override it")
    with _lock:
        _registered[name] = factory
        evicted = [_cache.pop(k) for k in [k for k in _cache if k[0] == name]]
    for runner in evicted:  # nobody can get them any more: release their loops
        runner.close()


def _import_builtin(name: str, builtin: _BuiltIn) -> BackendFactory:
    if not builtin.gevent_ok and threading_patched():
        refuse_backend(name)
    if builtin.requires is not None:
        try:
            importlib.import_module(builtin.requires)
        except ImportError as exc:
            raise BackendUnavailable(
                f"backend {name!r} needs the {builtin.requires!r} package, which is not "
                f"installed or failed to import ({exc}). Install it with: "
                f"{builtin.install_command}"
            ) from exc
    module = importlib.import_module(builtin.module)
    return getattr(module, builtin.factory)  # type: ignore[no-any-return]


def _load_entry_point(name: str, ep: importlib.metadata.EntryPoint) -> BackendFactory:
    try:
        factory = ep.load()
    except Exception as exc:
        origin = _distribution(ep, "an unknown distribution")
        raise BackendUnavailable(
            f"backend {name!r} is provided by entry point {ep.name} = {ep.value} (group "
            f"{ENTRY_POINT_GROUP!r}) of {origin}, and loading it failed: {exc!r}. "
            "Reinstall or fix that package, or uninstall it"
        ) from exc
    return factory  # type: ignore[no-any-return]


def backend_factory(name: str, source: str | None = None) -> BackendFactory:
    """The factory of backend *name*, importing it if needed; *source* says where the
    name came from (``$LOOPSHIM_BACKEND``), for the error when it is unknown."""
    if not isinstance(name, str):
        raise BackendNotFound(
            f"a backend name is a string such as 'asyncio'; got {name!r} ({type(name).__name__})"
        )
    factory = _registered.get(name)
    if factory is not None:
        return factory
    builtin = BUILTIN_BACKENDS.get(name)
    if builtin is not None:
        return _import_builtin(name, builtin)
    ep = _entry_points().get(name)
    if ep is not None:
        return _load_entry_point(name, ep)
    available = available_backends()
    missing = sorted(set(BUILTIN_BACKENDS) - set(available))
    note = f" (known but not installed: {', '.join(missing)})" if missing else ""
    subject = (
        f"{source} names backend {name!r}, which is unknown"
        if source
        else (f"unknown loop backend {name!r}")
    )
    raise BackendNotFound(
        f"{subject}; available: {', '.join(available)}{note}.{did_you_mean(name, known_backends())}"
    )


def default_backend() -> tuple[str, str]:
    """The backend used when none is named, and why: ``(name, reason)``."""
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return from_env, f"${ENV_VAR}"
    return DEFAULT_BACKEND, "default"


def _create(
    name: str, scope: str, options: dict[str, Any], source: str | None = None
) -> LoopRunner:
    factory = backend_factory(name, source)
    runner = factory(scope=scope, **options)
    if not isinstance(runner, LoopRunner):
        raise TypeError(
            f"the factory of backend {name!r} returned {runner!r}, which is not a LoopRunner"
        )
    return runner


def get_runner(
    name: str | None = None, *, scope: str = DEFAULT_SCOPE, cached: bool = True, **options: Any
) -> LoopRunner:
    """Return a runner for backend *name* in *scope*.

    *name* ``None`` means ``$LOOPSHIM_BACKEND``, else ``"asyncio"``. Runners are shared:
    the same name, scope and options give the same runner (and loop) to every caller,
    until it is closed; ``cached=False`` gives a private one, which the caller closes.

    Options every backend accepts: ``timeout`` (seconds per call, ``None`` for no
    limit), ``shutdown_timeout`` (grace for background tasks at close, default 5) and
    ``debug``; ``asyncio`` also takes ``loop_factory``, ``trio`` takes ``driver``.

    :raises BackendNotFound: no backend of that name.
    :raises BackendUnavailable: its library is not installed.
    :raises OptionError: unknown scope, unknown option, or a bad option value.

    .. versionadded:: 0.1
    """
    source = None
    if name is None:
        name, source = default_backend()
    checked_scope = check_scope(scope)
    if not cached:
        return _create(name, checked_scope, options, source)
    key = (name, checked_scope, *sorted(options.items()))
    try:
        hash(key)
    except TypeError:
        raise OptionError(
            f"runner options must be hashable to share a runner; got {options!r}. "
            "Pass cached=False for a private runner"
        ) from None
    with _lock:
        runner = _cache.get(key)
        if runner is None or getattr(runner, "closed", False):
            runner = _create(name, checked_scope, options, source)
            _cache[key] = runner
        return runner


def run(
    async_fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    backend: str | None = None,
    **kwargs: Any,
) -> T:
    """Run ``async_fn(*args, **kwargs)`` on the shared runner of *backend* (default:
    ``$LOOPSHIM_BACKEND``, else asyncio), ``process`` scope. For scripts.

    .. versionadded:: 0.1
    """
    return get_runner(backend).run(async_fn, *args, **kwargs)
