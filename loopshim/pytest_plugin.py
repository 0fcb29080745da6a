"""The loopshim pytest plugin: run ``async def`` tests and fixtures on every backend.

Installing loopshim registers it (entry point ``pytest11``). Mark a test, or turn on auto
mode, and it runs once per installed backend::

    import pytest

    @pytest.mark.loopshim
    async def test_fetch(client):        # test_fetch[asyncio], [uvloop], [trio]
        assert (await client.get("/")).status_code == 200

Fixtures it provides:

- ``loop_backend``: the backend under test, parametrised over the installed backends (or
  ``--loopshim-backends``). Override it in a conftest to pick your own set; it may return
  a name or a ``(name, options)`` pair.
- ``loop_scope``: the runner scope under test: ``loopshim_scope`` (``process`` by
  default), or parametrised over ``--loopshim-scopes`` (test ids ``test_x[asyncio-thread]``).
  Override it in a conftest like ``loop_backend``.
- ``loop_runner``: a private runner for that backend and scope, shared by the test and
  its async fixtures, closed when its fixture scope (``loopshim_loop_scope``) ends.
- ``loop_runner_factory``: makes more private runners for that backend and scope, with
  options of your own (``loop_runner_factory(timeout=1)``), closed after the test.
- ``loop_app``: your ``app`` fixture's Flask app with its async views, hooks and
  handlers running on ``loop_runner``.

The marker ``@pytest.mark.loopshim_scopes("process", "thread")`` runs a test (or, on a
``loop_backend`` parameter, a backend variant) only in those scopes.

Async fixtures (``async def`` and async generators) requested by such a test run on the
same runner and loop; an async generator fixture keeps one task from setup to teardown,
so cancel scopes, task groups and timeouts may span its ``yield``. Context variables set
by a fixture are visible in the test.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import threading
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any, Final, Protocol, TypeVar

import pytest

from ._core import (
    BUILTIN_BACKENDS,
    AsyncEvent,
    Library,
    LoopRunner,
    available_backends,
    copy_back,
    default_backend,
    get_runner,
    running_library,
)
from ._errors import UsageError
from ._options import SCOPES, did_you_mean, is_seconds

__all__ = [
    "LoopRunnerFactory",
    "Settings",
    "loop_app",
    "loop_backend",
    "loop_runner",
    "loop_runner_factory",
    "loop_scope",
]

MARKER: Final = "loopshim"
#: The marker that runs a test, or a backend variant, only in some scopes.
SCOPES_MARKER: Final = "loopshim_scopes"
MODES: Final = ("strict", "auto")
FIXTURE_SCOPES: Final = ("function", "class", "module", "package", "session")
#: Markers of the other async test plugins: a test carrying one of them is theirs.
FOREIGN_MARKERS: Final = {
    "asyncio": "pytest-asyncio",
    "anyio": "anyio's pytest plugin",
    "trio": "pytest-trio",
}

T = TypeVar("T")

_context_key = pytest.StashKey[contextvars.Context]()


# --- configuration ---------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loopshim", "loopshim: async tests on every event loop")
    group.addoption(
        "--loopshim-mode",
        dest="loopshim_mode",
        default=None,
        help="'strict' (default): run async tests marked @pytest.mark.loopshim; "
        "'auto': also run every unmarked async test. Overrides the loopshim_mode ini option.",
    )
    group.addoption(
        "--loopshim-backends",
        dest="loopshim_backends",
        default=None,
        help="comma-separated backends to run on, e.g. asyncio,trio (default: every "
        "installed backend). Overrides the loopshim_backends ini option.",
    )
    group.addoption(
        "--loopshim-scopes",
        dest="loopshim_scopes",
        default=None,
        help="comma-separated runner scopes to run on, e.g. process,thread,call: each test "
        "that uses loop_runner runs once per backend and scope (default: loopshim_scope "
        "only). Overrides the loopshim_scopes ini option.",
    )
    parser.addini("loopshim_mode", "strict or auto (see --loopshim-mode)", default="strict")
    parser.addini(
        "loopshim_backends",
        "backends to run on, separated by commas or spaces (default: every installed one)",
        default="",
    )
    parser.addini(
        "loopshim_scope",
        "runner scope for tests: process (default, the loop runs in its own thread), "
        "thread (the loop runs in pytest's thread, only during a call) or call (a new "
        "loop for every call: no async generator fixtures)",
        default="process",
    )
    parser.addini(
        "loopshim_scopes",
        "runner scopes to run each test on, separated by commas or spaces (default: "
        "loopshim_scope alone, and no scope in the test ids)",
        default="",
    )
    parser.addini(
        "loopshim_loop_scope",
        "fixture scope of loop_runner, so of the loop: function, class, module (default), "
        "package or session",
        default="module",
    )
    parser.addini(
        "loopshim_timeout",
        "seconds an async test or fixture may run before it is cancelled (default: no limit)",
        default="",
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """The plugin's configuration, validated once per session."""

    mode: str
    backends: tuple[str, ...]
    #: The scope of tests that are not parametrised over scopes.
    scope: str
    #: The scopes to parametrise over (``--loopshim-scopes``); empty: none.
    scopes: tuple[str, ...]
    loop_scope: str
    timeout: float | None


