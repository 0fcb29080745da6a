"""The pytest plugin, exercised through pytest's own ``pytester``."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from typing import Any

import pytest

import loopshim

pytest_plugins = ["pytester"]

INSTALLED = loopshim.available_backends()
INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings = error
{extra}
"""

#: A test body that reports which library and loop it runs on.
WHERE = """
import asyncio, threading
import trio
from loopshim._core import running_library

def where():
    found = running_library()
    library = found.name if found is not None else None
    if library == "asyncio":
        loop = asyncio.get_running_loop()
        return library, type(loop).__module__.split(".")[0], id(loop)
    return library, "trio", id(trio.lowlevel.current_trio_token())
"""


def make(pytester: pytest.Pytester, source: str, ini: str = "", **files: str) -> None:
    pytester.makeini(INI.format(extra=ini))
    pytester.makepyfile(where=WHERE, **files)
    pytester.makepyfile(textwrap.dedent(source))


def reported(result: pytest.RunResult, message: str) -> int:
    """How many error reports start with ``message`` (the short summary, whose lines
    are cut or not depending on the terminal's width, is not counted)."""
    return sum(line.startswith(message) for line in result.outlines)


def ids(result: pytest.RunResult) -> list[str]:
    return [line.strip() for line in result.outlines if "::" in line]


def library_of(backend: str) -> tuple[str, str]:
    return {"asyncio": ("asyncio", "asyncio"), "uvloop": ("asyncio", "uvloop")}.get(
        backend, ("trio", "trio")
    )


MARKED = """
import pytest
from where import where

@pytest.mark.loopshim
async def test_where(loop_backend):
    library, loop_kind, _ = where()
    expected = {"asyncio": ("asyncio", "asyncio"), "uvloop": ("asyncio", "uvloop"),
                "trio": ("trio", "trio")}[loop_backend]
    assert (library, loop_kind) == expected

async def test_unmarked():
    pass
"""


