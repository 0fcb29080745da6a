"""Flask's own test suite, with every app on LoopShim, gives the same outcomes as plain Flask.

The suite comes from the sdist of the installed Flask, which ``.ci/run`` downloads into
``.ci/cache/`` during set-up (``$LOOPSHIM_FLASK_SDIST`` may name another sdist or an
unpacked one): no network here. It runs in subprocesses, all at once — once plain and
once per backend/scope variant, every app getting ``LoopShim`` from
``flask_suite_plugin.py`` — with Flask's own pytest configuration and without
auto-loaded plugins (so neither loopshim's plugin nor pytest-asyncio takes part; both
runs load the same ones). Each variant must pass, fail and skip exactly the tests the
plain run does; the only differences allowed are the ones by design listed in
``BY_DESIGN``, each pinned to the error that causes it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask_suite_plugin as plugin
import pytest

pytest.importorskip("flask")

TESTS = Path(__file__).resolve().parent
CACHE = TESTS.parent / ".ci" / "cache"
SDIST_VAR = "LOOPSHIM_FLASK_SDIST"
FLASK_VERSION = importlib.metadata.version("flask")
PIP_DOWNLOAD = ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d"]
GET_SDIST = shlex.join([sys.executable, *PIP_DOWNLOAD, str(CACHE), f"flask=={FLASK_VERSION}"])

#: Each backend at least once, each scope at least once.
VARIANTS = [("asyncio", "process"), ("uvloop", "thread"), ("trio", "call")]
INSTALLED = [(b, s) for b, s in VARIANTS if importlib.util.find_spec(b) is not None]
#: Seconds for one test of Flask's suite, and for one whole run (a run takes ~3 s alone).
TEST_TIMEOUT = 30
RUN_TIMEOUT = 90
#: How much of a failure's text the message shows, for the first test of the first groups.
FULL_TEXTS, TEXT_LINES = 3, 60

#: Differences that are loopshim working as documented, by backend: test id -> a piece
#: of the error that must be why the test fails. Flask's test_async.py views await
#: ``asyncio.sleep(0)``; trio refuses asyncio's primitives at once (README, "trio works").
BY_DESIGN: dict[str, dict[str, str]] = {
    "trio": {
        f"tests/test_async.py::test_async_route[{path}]": (
            "trio.run received unrecognized yield message"
        )
        for path in ("/", "/home", "/bp/", "/view", "/methodview")
    },
}


#: Through the ASGI bridge (``loopshim.asgi.to_asgi``): (mode, the server loop's library).
#: Flask's test client drives the served ASGI application on a loop of that library in a
#: thread of its own, as a server would (flask_suite_plugin.AsgiDriver); what runs outside
#: a request (``app.ensure_sync`` in a test, a CLI command) uses the app's own runner,
#: :data:`ASGI_APP_RUNNER`.
ASGI_VARIANTS = [("greenlet", "asyncio"), ("thread", "asyncio"), ("greenlet", "trio")]
ASGI_INSTALLED = [
    (mode, loop)
    for mode, loop in ASGI_VARIANTS
    if all(importlib.util.find_spec(m) is not None for m in ("anyio", "greenlet", loop))
]
ASGI_APP_RUNNER = ("asyncio", "process")

#: Tests of Flask's suite that cannot apply to an app served by an ASGI server, with why:
#: any outcome is accepted for them through the bridge (they still run). A served
#: request's environ is made by the bridge from the ASGI scope, and the request runs in
#: the server loop's task, not in the test's thread: what the test client passes in the
#: environ beyond HTTP (``werkzeug.debug.preserve_context``, which keeps the request's
#: contexts for ``with client:``; ``environ_base`` keys) does not reach the app.
_KEPT_CONTEXT = (
    "`with client:` keeps the request's contexts after the request "
    "(werkzeug.debug.preserve_context), which the test then reads in its own thread"
)
_ERRORS_STREAM = (
    "the test client's errors_stream is wsgi.errors of its environ; a served request "
    "logs to the server's (sys.stderr), as under any server"
)
NOT_APPLICABLE: dict[str, str] = {
    "tests/test_basic.py::test_session_accessed": _KEPT_CONTEXT,
    "tests/test_basic.py::test_session_special_types": _KEPT_CONTEXT,
    "tests/test_testing.py::test_environ_base_default": _KEPT_CONTEXT,
    "tests/test_testing.py::test_environ_base_modified": _KEPT_CONTEXT,
    "tests/test_testing.py::test_redirect_session": _KEPT_CONTEXT,
    "tests/test_testing.py::test_test_client_context_binding": _KEPT_CONTEXT,
    "tests/test_testing.py::test_full_url_request": _KEPT_CONTEXT,
    "tests/test_testing.py::test_json_request_and_response": _KEPT_CONTEXT,
    "tests/test_logging.py::test_wsgi_errors_stream": _ERRORS_STREAM,
    "tests/test_logging.py::test_log_view_exception": _ERRORS_STREAM,
}


def _asgi_name(mode: str, loop: str) -> str:
    return f"asgi-{mode}/{loop}"


@dataclass
class Run:
    """One run of Flask's suite, as its report says: each test's outcome and failure
    text, and how many apps got LoopShim, on which runners."""

    name: str
    outcomes: dict[str, list[str]]
    attached: dict[str, Any]


def _find_sdist() -> Path:
    given = os.environ.get(SDIST_VAR)
    if given:
        if not Path(given).exists():
            pytest.fail(f"${SDIST_VAR} names {given}, which does not exist")
        return Path(given)
    sdist = CACHE / f"flask-{FLASK_VERSION}.tar.gz"
    if not sdist.is_file():
        pytest.skip(
            f"no sdist of the installed Flask {FLASK_VERSION} in {CACHE} (nor in "
            f"${SDIST_VAR}); .ci/run fetches it, or by hand: {GET_SDIST}"
        )
    return sdist


def _unpack(sdist: Path, into: Path) -> Path:
    """The source tree of *sdist* (a .tar.gz, or a directory already unpacked)."""
    if sdist.is_file():
        with tarfile.open(sdist) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(into, filter="data")
            else:  # pragma: no cover - Python without PEP 706's filters
                archive.extractall(into)
        (sdist,) = (path for path in into.iterdir() if path.is_dir())
    version = re.search(r"^Version: (\S+)$", (sdist / "PKG-INFO").read_text(), re.MULTILINE)
    if version is None or version[1] != FLASK_VERSION:
        pytest.fail(
            f"{sdist} is Flask {version[1] if version else '?'}'s source, but Flask "
            f"{FLASK_VERSION} is installed: its tests would test another Flask. Get the "
            f"right one with: {GET_SDIST}"
        )
    return sdist


def _run_suite(
    source: Path,
    work: Path,
    backend: str | None,
    scope: str | None,
    asgi: tuple[str, str] | None = None,
) -> Run:
    name = f"{backend}/{scope}" if backend else "plain"
    if asgi is not None:
        name = _asgi_name(*asgi)
    slug = name.replace("/", "-")
    report = work / f"{slug}.json"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "LOOPSHIM_SUITE_"))
    }
    env.update(
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        **{plugin.REPORT_VAR: str(report)},
    )
    if backend is not None and scope is not None:
        env.update({plugin.BACKEND_VAR: backend, plugin.SCOPE_VAR: scope})
    if asgi is not None:
        env.update({plugin.ASGI_VAR: asgi[0], plugin.ASGI_LOOP_VAR: asgi[1]})
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "flask_suite_plugin",
        "-p",
        "pytest_timeout",
        f"--timeout={TEST_TIMEOUT}",
        "-q",
        f"--basetemp={work / f'basetemp-{slug}'}",
        "tests",
    ]
    try:
        done = subprocess.run(
            command, cwd=source, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        pytest.fail(
            f"Flask's suite ({name}) did not finish in {RUN_TIMEOUT} s; its output ends:\n"
            f"{output[-3000:]}"
        )
    # 0: all passed, 1: some failed; anything else means the run itself went wrong.
    if done.returncode not in (0, 1) or not report.is_file():
        pytest.fail(
            f"Flask's suite ({name}) ended with exit code {done.returncode} and "
            f"{'a' if report.is_file() else 'no'} report; its output ends:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    data = json.loads(report.read_text(encoding="utf-8"))
    return Run(name, data["outcomes"], data["attached"])


@pytest.fixture(scope="module")
def suite_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Run]]]:
    """Every run, started at once in the background: plain and one per variant."""
    work = tmp_path_factory.mktemp("flask-suite")
    source = _unpack(_find_sdist(), work)
    runs: list[tuple[str | None, str | None]] = [(None, None), *INSTALLED]
    with ThreadPoolExecutor(max_workers=len(runs) + len(ASGI_INSTALLED)) as pool:
        futures = {
            f"{backend}/{scope}" if backend else "plain": pool.submit(
                _run_suite, source, work, backend, scope
            )
            for backend, scope in runs
        }
        for mode, loop in ASGI_INSTALLED:
            futures[_asgi_name(mode, loop)] = pool.submit(
                _run_suite, source, work, *ASGI_APP_RUNNER, (mode, loop)
            )
        yield futures


def _summary(text: str) -> str:
    """The lines of a failure text that say what went wrong, for each failing phase: the
    first ``E`` line, where it was raised, and the last exception (with a message) that
    the test logged or printed, which is the one to read when a view failed with a 500."""
    lines = []
    for phase in text.split(plugin.PHASE_MARK)[1:]:
        when, _, body = phase.partition("\n")
        rows = body.splitlines()
        first_e = next((i for i, row in enumerate(rows) if row.startswith("E   ")), None)
        picked = [] if first_e is None else [rows[first_e].removeprefix("E").strip()]
        start = first_e or 0
        picked += [row for row in rows[start:] if re.match(r"^\S+:\d+: \w+$", row)][:1]
        captured = next((i for i, row in enumerate(rows) if row.startswith("----- Captured")), None)
        logged = [
            row
            for row in rows[captured or len(rows) :]
            if re.match(r"^\w+(\.\w+)*(Error|Exception|Exit): ", row)
        ]
        picked += [row for row in logged[-1:] if row not in picked]
        picked = picked or [row for row in rows if row.strip()][-1:]
        lines += [f"    {when.strip()}: {picked[0][:200]}"]
        lines += [f"    {' ' * len(when.strip())}  {row[:200]}" for row in picked[1:]]
    return "\n".join(lines) or "    (no failure text)"


def _differences(
    plain: Run, run: Run, by_design: dict[str, str], ignored: Iterable[str] = ()
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The tests whose outcome differs (id, plain outcome, run outcome), in the order
    they ran — but for the *ignored* ones — and the by-design differences that did not
    show up as designed."""
    differing = []
    unmet = dict(by_design)
    skip = set(ignored)
    for test_id in dict.fromkeys([*run.outcomes, *plain.outcomes]):
        if test_id in skip:
            continue
        before = plain.outcomes.get(test_id, ["not run", ""])[0]
        after, text = run.outcomes.get(test_id, ["not run", ""])
        reason = unmet.get(test_id)
        if reason is not None and (before, after) == ("passed", "failed") and reason in text:
            del unmet[test_id]
        elif before != after:
            differing.append((test_id, before, after))
    return differing, [f"{test_id}: fails with {why!r}" for test_id, why in unmet.items()]