_settings_key = pytest.StashKey[Settings]()


def _split_names(raw: str) -> tuple[str, ...]:
    return tuple(name for name in raw.replace(",", " ").split() if name)


def _read_settings(config: pytest.Config) -> Settings:
    mode = config.getoption("loopshim_mode") or config.getini("loopshim_mode")
    if mode not in MODES:
        raise pytest.UsageError(
            f"loopshim mode must be one of {', '.join(MODES)}; got {mode!r}. "
            "Set it with --loopshim-mode or the loopshim_mode ini option"
        )
    raw_backends = config.getoption("loopshim_backends")
    if raw_backends is None:
        raw_backends = config.getini("loopshim_backends")
    backends = _split_names(raw_backends)
    if raw_backends and not backends:
        raise pytest.UsageError(
            "--loopshim-backends / loopshim_backends is empty; valid names: "
            f"{', '.join(_known_backends())}"
        )
    for name in backends:
        # Built-in names need no look-up: a session that names none does none.
        if name not in BUILTIN_BACKENDS and name not in (known := _known_backends()):
            raise pytest.UsageError(
                f"--loopshim-backends / loopshim_backends names {name!r}, which is not a "
                f"loopshim backend; valid names: {', '.join(known)}.{did_you_mean(name, known)}"
            )
    scope = config.getini("loopshim_scope")
    _check_scopes("loopshim_scope", [scope])
    raw_scopes = config.getoption("loopshim_scopes")
    if raw_scopes is None:
        raw_scopes = config.getini("loopshim_scopes")
    scopes = _split_names(raw_scopes)
    if raw_scopes and not scopes:
        raise pytest.UsageError(
            f"--loopshim-scopes / loopshim_scopes is empty; valid scopes: {', '.join(SCOPES)}"
        )
    _check_scopes("--loopshim-scopes / loopshim_scopes", scopes)
    loop_scope = config.getini("loopshim_loop_scope")
    if loop_scope not in FIXTURE_SCOPES:
        raise pytest.UsageError(
            f"loopshim_loop_scope must be one of {', '.join(FIXTURE_SCOPES)}; got {loop_scope!r}"
        )
    return Settings(mode, backends, scope, scopes, loop_scope, _read_timeout(config))


def _check_scopes(where: str, scopes: Iterable[object]) -> None:
    """Raise :class:`pytest.UsageError` if one of *scopes* (given in *where*) is not a
    runner scope."""
    for scope in scopes:
        if scope not in SCOPES:
            raise pytest.UsageError(_not_a_scope(where, scope))


def _not_a_scope(where: str, scope: object) -> str:
    hint = did_you_mean(scope, list(SCOPES)) if isinstance(scope, str) else ""
    return f"{where}: {scope!r} is not a runner scope; the scopes are {', '.join(SCOPES)}.{hint}"


def _known_backends() -> list[str]:
    """The names ``--loopshim-backends`` accepts: the built-in backends, installed or
    not, and the third-party ones installed here."""
    return sorted(set(BUILTIN_BACKENDS) | set(available_backends()))


_installed_key = pytest.StashKey[tuple[str, ...]]()


def _installed(config: pytest.Config) -> tuple[str, ...]:
    """The backends usable here, looked up once per session, when a test first needs
    them (a session without loopshim tests looks nothing up)."""
    installed = config.stash.get(_installed_key, None)
    if installed is None:
        installed = config.stash[_installed_key] = tuple(available_backends())
    return installed


def _read_timeout(config: pytest.Config) -> float | None:
    raw = config.getini("loopshim_timeout").strip()
    if not raw:
        return None
    try:
        timeout = float(raw)
    except ValueError:
        timeout = float("nan")
    if not is_seconds(timeout, zero_ok=False):
        raise pytest.UsageError(
            f"loopshim_timeout must be a finite number of seconds greater than 0; got {raw!r}"
        )
    return timeout