def test_marked_test_runs_once_per_installed_backend(pytester: pytest.Pytester) -> None:
    make(pytester, MARKED)
    collected = pytester.runpytest("--collect-only", "-q")
    assert ids(collected) == [
        f"test_marked_test_runs_once_per_installed_backend.py::test_where[{name}]"
        for name in INSTALLED
    ] + ["test_marked_test_runs_once_per_installed_backend.py::test_unmarked"]
    result = pytester.runpytest("-v")
    # Strict mode: the unmarked async test is nobody's, so pytest fails it.
    result.assert_outcomes(passed=len(INSTALLED), failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked*FAILED*"])


@pytest.mark.parametrize("how", ["ini", "option"])
def test_auto_mode_claims_unmarked_tests(pytester: pytest.Pytester, how: str) -> None:
    make(pytester, MARKED, ini="loopshim_mode = auto" if how == "ini" else "")
    args = ["--loopshim-mode=auto"] if how == "option" else []
    pytester.runpytest(*args).assert_outcomes(passed=2 * len(INSTALLED))


def test_backends_option_narrows_and_orders(pytester: pytest.Pytester) -> None:
    make(pytester, MARKED)
    result = pytester.runpytest(
        "--collect-only", "-q", "--loopshim-backends=trio,asyncio", "-k", "where"
    )
    assert [i.split("[")[1] for i in ids(result)] == ["trio]", "asyncio]"]


def test_backends_ini_narrows(pytester: pytest.Pytester) -> None:
    make(pytester, MARKED, ini="loopshim_backends = trio")
    pytester.runpytest("-k", "where", "-v").stdout.fnmatch_lines(["*test_where?trio? PASSED*"])
    assert "asyncio]" not in pytester.runpytest("--collect-only", "-q").stdout.str()


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ["--loopshim-backends=asyncio,tiro"],
            "",
            "names 'tiro', which is not a loopshim "
            "backend; valid names: asyncio, trio, uvloop. Did you mean 'trio'?",
        ),
        ([], "loopshim_backends = gevent", "names 'gevent'"),
        (["--loopshim-backends=,"], "", "is empty"),
        (["--loopshim-mode=lazy"], "", "mode must be one of strict, auto; got 'lazy'"),
        (
            [],
            "loopshim_scope = global",
            "loopshim_scope: 'global' is not a runner scope; the scopes are process, thread, call.",
        ),
        (
            ["--loopshim-scopes=process,trhead"],
            "",
            "--loopshim-scopes / loopshim_scopes: 'trhead' is not a runner scope; the "
            "scopes are process, thread, call. Did you mean 'thread'?",
        ),
        ([], "loopshim_scopes = ,", "--loopshim-scopes / loopshim_scopes is empty"),
        ([], "loopshim_loop_scope = forever", "loopshim_loop_scope must be one of function"),
        ([], "loopshim_timeout = -1", "loopshim_timeout must be a finite number"),
        ([], "loopshim_timeout = soon", "got 'soon'"),
    ],
)
def test_bad_configuration_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    make(pytester, MARKED, ini=ini)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_known_but_missing_backend_is_skipped_with_install_hint(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate a machine without uvloop: the registry then reports it unavailable.
    import loopshim._core._registry as registry

    monkeypatch.setattr(
        registry, "available_backends", lambda: [n for n in INSTALLED if n != "uvloop"]
    )
    monkeypatch.setattr("loopshim.pytest_plugin.available_backends", registry.available_backends)
    make(pytester, MARKED)
    result = pytester.runpytest("--loopshim-backends=uvloop", "-k", "where", "-rs")
    result.assert_outcomes(skipped=1)
    hint = "backend 'uvloop' is not installed: pip install \"loopshim[uvloop]\""
    assert hint in result.stdout.str()


FIXTURES = """
import contextvars
import anyio
import pytest
from where import where

request_id = contextvars.ContextVar("request_id")
LOG = []

@pytest.fixture
async def value():
    await anyio.sleep(0)
    return 42

@pytest.fixture
async def resource():
    request_id.set("set-by-fixture")
    home = where()
    # A task group spans the yield: setup and teardown must run in one task.
    async with anyio.create_task_group() as tg:
        stopped = anyio.Event()
        tg.start_soon(stopped.wait)
        LOG.append("setup")
        yield home
        LOG.append("teardown")
        stopped.set()

@pytest.mark.loopshim
async def test_uses_fixtures(value, resource):
    assert value == 42
    assert where() == resource          # same library, same loop
    assert request_id.get() == "set-by-fixture"
    assert LOG[-1] == "setup"

def test_teardown_ran():
    n = len([x for x in LOG if x == "teardown"])
    assert LOG == ["setup", "teardown"] * n and n >= 1

@pytest.mark.loopshim
async def test_context_does_not_leak_between_tests():
    assert request_id.get("unset") == "unset"
"""


def test_async_fixtures_share_the_tests_loop_task_and_context(pytester: pytest.Pytester) -> None:
    make(pytester, FIXTURES)
    result = pytester.runpytest("-p", "no:randomly", "-v")
    result.assert_outcomes(passed=2 * len(INSTALLED) + 1)


MODULE_FIXTURE = """
import anyio
import pytest
from where import where

@pytest.fixture(scope="module")
async def shared():
    return where(), anyio.Event()

@pytest.mark.loopshim
async def test_first(shared):
    home, event = shared
    assert where() == home
    event.set()

@pytest.mark.loopshim
async def test_second(shared):
    home, event = shared
    assert where() == home       # the same loop, one module later
    await event.wait()
"""


@pytest.mark.parametrize("scope", ["process", "thread"])
def test_module_fixture_and_tests_share_one_loop(pytester: pytest.Pytester, scope: str) -> None:
    make(pytester, MODULE_FIXTURE, ini=f"loopshim_scope = {scope}")
    pytester.runpytest().assert_outcomes(passed=2 * len(INSTALLED))


def test_fixture_wider_than_the_loop_is_a_clear_error(pytester: pytest.Pytester) -> None:
    make(
        pytester,
        """
        import pytest

        @pytest.fixture(scope="session")
        async def pool():
            return 1

        @pytest.mark.loopshim
        async def test_pool(pool):
            pass
    """,
    )
    result = pytester.runpytest("--loopshim-backends=asyncio")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*async fixture 'pool' has scope 'session', wider than the loop it would run on "
            "(loopshim_loop_scope = 'module'). Set loopshim_loop_scope = session*"
        ]
    )
    pytester.makeini(INI.format(extra="loopshim_loop_scope = session"))
    pytester.runpytest("--loopshim-backends=asyncio").assert_outcomes(passed=1)


