"""The backend registry: built-in backends found by convention and imported lazily
(``loopshim.backends._<name>.backend_class``), third-party ones from
:func:`register_backend` or the ``loopshim.backends`` entry-point group, and
:func:`get_runner`, which makes every caller share one runner (and one loop)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar, Union

from .._errors import ArgumentError, BackendNotFound, BackendUnavailable, OptionError
from .._options import DEFAULT_SCOPE, check_scope, did_you_mean, parse_options
from . import _lifecycle
from ._backend import Backend, register_library
from ._gevent import refuse_backend, threading_patched
from ._protocol import LoopRunner
from ._runner import Runner

__all__ = [
    "BUILTIN_BACKENDS",
    "DEFAULT_BACKEND",
    "ENV_VAR",
    "BuiltIn",
    "available_backends",
    "backend_origin",
    "default_backend",
    "get_runner",
    "install_hint",
    "known_backends",
    "load_backend",
    "register_backend",
    "run",
]

T = TypeVar("T")

#: A fully custom backend: ``factory(scope=..., **options) -> LoopRunner``.
RunnerFactory = Callable[..., LoopRunner]
#: What can be registered: a :class:`~loopshim.abc.Backend` subclass (which gets every
#: scope and guarantee), or a factory of fully custom runners.
BackendSpec = Union[type[Backend], RunnerFactory]  # noqa: UP007 (a runtime alias on 3.10)

ENTRY_POINT_GROUP: Final = "loopshim.backends"
ENV_VAR: Final = "LOOPSHIM_BACKEND"
DEFAULT_BACKEND: Final = "asyncio"


@dataclass(frozen=True)
class BuiltIn:
    """A backend that ships with loopshim, in ``loopshim.backends._<name>``."""

    requires: str | None = None  # the import the backend needs
    extra: str | None = None  # the loopshim extra that installs it
    gevent_ok: bool = True  # whether it runs under gevent's monkey-patching
    unsupported_platforms: tuple[str, ...] = ()  # values of sys.platform it cannot run on

    @property
    def install_command(self) -> str:
        return install_hint(self.extra) if self.extra else ""

    def installed(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


BUILTIN_BACKENDS: Final[dict[str, BuiltIn]] = {
    "asyncio": BuiltIn(),
    "uvloop": BuiltIn("uvloop", "uvloop", unsupported_platforms=("win32",)),
    "trio": BuiltIn("trio", "trio", gevent_ok=False),
}


def install_hint(extra: str) -> str:
    """The ``pip install`` line for loopshim's *extra*."""
    return f'pip install "loopshim[{extra}]"'


_registered: dict[str, BackendSpec] = {}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in found}


def available_backends() -> list[str]:
    """The names of the backends that can be used here: the built-in ones whose library
    is installed, then those added with :func:`register_backend` or through the
    ``loopshim.backends`` entry-point group (not imported until used).

    .. versionadded:: 0.1
    """
    names = [name for name, builtin in BUILTIN_BACKENDS.items() if builtin.installed()]
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