def _check_asyncio_mode(config: pytest.Config, settings: Settings) -> None:
    if settings.mode != "auto" or not config.pluginmanager.hasplugin("asyncio"):
        return
    try:
        asyncio_mode = config.getoption("asyncio_mode") or config.getini("asyncio_mode")
    except ValueError:  # pytest-asyncio without that option
        return
    if str(asyncio_mode) == "auto":
        raise pytest.UsageError(
            "loopshim_mode and pytest-asyncio's asyncio_mode are both 'auto', so both "
            "plugins would claim every unmarked async test and fixture. Set one of them "
            "to 'strict' and mark the tests it should run"
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: run this async test through a loopshim runner, once per backend "
        "(see the loop_backend fixture)",
    )
    config.addinivalue_line(
        "markers",
        f"{SCOPES_MARKER}(*scopes): run this test only in these runner scopes (see the "
        "loop_scope fixture); on a loop_backend parameter, run that backend only in them",
    )
    settings = _read_settings(config)
    _check_asyncio_mode(config, settings)
    config.stash[_settings_key] = settings


def _settings(config: pytest.Config) -> Settings:
    return config.stash[_settings_key]


def _loop_scope(fixture_name: str, config: pytest.Config) -> Any:
    return _settings(config).loop_scope


# --- which tests are ours --------------------------------------------------------------


def _claims(marker_names: set[str], mode: str, argnames: tuple[str, ...] | list[str]) -> bool:
    """Whether an ``async def`` test with these markers and arguments is ours."""
    if MARKER in marker_names:
        return True
    if mode != "auto" or marker_names & FOREIGN_MARKERS.keys():
        return False
    return "anyio_backend" not in argnames  # anyio claims tests that ask for its backend


def _marker_names(collector: pytest.Collector, obj: object) -> set[str]:
    names = {mark.name for mark in getattr(obj, "pytestmark", [])}
    names.update(mark.name for mark in collector.iter_markers())
    return names


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    # Runs before the test's fixtures are resolved, so requesting loop_runner here makes
    # the loop_backend parametrisation apply to it.
    if not isinstance(collector, (pytest.Module, pytest.Class)):
        return
    # Name first: module globals include proxies (flask.g) that raise on any access.
    if not collector.istestfunction(obj, name) or not inspect.iscoroutinefunction(obj):
        return
    argnames = tuple(inspect.signature(obj).parameters)
    if _claims(_marker_names(collector, obj), _settings(collector.config).mode, argnames):
        pytest.mark.usefixtures("loop_runner")(obj)


def _is_ours(item: pytest.Function) -> bool:
    if not inspect.iscoroutinefunction(item.obj):
        return False
    names = {mark.name for mark in item.iter_markers()}
    return _claims(names, _settings(item.config).mode, item.fixturenames)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if not isinstance(item, pytest.Function) or item.get_closest_marker(MARKER) is None:
        return
    others = sorted(
        f"@pytest.mark.{name} ({plugin})"
        for name, plugin in FOREIGN_MARKERS.items()
        if item.get_closest_marker(name) is not None
    )
    if others:
        pytest.fail(
            f"{item.nodeid} is marked both @pytest.mark.{MARKER} and {', '.join(others)}: "
            "two plugins would run it on two different loops. Keep one marker "
            "(check module- and class-level pytestmark too)",
            pytrace=False,
        )
    if not inspect.iscoroutinefunction(item.obj):
        pytest.fail(
            f"{item.nodeid} is marked @pytest.mark.{MARKER} but is not an async def "
            "function; remove the marker, or make the test async",
            pytrace=False,
        )


# --- backend and scope parametrisation -------------------------------------------------


def _uses_default_fixture(metafunc: pytest.Metafunc, name: str) -> bool:
    """Whether the fixture *name* in effect for this test is the plugin's (not a
    conftest's override)."""
    # The last definition is the one in effect.
    fixturedefs = metafunc._arg2fixturedefs.get(name)
    if not fixturedefs:
        return False
    return getattr(fixturedefs[-1].func, "__module__", None) == __name__