def test_failure_shows_the_assertion_and_the_test_line(pytester: pytest.Pytester) -> None:
    make(
        pytester,
        """
        import anyio
        import pytest

        async def helper():
            await anyio.sleep(0)
            return 1

        @pytest.mark.loopshim
        async def test_compare():
            got = await helper()
            assert got == 2, "helper gave the wrong answer"
    """,
    )
    result = pytester.runpytest("--loopshim-backends=trio")
    result.assert_outcomes(failed=1)
    [test_file] = pytester.path.glob("test_*.py")
    source = test_file.read_text().splitlines()
    line = next(n for n, text in enumerate(source, 1) if "assert got == 2" in text)
    result.stdout.fnmatch_lines(
        [
            '>       assert got == 2, "helper gave the wrong answer"',
            "E       AssertionError: helper gave the wrong answer",
            "E       assert 1 == 2",
            f"{test_file.name}:{line}: AssertionError",
        ]
    )
    # The plugin's own frames stay out of the way.
    assert "pytest_plugin.py" not in result.stdout.str()


def test_fixture_errors_are_reported_as_setup_and_teardown_errors(
    pytester: pytest.Pytester,
) -> None:
    make(
        pytester,
        """
        import pytest

        @pytest.fixture
        async def broken_setup():
            raise LookupError("no such database")
            yield

        @pytest.fixture
        async def broken_teardown():
            yield
            raise OSError("could not drop the database")

        @pytest.fixture
        async def greedy():
            yield 1
            yield 2

        @pytest.mark.loopshim
        async def test_a(broken_setup):
            pass

        @pytest.mark.loopshim
        async def test_b(broken_teardown):
            pass

        @pytest.mark.loopshim
        async def test_c(greedy):
            pass
    """,
    )
    result = pytester.runpytest("--loopshim-backends=asyncio,trio")
    result.assert_outcomes(passed=4, errors=6)
    out = result.stdout.str()
    assert out.count("LookupError: no such database") >= 2
    assert out.count("OSError: could not drop the database") >= 2
    assert "async fixture greedy yielded more than once" in out


def test_hanging_test_is_stopped_by_the_timeout(pytester: pytest.Pytester) -> None:
    make(
        pytester,
        """
        import anyio
        import pytest

        @pytest.mark.loopshim
        async def test_hangs():
            await anyio.sleep(3600)
    """,
        ini="loopshim_timeout = 0.2",
    )
    result = pytester.runpytest("-p", "no:timeout")
    result.assert_outcomes(failed=len(INSTALLED))
    result.stdout.fnmatch_lines(["*TimeoutError*"])


CONFTEST_OVERRIDE = """
import pytest

@pytest.fixture(scope="module", params=[
    "asyncio",
    pytest.param(("trio", {"driver": "public"}), id="trio-public"),
])
def loop_backend(request):
    return request.param
"""


def test_loop_backend_override_with_options(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST_OVERRIDE)
    make(
        pytester,
        """
        import pytest

        @pytest.mark.loopshim
        async def test_runner(loop_runner, loop_backend):
            name = loop_backend if isinstance(loop_backend, str) else loop_backend[0]
            assert loop_runner.name == name
    """,
        ini="loopshim_scope = thread",
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*test_runner?asyncio? PASSED*", "*test_runner?trio-public? PASSED*"]
    )


def test_generator_fixture_on_a_loop_that_ends_each_call_fails_clearly(
    pytester: pytest.Pytester,
) -> None:
    # trio's public driver in thread scope runs trio.run per call: the fixture's task
    # cannot survive until teardown. That must be an error, not a hang.
    pytester.makeconftest(CONFTEST_OVERRIDE)
    make(
        pytester,
        """
        import pytest

        @pytest.fixture
        async def held():
            yield 1

        @pytest.mark.loopshim
        async def test_held(held):
            assert held == 1
    """,
        ini="loopshim_scope = thread",
    )
    result = pytester.runpytest("-k", "trio")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*async fixture held was cancelled at its yield*"])