def _report(plain: Run, run: Run, differing: list[tuple[str, str, str]], unmet: list[str]) -> str:
    lines = [
        f"Flask {FLASK_VERSION}'s suite with every app on LoopShim({run.name}) differs from "
        f"the plain run in {len(differing)} of {len(plain.outcomes)} tests (grouped by "
        f"outcome and error, in the order they ran: the first is often why the rest fail)."
    ]
    groups: dict[tuple[str, str, str], list[str]] = {}
    for test_id, before, after in differing:
        key = (before, after, _summary(run.outcomes.get(test_id, ["", ""])[1]))
        groups.setdefault(key, []).append(test_id)
    for (before, after, summary), test_ids in groups.items():
        count = f"{len(test_ids)} test{'s' if len(test_ids) > 1 else ''}"
        lines.append(f"\nplain: {before} -> LoopShim: {after} ({count})")
        lines.append(summary)
        lines.extend(f"  - {test_id}" for test_id in test_ids)
    if unmet:
        lines.append("\nExpected by design, but not so (update BY_DESIGN if loopshim changed):")
        lines.extend(f"  - {line}" for line in unmet)
    firsts = [(test_ids[0], after) for (_, after, _), test_ids in groups.items()]
    for test_id, after in firsts[:FULL_TEXTS]:
        text = run.outcomes.get(test_id, ["", "(not run)"])[1].splitlines()
        shown = "\n".join(text[-TEXT_LINES:])
        lines.append(f"\n===== {test_id} ({after}), last {TEXT_LINES} lines =====\n{shown}")
    return "\n".join(lines)