def _parametrized_by_mark(metafunc: pytest.Metafunc, name: str, loop_scope: str) -> bool:
    """Whether the test parametrizes the fixture *name* itself.

    Directly (not ``indirect``), the value bypasses the fixture, and pytest would reuse
    a ``loop_runner`` made for an earlier test of the same loop scope, on another backend
    or scope: that is refused unless every test has its own loop.
    """
    for mark in metafunc.definition.iter_markers("parametrize"):
        argnames = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(argnames, str):
            argnames = [argname.strip() for argname in argnames.split(",")]
        if name not in argnames:
            continue
        indirect = mark.kwargs.get("indirect", mark.args[2] if len(mark.args) > 2 else False)
        if isinstance(indirect, (list, tuple)):
            indirect = name in indirect
        if not indirect and loop_scope != "function":
            pytest.fail(
                f"{metafunc.definition.nodeid} parametrizes {name} directly, so the "
                "value would not reach loop_runner, which lives for a whole "
                f"loopshim_loop_scope ({loop_scope!r}); add indirect=True to the "
                "parametrize mark",
                pytrace=False,
            )
        return True
    return False


def _backend_param(name: str, installed: tuple[str, ...]) -> Any:
    builtin = BUILTIN_BACKENDS.get(name)
    if builtin is None or name in installed:
        return pytest.param(name, id=name)
    reason = f"backend {name!r} is not installed: {builtin.install_command}"
    return pytest.param(name, id=name, marks=pytest.mark.skip(reason=reason))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "loop_backend" not in metafunc.fixturenames:
        return
    settings = _settings(metafunc.config)
    if _parametrized_by_mark(metafunc, "loop_backend", settings.loop_scope):
        return
    if not _uses_default_fixture(metafunc, "loop_backend"):
        return
    installed = _installed(metafunc.config)
    names = settings.backends or installed
    metafunc.parametrize(
        "loop_backend",
        [_backend_param(name, installed) for name in names],
        indirect=True,
        scope=settings.loop_scope,  # type: ignore[arg-type]
    )