def test_bad_loop_backend_override(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import pytest

        @pytest.fixture(scope="module")
        def loop_backend():
            return 3
    """)
    make(
        pytester,
        """
        import pytest

        @pytest.mark.loopshim
        async def test_x():
            pass
    """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*loop_backend must give a backend name such as 'trio'*got 3*"])


def test_bad_loop_scope_override(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import pytest

        @pytest.fixture(scope="module")
        def loop_scope():
            return "proces"
    """)
    make(
        pytester,
        """
        import pytest

        @pytest.mark.loopshim
        async def test_x():
            pass
    """,
    )
    result = pytester.runpytest("--loopshim-backends=asyncio")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*loop_scope: 'proces' is not a runner scope; the scopes are process, thread, call.*"]
    )


def test_direct_parametrisation_wins(pytester: pytest.Pytester) -> None:
    make(
        pytester,
        """
        import pytest

        @pytest.mark.loopshim
        async def test_every_backend(loop_runner, loop_backend):
            assert loop_runner.name == loop_backend

        # After the other test, on another backend: loop_runner follows the mark.
        @pytest.mark.loopshim
        @pytest.mark.parametrize("loop_backend", ["trio"], indirect=True)
        async def test_x(loop_runner):
            assert loop_runner.name == "trio"
    """,
    )
    result = pytester.runpytest("-v", "--loopshim-backends=asyncio,uvloop")
    result.stdout.fnmatch_lines(["*test_x?trio? PASSED*"])
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize(("name", "value"), [("loop_backend", "trio"), ("loop_scope", "thread")])
def test_direct_parametrisation_must_be_indirect(
    pytester: pytest.Pytester, name: str, value: str
) -> None:
    make(
        pytester,
        f"""
        import pytest

        @pytest.mark.loopshim
        @pytest.mark.parametrize("{name}", ["{value}"], scope="module")
        async def test_direct(loop_runner):
            pass
    """,
    )
    pytester.runpytest().stdout.fnmatch_lines(
        [
            f"*test_direct parametrizes {name} directly, so the value would not reach "
            "loop_runner, which lives for a whole loopshim_loop_scope ('module'); add "
            "indirect=True to the parametrize mark"
        ]
    )
    # With a loop per test, the runner always follows the value.
    pytester.makeini(INI.format(extra="loopshim_loop_scope = function"))
    pytester.runpytest().assert_outcomes(passed=1 if name == "loop_backend" else len(INSTALLED))


FLASK = """
import pytest
from flask import Flask
from where import where

app_ = Flask(__name__)

@app_.get("/where")
async def where_view():
    return list(where())

@pytest.fixture
def app():
    return app_

@pytest.fixture
async def home():
    return list(where())

def test_views_run_on_each_backend(loop_app, loop_backend, home):
    body = loop_app.test_client().get("/where").get_json()
    assert body == home      # the view ran on the loop the async fixture ran on
"""


def test_loop_app_runs_a_flask_app_on_each_backend(pytester: pytest.Pytester) -> None:
    make(pytester, FLASK)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=len(INSTALLED))
    for name in INSTALLED:
        result.stdout.fnmatch_lines([f"*test_views_run_on_each_backend?{name}? PASSED*"])


def test_loop_app_without_an_app_fixture(pytester: pytest.Pytester) -> None:
    make(
        pytester,
        """
        def test_x(loop_app):
            pass
    """,
    )
    result = pytester.runpytest("--loopshim-backends=asyncio")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*loop_app needs a fixture named 'app'*"])


COEXIST = """
import pytest

@pytest.mark.asyncio
async def test_pytest_asyncio(request):
    assert "loop_runner" not in request.fixturenames

@pytest.mark.anyio
async def test_anyio(request):
    assert "loop_runner" not in request.fixturenames

@pytest.mark.loopshim
async def test_ours(loop_runner):
    pass

@pytest.mark.loopshim
@pytest.mark.asyncio
async def test_both():
    pass
"""