def test_plain_run_is_flasks_suite(suite_runs: dict[str, Future[Run]]) -> None:
    plain = suite_runs["plain"].result()
    outcomes = [outcome for outcome, _ in plain.outcomes.values()]
    assert len(outcomes) > 400, f"only {len(outcomes)} tests ran: not Flask's whole suite"
    not_passed = {test_id: o for test_id, (o, _) in plain.outcomes.items() if o != "passed"}
    assert len(not_passed) < 0.1 * len(outcomes), not_passed
    assert "error" not in not_passed.values(), not_passed
    assert plain.attached == {"apps": 0, "runners": [], "served": 0}


@pytest.mark.parametrize(
    ("backend", "scope"),
    [
        pytest.param(
            backend,
            scope,
            id=f"{backend}-{scope}",
            marks=[] if (backend, scope) in INSTALLED else [pytest.mark.skip(f"no {backend}")],
        )
        for backend, scope in VARIANTS
    ],
)
def test_same_outcomes_with_loopshim(
    suite_runs: dict[str, Future[Run]], backend: str, scope: str
) -> None:
    run = suite_runs[f"{backend}/{scope}"].result()
    plain = suite_runs["plain"].result()
    assert run.attached["apps"] > 100, "LoopShim was not attached to Flask's apps"
    assert run.attached["runners"] == [[backend, scope]]
    differing, unmet = _differences(plain, run, BY_DESIGN.get(backend, {}))
    if differing or unmet:
        pytest.fail(_report(plain, run, differing, unmet), pytrace=False)


@pytest.mark.parametrize(
    ("mode", "loop"),
    [
        pytest.param(
            mode,
            loop,
            id=f"asgi-{mode}-{loop}",
            marks=[] if (mode, loop) in ASGI_INSTALLED else [pytest.mark.skip(f"no {loop}")],
        )
        for mode, loop in ASGI_VARIANTS
    ],
)
def test_same_outcomes_through_the_asgi_bridge(
    suite_runs: dict[str, Future[Run]], mode: str, loop: str
) -> None:
    run = suite_runs[_asgi_name(mode, loop)].result()
    plain = suite_runs["plain"].result()
    assert run.attached["served"] > 100, "the apps were not served through to_asgi"
    assert run.attached["runners"] == [list(ASGI_APP_RUNNER)]
    differing, unmet = _differences(plain, run, BY_DESIGN.get(loop, {}), NOT_APPLICABLE)
    if differing or unmet:
        pytest.fail(_report(plain, run, differing, unmet), pytrace=False)