# After every other parametrisation, so that ids read backend, then scope, however the
# backends are chosen (this plugin, a conftest's fixture or a parametrize mark).
@pytest.hookimpl(trylast=True, specname="pytest_generate_tests")
def pytest_generate_tests_scopes(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``loop_scope`` over ``--loopshim-scopes``, narrowed by the test's
    ``loopshim_scopes`` marks."""
    settings = _settings(metafunc.config)
    if "loop_scope" not in metafunc.fixturenames:
        return
    if _parametrized_by_mark(metafunc, "loop_scope", settings.loop_scope):
        return
    if not settings.scopes or not _uses_default_fixture(metafunc, "loop_scope"):
        return
    where = metafunc.definition.nodeid
    allowed = _allowed_scopes(metafunc.definition.iter_markers(SCOPES_MARKER), where)
    metafunc.parametrize(
        "loop_scope",
        [pytest.param(scope, id=scope) for scope in settings.scopes if scope in allowed],
        indirect=True,
        scope=settings.loop_scope,  # type: ignore[arg-type]
    )


def _allowed_scopes(marks: Iterable[pytest.Mark], where: str) -> frozenset[str]:
    """The scopes every ``loopshim_scopes`` mark in *marks* allows (all, without one)."""
    allowed = frozenset(SCOPES)
    for mark in marks:
        if not mark.args or mark.kwargs:
            raise pytest.UsageError(
                f"@pytest.mark.{SCOPES_MARKER} on {where} takes the scopes as arguments, "
                f'such as @pytest.mark.{SCOPES_MARKER}("process", "thread")'
            )
        _check_scopes(f"@pytest.mark.{SCOPES_MARKER} on {where}", mark.args)
        allowed &= frozenset(mark.args)
    return allowed


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests whose scope a ``loopshim_scopes`` mark excludes.

    The marks on a test are applied when it is parametrised; these are the marks that
    come with a parameter (a backend variant that only differs in some scopes), and
    tests that are not parametrised over scopes, which run in ``loopshim_scope``.
    """
    settings = config.stash.get(_settings_key, None)
    if settings is None:
        return
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        marks = list(item.iter_markers(SCOPES_MARKER))
        if marks and _scope_of(item, settings) not in _allowed_scopes(marks, item.nodeid):
            deselected.append(item)
        else:
            selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def _scope_of(item: pytest.Item, settings: Settings) -> str:
    """The runner scope *item* runs in, as far as collection can tell."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "loop_scope" in callspec.params:
        return str(callspec.params["loop_scope"])
    return settings.scope


def _backend_spec(value: object) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        return value, {}
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], Mapping)
    ):
        return value[0], dict(value[1])
    raise UsageError(
        f"loop_backend must give a backend name such as 'trio', or a (name, options) pair "
        f"such as ('trio', {{'driver': 'public'}}); got {value!r}"
    )


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope=_loop_scope)
def loop_backend(request: pytest.FixtureRequest) -> Any:
    """The backend the current test runs on: a name, or a ``(name, options)`` pair.

    Parametrised over the installed backends (narrowed by ``--loopshim-backends`` or the
    ``loopshim_backends`` ini option). Override it in a ``conftest.py`` to choose the set
    yourself; give it the scope of ``loopshim_loop_scope`` (``module`` by default)::

        @pytest.fixture(scope="module", params=["asyncio", ("trio", {"driver": "public"})])
        def loop_backend(request):
            return request.param

    A parameter marked ``pytest.mark.loopshim_scopes("thread")`` runs in those scopes
    only. One test picks its own with
    ``@pytest.mark.parametrize("loop_backend", ["trio"], indirect=True)``.

    .. versionadded:: 0.1
    """
    return getattr(request, "param", None) or default_backend()[0]


@pytest.fixture(scope=_loop_scope)
def loop_scope(request: pytest.FixtureRequest) -> str:
    """The runner scope the current test runs in: ``"process"``, ``"thread"`` or ``"call"``.

    ``loopshim_scope`` (``process`` by default), or, with ``--loopshim-scopes`` or the
    ``loopshim_scopes`` ini option, parametrised over those scopes (test ids
    ``test_x[asyncio-thread]``); ``@pytest.mark.loopshim_scopes("process")`` narrows a
    test. Override it in a ``conftest.py`` like ``loop_backend``, with the scope of
    ``loopshim_loop_scope``::

        @pytest.fixture(scope="module", params=["process", "thread"])
        def loop_scope(request):
            return request.param

    .. versionadded:: 0.1
    """
    param = getattr(request, "param", None)
    return str(param) if param is not None else _settings(request.config).scope


@pytest.fixture(scope=_loop_scope)
def loop_runner(
    loop_backend: object, loop_scope: object, request: pytest.FixtureRequest
) -> Iterator[LoopRunner]:
    """A private runner for ``loop_backend`` in scope ``loop_scope``, shared by the tests
    and async fixtures of one ``loopshim_loop_scope`` (``module`` by default), and
    closed at its end. Its options are those ``loop_backend`` gives.

    In scope ``call`` every call gets a new loop: async tests and ``async def`` fixtures
    run (each on a loop of its own), async generator fixtures are refused, since their
    task would have to outlive the call that set them up.

    .. versionadded:: 0.1
    """
    runner = _make_runner(request.config, loop_backend, loop_scope, {})
    try:
        yield runner
    finally:
        runner.close()


class LoopRunnerFactory(Protocol):
    """The type of the ``loop_runner_factory`` fixture, for type hints.

    .. versionadded:: 0.1
    """

    def __call__(self, **options: Any) -> LoopRunner:
        """A private runner for the test's backend and scope, with *options* on top of
        those ``loop_backend`` gives; closed after the test."""
        ...


@pytest.fixture
def loop_runner_factory(
    loop_backend: object, loop_scope: object, request: pytest.FixtureRequest
) -> Iterator[LoopRunnerFactory]:
    """Make private runners for ``loop_backend`` in scope ``loop_scope``, with options of
    your own on top of those ``loop_backend`` gives; they are closed after the test::

        def test_slow_call(loop_runner_factory):
            with loop_runner_factory(timeout=0.1) as runner:
                with pytest.raises(TimeoutError):
                    runner.run(anyio.sleep, 1)

    .. versionadded:: 0.1
    """
    made: list[LoopRunner] = []

    def make(**options: Any) -> LoopRunner:
        runner = _make_runner(request.config, loop_backend, loop_scope, options)
        made.append(runner)
        return runner

    try:
        yield make
    finally:
        for runner in reversed(made):
            runner.close()


def _make_runner(
    config: pytest.Config, backend: object, scope: object, extra: Mapping[str, Any]
) -> LoopRunner:
    """A private runner for the ``loop_backend`` value *backend* in the ``loop_scope``
    value *scope*; the test is skipped if *backend* is a built-in backend whose library
    is not installed."""
    name, options = _backend_spec(backend)
    if scope not in SCOPES:
        raise UsageError(_not_a_scope("loop_scope", scope))
    builtin = BUILTIN_BACKENDS.get(name)
    if builtin is not None and name not in _installed(config):
        pytest.skip(f"backend {name!r} is not installed: {builtin.install_command}")
    return get_runner(name, scope=str(scope), cached=False, **{**options, **extra})


@pytest.fixture
def loop_app(request: pytest.FixtureRequest, loop_runner: LoopRunner) -> Iterator[Any]:
    """Your ``app`` fixture's Flask app, with everything Flask runs through
    ``ensure_sync`` on ``loop_runner`` — so on every backend, and on the same loop as
    the test's async fixtures::

        @pytest.fixture
        def app():
            return create_app()

        def test_home(loop_app):          # test_home[asyncio], [uvloop], [trio]
            assert loop_app.test_client().get("/").status_code == 200

    The app gets the :class:`~loopshim.flask.LoopShim` extension if it has none; its
    previous runner is restored afterwards.

    .. versionadded:: 0.1
    """
    try:
        app = request.getfixturevalue("app")
    except pytest.FixtureLookupError:
        pytest.fail(
            "loop_app needs a fixture named 'app' that returns your Flask app; define one "
            "in your conftest.py",
            pytrace=False,
        )
    from .flask import EXTENSION_KEY, LoopShim

    if EXTENSION_KEY not in app.extensions:
        LoopShim(app)
    previous = LoopShim.runner(app)
    app.loop_backend = loop_runner
    try:
        yield app
    finally:
        app.loop_backend = previous


# --- running tests and fixtures --------------------------------------------------------


def _context(node: pytest.Item | pytest.Collector) -> contextvars.Context:
    """The context the async code of *node* runs in: a copy of its parent's, made once."""
    context = node.stash.get(_context_key, None)
    if context is None:
        parent = node.parent
        while parent is not None and _context_key not in parent.stash:
            parent = parent.parent
        base = parent.stash[_context_key] if parent is not None else contextvars.copy_context()
        context = base.run(contextvars.copy_context)
        node.stash[_context_key] = context
    return context


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not _is_ours(pyfuncitem):
        return None
    __tracebackhide__ = True
    runner = pyfuncitem.funcargs["loop_runner"]
    assert isinstance(runner, LoopRunner)
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    test = functools.partial(pyfuncitem.obj, **kwargs)
    _call(runner, _context(pyfuncitem), test, pyfuncitem.name, pyfuncitem.config)
    return True


def _call(
    runner: LoopRunner,
    context: contextvars.Context,
    fn: Callable[[], Awaitable[T]],
    what: str,
    config: pytest.Config,
) -> T:
    """``fn()`` run to completion on *runner*, in *context*, for up to ``loopshim_timeout``
    seconds; *what* names it in the error.

    The time-out is the plugin's own, not the runner's ``timeout`` option, so that its
    error names ``loopshim_timeout``; and it is raised here, in pytest's thread and in
    hidden frames, so the report shows the message and no plugin or loopshim frame.
    """
    __tracebackhide__ = True
    timeout = _settings(config).timeout
    if timeout is None:
        return context.run(runner.run, fn)
    result = context.run(runner.run, _within, timeout, fn)
    if isinstance(result, _TimedOut):
        raise TimeoutError(
            f"{what} did not finish within {timeout:g} s and was cancelled "
            f"(loopshim_timeout = {timeout:g}). Raise loopshim_timeout in your pytest "
            "configuration, or remove it for no limit"
        ) from None
    return result


class _TimedOut:
    """What :func:`_within` returns when the time is up."""


async def _within(timeout: float, fn: Callable[[], Awaitable[T]]) -> T | _TimedOut:
    """``await fn()``, cancelled with the running library's own cancellation after
    *timeout* seconds."""
    library = running_library()
    assert library is not None  # called by a runner, on its loop
    outcome: list[tuple[T, contextvars.Context]] = []

    async def body() -> None:
        result = await fn()
        outcome.append((result, contextvars.copy_context()))

    if not await library.within(timeout, body):
        return _TimedOut()
    result, final_context = outcome[0]
    # asyncio runs body() as a task of its own: bring the variables it set (a fixture's)
    # into this call's context, which run() then copies back to the caller's.
    copy_back(final_context)
    return result


@pytest.hookimpl(specname="pytest_pyfunc_call")
def pytest_pyfunc_call_unclaimed(pyfuncitem: pytest.Function) -> None:
    """An ``async def`` test that no plugin ran: say how to run it with loopshim.

    Called before pytest's own call (``trylast``), which would fail with a generic list
    of plugins to install, and after the plugins that run async tests in a ``tryfirst``
    hook (anyio) or by making the test function sync first (pytest-asyncio, pytest-trio)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return
    if {mark.name for mark in pyfuncitem.iter_markers()} & FOREIGN_MARKERS.keys():
        return  # meant for another plugin: pytest's message names them
    pytest.fail(
        f"{pyfuncitem.nodeid} is an async def test, but nothing runs it: loopshim runs "
        f"only marked async tests (loopshim_mode = strict). Mark it @pytest.mark.{MARKER}, "
        "or set loopshim_mode = auto in your pytest configuration (or --loopshim-mode=auto) "
        "to run every async test on loopshim. (For another plugin, use its marker.)",
        pytrace=False,
    )


@pytest.hookimpl(wrapper=True, specname="pytest_pyfunc_call")
def pytest_pyfunc_call_sync_test(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    """Run a sync test that uses ``loop_runner`` in the context its async fixtures set
    their context variables in (the same copy an async test would run in)."""
    __tracebackhide__ = True
    test = pyfuncitem.obj
    if inspect.iscoroutinefunction(test) or "loop_runner" not in pyfuncitem.fixturenames:
        return (yield)
    context = _context(pyfuncitem)

    @functools.wraps(test)
    def in_context(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        return context.run(test, *args, **kwargs)

    # pytest's own call (and its checks of what the test returns) then runs it.
    pyfuncitem.obj = in_context
    try:
        return (yield)
    finally:
        pyfuncitem.obj = test


def _is_async_fixture(func: Callable[..., Any]) -> bool:
    if getattr(func, "_force_asyncio_fixture", False):  # @pytest_asyncio.fixture: theirs
        return False
    return inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)


@pytest.hookimpl(tryfirst=True, wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    __tracebackhide__ = True
    func = fixturedef.func
    if not _is_async_fixture(func) or "loop_runner" not in request.fixturenames:
        return (yield)
    refusal = _refusal(fixturedef, request)
    if refusal is not None:
        # Fail inside the fixture function, not in this hook: pytest then records the
        # failure as the fixture's result, for this test and every later one that asks
        # for the fixture (one per backend), and tears the fixture down in order.
        fixturedef.func = _refused(func, refusal)
        try:
            return (yield)
        finally:
            fixturedef.func = func
    # Have pytest resolve loop_runner (and request) for the fixture: this checks the
    # scopes and tears the fixture down before the runner closes.
    added = tuple(name for name in ("loop_runner", "request") if name not in fixturedef.argnames)
    original_argnames = fixturedef.argnames
    fixturedef.argnames = (*original_argnames, *added)
    fixturedef.func = _synchronous_fixture(func, added, fixturedef.argname, request.config)
    # pytest noted the fixture's dependencies before this hook added loop_runner: tie
    # the fixture's lifetime to the runner's, so a new backend gets a new fixture value.
    runner_fixturedef = request._get_active_fixturedef("loop_runner")
    runner_fixturedef.addfinalizer(functools.partial(fixturedef.finish, request=request))
    try:
        return (yield)
    finally:
        fixturedef.func = func
        fixturedef.argnames = original_argnames


def _refusal(fixturedef: Any, request: pytest.FixtureRequest) -> str | None:
    """Why an async fixture cannot run on the test's loop, or None if it can."""
    loop_scope = _settings(request.config).loop_scope
    scope = str(fixturedef.scope)
    if FIXTURE_SCOPES.index(scope) > FIXTURE_SCOPES.index(loop_scope):
        return (
            f"async fixture {fixturedef.argname!r} has scope {scope!r}, wider than the "
            f"loop it would run on (loopshim_loop_scope = {loop_scope!r}). Set "
            f"loopshim_loop_scope = {scope} in your pytest configuration, or give the "
            "fixture a narrower scope"
        )
    if (
        inspect.isasyncgenfunction(fixturedef.func)
        and request.getfixturevalue("loop_scope") == "call"
    ):
        return (
            f"async generator fixture {fixturedef.argname!r} needs a loop that outlives a "
            "call, from its setup to its teardown, and runner scope 'call' starts a new "
            "loop for every call. Run the test in scope process or thread (for instance "
            f'@pytest.mark.{SCOPES_MARKER}("process", "thread")), or make the fixture an '
            "async def that returns its value"
        )
    return None


def _refused(func: Callable[..., Any], reason: str) -> Callable[..., Any]:
    """A stand-in for the fixture function *func* that fails with *reason*."""

    @functools.wraps(func)
    def refused(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        pytest.fail(reason, pytrace=False)

    return refused


def _synchronous_fixture(
    func: Callable[..., Any], added: tuple[str, ...], name: str, config: pytest.Config
) -> Callable[..., Any]:
    """The sync fixture function pytest calls in place of the async one, *func*: it runs
    *func* on ``loop_runner`` (which, with ``request``, is in *added*: asked for by
    the plugin, not by *func*)."""

    def split(kwargs: dict[str, Any]) -> tuple[LoopRunner, contextvars.Context, dict[str, Any]]:
        runner, request = kwargs["loop_runner"], kwargs["request"]
        own = {name: value for name, value in kwargs.items() if name not in added}
        return runner, _context(request.node), own

    if inspect.isasyncgenfunction(func):

        @functools.wraps(func)
        def generator_fixture(*args: Any, **kwargs: Any) -> Iterator[Any]:
            __tracebackhide__ = True
            runner, context, own = split(kwargs)
            holder = _FixtureTask(func(*args, **own), func.__qualname__)
            value = _call(runner, context, holder.start, f"async fixture {name!r}", config)
            try:
                yield value
            finally:
                teardown = f"the teardown of async fixture {name!r}"
                _call(runner, context, holder.finish, teardown, config)

        return generator_fixture

    @functools.wraps(func)
    def coroutine_fixture(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        runner, context, own = split(kwargs)
        call = functools.partial(func, *args, **own)
        return _call(runner, context, call, f"async fixture {name!r}", config)

    return coroutine_fixture


class _FixtureTask:
    """One task that runs an async generator fixture from setup to teardown.

    Setup and teardown must run in the same task: trio's cancel scopes and nurseries, and
    asyncio's task groups and timeouts, refuse to be exited from another task than the
    one that entered them. The task is started by the setup call and parks at the
    fixture's ``yield`` until the teardown call wakes it.
    """

    def __init__(self, agen: AsyncGenerator[Any, None], name: str) -> None:
        self.agen = agen
        self.name = name
        self.ended = threading.Event()  # the task finished, whatever the reason
        self.value: Any = None
        self.error: BaseException | None = None
        self.final_context: contextvars.Context | None = None
        self._events: _Events | None = None
        self._cancel: Callable[[], object] | None = None

    async def start(self) -> Any:
        library = running_library()
        if library is None:
            raise UsageError(
                f"async generator fixture {self.name} must be set up inside a running loop"
            )
        events = self._events = _Events(library)
        self._cancel = library.start_task(
            self._body, context=contextvars.copy_context(), name=self.name
        )
        await self._wait(events.started)
        if self.error is not None:
            raise self._take_error()
        if self.final_context is not None:
            # run() copies this call's context back to the test's, and with it these.
            copy_back(self.final_context)
        return self.value

    async def finish(self) -> None:
        if not self.ended.is_set():
            assert self._events is not None
            self._events.resume.set()
            await self._wait(self._events.done)
        if self.error is not None:
            raise self._take_error()

    async def _wait(self, event: AsyncEvent) -> None:
        """Wait for the fixture's task to reach *event*; if this wait is cancelled (a
        time-out, Ctrl-C), cancel the task too."""
        try:
            await event.wait()
        except BaseException:
            assert self._cancel is not None
            self._cancel()
            raise

    def _take_error(self) -> BaseException:
        error, self.error = self.error, None
        assert error is not None
        return error

    async def _body(self) -> None:
        events = self._events
        assert events is not None
        try:
            await self._drive(events)
        finally:
            self.ended.set()
            events.started.set()
            events.done.set()

    async def _drive(self, events: _Events) -> None:
        try:
            self.value = await self.agen.__anext__()
        except BaseException as exc:
            self.error = exc
            return
        self.final_context = contextvars.copy_context()
        events.started.set()
        try:
            await events.resume.wait()
        except BaseException as exc:
            self.error = UsageError(
                f"async fixture {self.name} was cancelled at its yield, before pytest "
                f"tore it down ({exc!r}): its loop ended between setup and teardown. "
                "Use a runner whose loop outlives a call: scope process or thread, and "
                "for trio in thread scope the internal driver"
            )
            await self._close_quietly()
            raise
        try:
            await self.agen.__anext__()
        except StopAsyncIteration:
            return
        except BaseException as exc:
            self.error = exc
            return
        self.error = UsageError(
            f"async fixture {self.name} yielded more than once; a fixture yields exactly once"
        )
        await self._close_quietly()

    async def _close_quietly(self) -> None:
        try:
            await self.agen.aclose()
        except BaseException as exc:  # already failing: keep the first error
            if self.error is None:
                self.error = exc


class _Events:
    """The three events a fixture task and the test thread signal each other with."""

    def __init__(self, library: Library) -> None:
        self.started = library.new_event()
        self.resume = library.new_event()
        self.done = library.new_event()