def test_coexists_with_pytest_asyncio_and_anyio(pytester: pytest.Pytester) -> None:
    make(pytester, COEXIST)
    result = pytester.runpytest_subprocess("-v")
    result.stdout.fnmatch_lines(
        [
            "*test_pytest_asyncio PASSED*",
            "*test_anyio?asyncio? PASSED*",
        ]
    )
    out = result.stdout.str()
    assert re.findall(r"test_ours\[(\w+)\] PASSED", out) == INSTALLED
    assert "is marked both @pytest.mark.loopshim and @pytest.mark.asyncio (pytest-asyncio)" in out
    anyio_runs = len(re.findall(r"test_anyio\[\w+\] PASSED", out))
    result.assert_outcomes(passed=1 + anyio_runs + len(INSTALLED), errors=len(INSTALLED))


def test_both_auto_modes_is_a_usage_error(pytester: pytest.Pytester) -> None:
    make(pytester, MARKED, ini="loopshim_mode = auto\nasyncio_mode = auto")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "both 'auto'" in result.stderr.str()


def test_marker_on_a_sync_test(pytester: pytest.Pytester) -> None:
    make(
        pytester,
        """
        import pytest

        @pytest.mark.loopshim
        def test_sync():
            pass
    """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*marked @pytest.mark.loopshim but is not an async def*"])


# --- issue 14, items 14-17 -------------------------------------------------------------

WIDE_FIXTURE = """
import pytest

@pytest.fixture(scope="session")
async def pool():
    return 1

@pytest.mark.loopshim
async def test_pool(pool):
    pass
"""


def test_fixture_wider_than_the_loop_is_a_clear_error_on_every_backend(
    pytester: pytest.Pytester,
) -> None:
    # With several backends, the fixture is set up once per backend: each must get the
    # message, none an internal error of pytest's.
    make(pytester, WIDE_FIXTURE)
    result = pytester.runpytest("--loopshim-backends=asyncio,trio,uvloop")
    result.assert_outcomes(errors=3)
    out = result.stdout.str()
    message = "async fixture 'pool' has scope 'session', wider than the loop it would run on"
    assert reported(result, message) == 3
    assert "_finalizers" not in out
    assert "INTERNALERROR" not in out


SYNC_TEST_CONTEXT = """
import contextvars
import pytest

tenant = contextvars.ContextVar("tenant")
request_id = contextvars.ContextVar("request_id")

@pytest.fixture(scope="module")
async def module_tenant():
    tenant.set("acme")

@pytest.fixture
async def request_scope(module_tenant):
    request_id.set("r-1")
    yield
    assert request_id.get() == "r-1"

async def read():
    return tenant.get(), request_id.get()

def test_sync(loop_runner, request_scope):
    assert (tenant.get(), request_id.get()) == ("acme", "r-1")
    assert loop_runner.run(read) == ("acme", "r-1")

def test_no_leak_into_other_tests():
    assert request_id.get("unset") == "unset"
"""


def test_a_sync_test_sees_context_variables_set_by_async_fixtures(
    pytester: pytest.Pytester,
) -> None:
    make(pytester, SYNC_TEST_CONTEXT)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=len(INSTALLED) + 1)


UNMARKED = """
async def test_unmarked():
    pass
"""


def test_an_unmarked_async_test_in_strict_mode_says_how_to_run_it(
    pytester: pytest.Pytester,
) -> None:
    make(pytester, UNMARKED)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "@pytest.mark.loopshim" in out
    assert "loopshim_mode = auto" in out
    assert "pytest-tornasync" not in out  # not pytest's generic list of plugins


TIMEOUTS = """
import anyio
import pytest

@pytest.fixture
async def slow_setup():
    await anyio.sleep(3600)

@pytest.fixture
async def slow_teardown():
    yield
    await anyio.sleep(3600)

@pytest.mark.loopshim
async def test_hangs():
    await anyio.sleep(3600)

@pytest.mark.loopshim
async def test_setup_hangs(slow_setup):
    pass

@pytest.mark.loopshim
async def test_teardown_hangs(slow_teardown):
    pass
"""