def register_backend(name: str, backend: BackendSpec, *, replace: bool = False) -> None:
    """Make *backend* available as backend *name*.

    *backend* is either a subclass of :class:`loopshim.abc.Backend` — it then gets all
    three scopes and every guarantee of the built-in backends — or a factory of fully
    custom runners, called as ``factory(scope=scope, **options)``, which must return a
    :class:`~loopshim.LoopRunner`. Installed packages can do the same without code by
    declaring an entry point in the ``loopshim.backends`` group.

    .. versionadded:: 0.1
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise OptionError(f"backend names are identifiers such as 'my_loop'; got {name!r}")
    if not callable(backend):
        raise ArgumentError(
            f"register_backend() needs a Backend subclass or a runner factory, got {backend!r}"
        )
    if not replace and (name in BUILTIN_BACKENDS or name in _registered):
        raise OptionError(f"backend {name!r} is already defined; pass replace=True to override it")
    with _lifecycle.registry_lock():
        _registered[name] = backend
        evicted = _lifecycle.evict(name)
    for runner in evicted:  # nobody can get them any more: release their loops
        runner.close()


def _import_builtin(name: str, builtin: BuiltIn) -> BackendSpec:
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
    module = importlib.import_module(f"loopshim.backends._{name}")
    return module.backend_class  # type: ignore[no-any-return]


def _load_entry_point(name: str, ep: importlib.metadata.EntryPoint) -> BackendSpec:
    try:
        loaded = ep.load()
    except Exception as exc:
        origin = _distribution(ep, "an unknown distribution")
        raise BackendUnavailable(
            f"backend {name!r} is provided by entry point {ep.name} = {ep.value} (group "
            f"{ENTRY_POINT_GROUP!r}) of {origin}, and loading it failed: {exc!r}. "
            "Reinstall or fix that package, or uninstall it"
        ) from exc
    return loaded  # type: ignore[no-any-return]


def load_backend(name: str, source: str | None = None) -> BackendSpec:
    """Backend *name*, imported if needed: its :class:`~loopshim.abc.Backend` class, or
    its runner factory. *source* says where the name came from (``$LOOPSHIM_BACKEND``),
    for the error when it is unknown."""
    if not isinstance(name, str):
        raise BackendNotFound(
            f"a backend name is a string such as 'asyncio'; got {name!r} ({type(name).__name__})"
        )
    spec = _registered.get(name)
    if spec is not None:
        return spec
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


def _is_backend_class(spec: object) -> bool:
    return isinstance(spec, type) and issubclass(spec, Backend)


def _create(name: str, scope: str, spec: BackendSpec, options: Mapping[str, Any]) -> LoopRunner:
    if _is_backend_class(spec):
        backend_class: type[Backend] = spec  # type: ignore[assignment]
        common, extra = parse_options(name, options, backend_class.extra_options)
        backend = backend_class(name, **extra)
        register_library(backend.library)
        runner: LoopRunner = Runner(backend, scope, common)  # type: ignore[arg-type]
        return runner
    custom = spec(scope=scope, **options)
    if not isinstance(custom, LoopRunner):
        raise ArgumentError(
            f"the factory of backend {name!r} returned {custom!r}, which is not a LoopRunner"
        )
    return custom


def _cache_key(name: str, scope: str, spec: BackendSpec, options: Mapping[str, Any]) -> Any:
    """What makes two requests for a runner the same request: the options as validated,
    so that naming an option with its default value changes nothing."""
    if _is_backend_class(spec):
        backend_class: type[Backend] = spec  # type: ignore[assignment]
        common, extra = parse_options(name, options, backend_class.extra_options)
        return (name, scope, dataclasses.replace(common, given=frozenset()), *sorted(extra.items()))
    return (name, scope, *sorted(options.items()))


def get_runner(
    name: str | None = None, *, scope: str = DEFAULT_SCOPE, cached: bool = True, **options: Any
) -> LoopRunner:
    """Return a runner for backend *name* in *scope*.

    *name* ``None`` means ``$LOOPSHIM_BACKEND``, else ``"asyncio"``. Runners are shared:
    the same name, scope and options (options given with their default value count as
    not given) give the same runner, and the same loop, to every caller;
    ``cached=False`` gives a private one, which the caller closes. ``close()`` on a
    shared runner closes its loops for every holder, and the next call starts fresh ones.

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
        return _create(name, checked_scope, load_backend(name, source), options)
    # The request as given finds a runner already shared for it without loading the
    # backend or validating the options again (loopshim.run asks on every call).
    request = (name, checked_scope, *sorted(options.items()))
    try:
        hash(request)
    except TypeError:
        raise OptionError(
            f"runner options must be hashable to share a runner; got {options!r}. "
            "Pass cached=False for a private runner"
        ) from None
    with _lifecycle.registry_lock():
        runner = _lifecycle.shared(request)
    if runner is not None:
        return runner
    spec = load_backend(name, source)
    key = _cache_key(name, checked_scope, spec, options)
    with _lifecycle.registry_lock():
        runner = _lifecycle.shared(key)
        if runner is None:
            runner = _create(name, checked_scope, spec, options)
            _lifecycle.share(key, runner)
        _lifecycle.share(request, runner)
        return runner


def run(async_fn: Callable[..., Awaitable[T]], /, *args: Any, backend: str | None = None) -> T:
    """Run ``async_fn(*args)`` on the shared ``process``-scope runner of *backend*
    (default: ``$LOOPSHIM_BACKEND``, else asyncio) and return its result. For scripts.

    Only positional arguments are passed on, so that no keyword of yours can clash with
    ``backend``; for keyword arguments use :func:`functools.partial`. (``Runner.run``
    passes both.)

    .. versionadded:: 0.1
    """
    return get_runner(backend).run(async_fn, *args)