@pytest.mark.parametrize("scope", ["process", "thread"])
def test_the_timeout_names_loopshim_timeout_and_hides_the_plugin(
    pytester: pytest.Pytester, scope: str
) -> None:
    make(pytester, TIMEOUTS, ini=f"loopshim_timeout = 0.2\nloopshim_scope = {scope}")
    result = pytester.runpytest("-p", "no:timeout", "--loopshim-backends=asyncio,trio")
    # test_teardown_hangs passes, then errors at teardown.
    result.assert_outcomes(failed=2, passed=2, errors=4)
    out = result.stdout.str()
    for what in (
        "test_hangs",
        "async fixture 'slow_setup'",
        "the teardown of async fixture 'slow_teardown'",
    ):
        assert out.count(f"TimeoutError: {what}") >= 2, what
    assert "(loopshim_timeout = 0.2)" in out
    assert "'timeout' option" not in out
    assert "pytest_plugin.py" not in out
    assert "_core" not in out


#: Runs a pytest session (arguments from the command line) in a fresh interpreter and
#: prints, as JSON, what loopshim did there: exit and at-fork handlers registered by its
#: code, backend look-ups, optional libraries imported, runners made and threads started.
SESSION_PROBE = r"""
import atexit, gc, importlib.metadata, json, os, sys, threading

registered = []
queried = []
_register, _at_fork = atexit.register, os.register_at_fork
_entry_points = importlib.metadata.entry_points

def register(fn, *args, **kwargs):
    registered.append(getattr(fn, "__module__", "?"))
    return _register(fn, *args, **kwargs)

def register_at_fork(**hooks):
    registered.extend(getattr(fn, "__module__", "?") for fn in hooks.values())
    return _at_fork(**hooks)

def entry_points(**params):
    queried.append(params.get("group"))
    return _entry_points(**params)

atexit.register, os.register_at_fork = register, register_at_fork
importlib.metadata.entry_points = entry_points

import pytest

# Without the plugins that import async libraries themselves (hypothesis imports trio
# through its entry points).
plugins = ["no:cacheprovider", "no:anyio", "no:hypothesispytest"]
code = pytest.main([arg for name in plugins for arg in ("-p", name)] + ["-q", *sys.argv[1:]])
from loopshim._core import Runner

optional = {"trio", "uvloop", "anyio", "sniffio", "outcome", "flask", "werkzeug",
            "greenlet", "gevent", "asgiref", "httpx"}
print(json.dumps({
    "exit": int(code),
    "plugin": "loopshim.pytest_plugin" in sys.modules,
    "registered": sorted(m for m in registered if m.split(".")[0] == "loopshim"),
    "looked_up_backends": "loopshim.backends" in queried,
    "imported": sorted(m for m in sys.modules if m.split(".")[0] in optional),
    "runners": sum(isinstance(o, Runner) for o in gc.get_objects()),
    "threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("loopshim")),
}))
"""

PLAIN_SESSION = """
def test_plain():
    assert sum([1, 2]) == 3
"""


def probe_session(pytester: pytest.Pytester, source: str) -> dict[str, Any]:
    """Run *source* as the only test module of a session in a fresh interpreter."""
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile(test_plain=textwrap.dedent(source))
    probe = pytester.makepyfile(probe=SESSION_PROBE)
    result = pytester.run(sys.executable, str(probe), "test_plain.py")
    report: dict[str, Any] = json.loads(result.outlines[-1])
    return report


def test_a_session_without_loopshim_tests_makes_and_imports_nothing(
    pytester: pytest.Pytester,
) -> None:
    report = probe_session(pytester, PLAIN_SESSION)
    assert report["exit"] == 0
    assert report["plugin"]  # the plugin was loaded, through its entry point
    assert report["imported"] == []
    assert report["runners"] == 0
    assert report["threads"] == []
    assert not report["looked_up_backends"]


def test_a_session_without_loopshim_tests_registers_no_exit_or_fork_handler(
    pytester: pytest.Pytester,
) -> None:
    assert probe_session(pytester, PLAIN_SESSION)["registered"] == []


# --- the scope dimension ---------------------------------------------------------------

SCOPED = """
import pytest

@pytest.mark.loopshim
async def test_any(loop_runner, loop_scope):
    assert loop_runner.scope == loop_scope

@pytest.mark.loopshim
@pytest.mark.loopshim_scopes("thread", "call")
async def test_no_process(loop_runner, loop_scope):
    assert loop_scope in ("thread", "call")

def test_sync(loop_runner, loop_scope):
    assert loop_runner.scope == loop_scope
"""


@pytest.mark.parametrize("how", ["option", "ini"])
def test_scopes_option_adds_a_scope_dimension(pytester: pytest.Pytester, how: str) -> None:
    ini = "loopshim_scopes = process thread call" if how == "ini" else ""
    make(pytester, SCOPED, ini=ini)
    args = ["--loopshim-scopes=process,thread,call"] if how == "option" else []
    collected = ids(
        pytester.runpytest("--collect-only", "-q", "--loopshim-backends=asyncio,trio", *args)
    )
    module = "test_scopes_option_adds_a_scope_dimension.py"
    pairs = [f"{b}-{s}" for b in ("asyncio", "trio") for s in ("process", "thread", "call")]
    assert sorted(collected) == sorted(
        [f"{module}::test_any[{pair}]" for pair in pairs]
        + [f"{module}::test_no_process[{pair}]" for pair in pairs if "process" not in pair]
        + [f"{module}::test_sync[{pair}]" for pair in pairs]
    )
    result = pytester.runpytest("--loopshim-backends=asyncio,trio", *args)
    result.assert_outcomes(passed=6 + 4 + 6)


@pytest.mark.parametrize("scope", ["process", "thread", "call"])
def test_without_scopes_the_ids_and_scope_are_as_before(
    pytester: pytest.Pytester, scope: str
) -> None:
    make(pytester, SCOPED, ini=f"loopshim_scope = {scope}")
    result = pytester.runpytest("-v", "--loopshim-backends=asyncio")
    # One scope, loopshim_scope, and none in the ids; a test marked for other scopes
    # is deselected.
    if scope == "process":
        result.assert_outcomes(passed=2, deselected=1)
    else:
        result.assert_outcomes(passed=3)
        result.stdout.fnmatch_lines(["*test_no_process?asyncio? PASSED*"])
    result.stdout.fnmatch_lines(["*test_any?asyncio? PASSED*", "*test_sync?asyncio? PASSED*"])


VARIANT_CONFTEST = """
import pytest

@pytest.fixture(scope="module", params=[
    "trio",
    # trio's public driver differs from the internal one in thread scope only.
    pytest.param(
        ("trio", {"driver": "public"}),
        id="trio-public",
        marks=pytest.mark.loopshim_scopes("thread"),
    ),
])
def loop_backend(request):
    return request.param
"""


def test_a_backend_variant_may_run_in_some_scopes_only(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(VARIANT_CONFTEST)
    make(
        pytester,
        """
        import pytest

        @pytest.mark.loopshim
        async def test_x(loop_runner, loop_backend):
            pass

        def test_backend_only(loop_backend):
            pass
    """,
        ini="loopshim_scopes = process thread call",
    )
    result = pytester.runpytest("-v")
    # test_backend_only runs in loopshim_scope (process), where trio-public is not.
    result.assert_outcomes(passed=4 + 1, deselected=2 + 1)
    out = result.stdout.str()
    assert sorted(re.findall(r"::(test_\w+\[[\w-]+\]) PASSED", out)) == [
        "test_backend_only[trio]",
        "test_x[trio-call]",
        "test_x[trio-process]",
        "test_x[trio-public-thread]",
        "test_x[trio-thread]",
    ]


def test_loop_scope_may_be_overridden_or_parametrized(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import pytest

        @pytest.fixture(scope="module", params=["thread", "call"])
        def loop_scope(request):
            return request.param
    """)
    make(
        pytester,
        """
        import pytest

        @pytest.mark.loopshim
        async def test_overridden(loop_runner, loop_scope):
            assert loop_runner.scope == loop_scope

        @pytest.mark.loopshim
        @pytest.mark.parametrize("loop_scope", ["process"], indirect=True)
        async def test_parametrized(loop_runner):
            assert loop_runner.scope == "process"
    """,
        # Ignored here: the conftest and the mark choose.
        ini="loopshim_scopes = process thread call",
    )
    result = pytester.runpytest("-v", "--loopshim-backends=asyncio")
    result.assert_outcomes(passed=3)
    # pytest applies a conftest's parameters before the plugin's backends.
    result.stdout.fnmatch_lines(
        [
            "*test_overridden?thread-asyncio? PASSED*",
            "*test_overridden?call-asyncio? PASSED*",
            "*test_parametrized?asyncio-process? PASSED*",
        ]
    )


CALL_SCOPE = """
import asyncio
import pytest
import trio
from where import where

def current_loop():
    # The object itself, not its id: a closed loop's id may be reused by the next.
    if where()[0] == "asyncio":
        return asyncio.get_running_loop()
    return trio.lowlevel.current_trio_token()

@pytest.fixture
async def home():
    return where()[:2], current_loop()

@pytest.mark.loopshim
async def test_fresh_loops(home):
    kind, loop = home
    assert where()[:2] == kind
    assert current_loop() is not loop     # the fixture ran on a loop of its own

@pytest.fixture
async def held():
    yield 1

@pytest.mark.loopshim
async def test_held(held):
    pass
"""


def test_call_scope_runs_tests_and_refuses_generator_fixtures(pytester: pytest.Pytester) -> None:
    make(pytester, CALL_SCOPE, ini="loopshim_scope = call")
    result = pytester.runpytest("--loopshim-backends=asyncio,trio")
    result.assert_outcomes(passed=2, errors=2)
    out = result.stdout.str()
    assert reported(result, "async generator fixture 'held' needs a loop that outlives a call") == 2
    assert '@pytest.mark.loopshim_scopes("process", "thread")' in out


def test_loop_runner_factory_makes_runners_of_the_backend_and_scope(
    pytester: pytest.Pytester,
) -> None:
    make(
        pytester,
        """
        import anyio
        import pytest

        MADE = []

        def test_factory(loop_runner_factory, loop_runner, loop_backend, loop_scope):
            timed = loop_runner_factory(timeout=0.05)
            MADE.append(timed)
            assert (timed.name, timed.scope) == (loop_backend, loop_scope)
            assert timed is not loop_runner
            with pytest.raises(TimeoutError):
                timed.run(anyio.sleep, 10)
            assert loop_runner.run(anyio.sleep, 0) is None    # the runner has no limit

        def test_closed_after_the_test():
            assert len(MADE) == 2
            for runner in MADE:
                assert "closed" in repr(runner)
    """,
    )
    result = pytester.runpytest("--loopshim-backends=asyncio,trio", "--loopshim-scopes=thread")
    result.assert_outcomes(passed=3)


def test_directly_parametrized_missing_backend_is_skipped(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "loopshim.pytest_plugin.available_backends", lambda: [n for n in INSTALLED if n != "uvloop"]
    )
    make(
        pytester,
        """
        import pytest

        @pytest.mark.loopshim
        @pytest.mark.parametrize("loop_backend", ["asyncio", "uvloop"], indirect=True)
        async def test_x(loop_runner):
            pass
    """,
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert "backend 'uvloop' is not installed: pip install \"loopshim[uvloop]\"" in (
        result.stdout.str()
    )


@pytest.mark.parametrize(
    ("mark", "message"),
    [
        ('loopshim_scopes("proces")', "'proces' is not a runner scope"),
        ("loopshim_scopes()", "takes the scopes as arguments"),
        ('loopshim_scopes(scopes=["thread"])', "takes the scopes as arguments"),
    ],
)
def test_a_bad_scopes_mark_is_a_usage_error(
    pytester: pytest.Pytester, mark: str, message: str
) -> None:
    make(
        pytester,
        f"""
        import pytest

        @pytest.mark.{mark}
        def test_x(loop_runner):
            pass
    """,
    )
    for args in ([], ["--loopshim-scopes=process"]):
        result = pytester.runpytest(*args)
        assert result.ret != pytest.ExitCode.OK
        assert message in result.stdout.str() + result.stderr.str()
