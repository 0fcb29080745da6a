"""A pytest plugin for running *Flask's own* test suite with every app on LoopShim.

Load it into a run of Flask's suite (from the Flask sdist) with ``-p``, the directory of
this file on ``PYTHONPATH``::

    LOOPSHIM_SUITE_BACKEND=trio LOOPSHIM_SUITE_SCOPE=call \\
        PYTHONPATH=/path/to/loopshim/tests python -m pytest -p flask_suite_plugin tests

With ``LOOPSHIM_SUITE_BACKEND`` set, every :class:`flask.Flask` created afterwards —
the ``app`` fixture, apps that tests create themselves, subclasses that call
``super().__init__`` — gets ``LoopShim(app, backend=..., scope=...)`` as the last step
of its ``__init__``. ``LOOPSHIM_SUITE_SCOPE`` picks the scope (default ``process``).
An app's own ``LOOPSHIM_*`` config keys would still win, as for any app.

With ``LOOPSHIM_SUITE_ASGI`` set too (``greenlet`` or ``thread``), every app is also served
through ``loopshim.asgi.to_asgi`` in that mode, and every request Flask's test client
makes (through ``Flask.__call__``) goes through the ASGI bridge instead of the WSGI call:
the environ becomes an ASGI scope, the app runs as the ASGI application on an event loop
of ``LOOPSHIM_SUITE_ASGI_LOOP`` (``asyncio``, default, or ``trio``) in a thread of its own
(anyio's blocking portal), as a server would run it, and the response comes back to the
test client. The app's own runner (``LOOPSHIM_SUITE_BACKEND``) serves what runs outside a
request.

Without ``LOOPSHIM_SUITE_BACKEND`` it attaches nothing, so the plain run loads it too and
the runs differ in that one variable only. In every run it

- restores ``_pytest.monkeypatch.notset``, a private name that Flask's suite imports and
  that pytest 9.1 dropped (it is pytest's ``NOTSET`` sentinel under its old name);
- with ``LOOPSHIM_SUITE_REPORT`` set to a file name, writes there, as JSON, the outcome
  of every test in the order they ran, ``"outcomes": {node id: [outcome, failure text]}``
  (collection errors included), and ``"attached"``: how many apps got LoopShim and with
  which runners (backend, scope).

``test_flask_suite.py`` drives it and compares the runs.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import pytest

BACKEND_VAR = "LOOPSHIM_SUITE_BACKEND"
SCOPE_VAR = "LOOPSHIM_SUITE_SCOPE"
ASGI_VAR = "LOOPSHIM_SUITE_ASGI"
ASGI_LOOP_VAR = "LOOPSHIM_SUITE_ASGI_LOOP"
REPORT_VAR = "LOOPSHIM_SUITE_REPORT"
#: Starts the text of each failing phase (setup, call, teardown, collect) of a test.
PHASE_MARK = "===== failed in"


def _restore_pytest_notset() -> None:
    from _pytest import compat, monkeypatch

    if not hasattr(monkeypatch, "notset"):
        monkeypatch.notset = compat.NOTSET  # type: ignore[attr-defined]


#: How many apps got LoopShim, and the (backend, scope) of the runners they got. Counts
#: only: a reference to an app would keep it alive (Flask's suite checks apps are freed).
attached: dict[str, Any] = {"apps": 0, "runners": set(), "served": 0}


def _attach_loopshim_to_every_app(backend: str, scope: str, asgi: str | None) -> None:
    import flask

    from loopshim.flask import LoopShim

    original_init = flask.Flask.__init__

    @functools.wraps(original_init)
    def __init__(self: flask.Flask, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        LoopShim(self, backend=backend, scope=scope)
        runner = LoopShim.runner(self)
        attached["apps"] += 1
        attached["runners"].add((runner.name, runner.scope))
        if asgi is not None:
            from loopshim.asgi import to_asgi

            # The ASGI application keeps the app alive; the app refers only to what it
            # serves (Flask's suite checks that apps are freed), so keep neither here.
            to_asgi(self, mode=asgi)
            attached["served"] += 1

    flask.Flask.__init__ = __init__  # type: ignore[method-assign]


class AsgiDriver:
    """Flask's test client, through the ASGI bridge: ``Flask.__call__`` turns the
    environ into an ASGI scope and runs the app's served ASGI application on a loop in
    a thread of its own (anyio's blocking portal), as a server would."""

    def __init__(self, library: str) -> None:
        import anyio.from_thread

        self._portal_cm = anyio.from_thread.start_blocking_portal(library)
        self.portal = self._portal_cm.__enter__()

    def close(self) -> None:
        self._portal_cm.__exit__(None, None, None)

    def install(self) -> None:
        import flask

        driver = self

        def __call__(
            self: flask.Flask, environ: dict[str, Any], start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            served = self.extensions["loopshim"].served
            outcome = driver.portal.call(_serve, served, environ)
            if isinstance(outcome, BaseException):
                raise outcome  # a view's KeyboardInterrupt: raised here, as without ASGI
            status, headers, body = outcome
            start_response(status, headers)
            return body

        flask.Flask.__call__ = __call__  # type: ignore[method-assign,assignment]


def _scope(environ: dict[str, Any]) -> dict[str, Any]:
    """The ASGI HTTP scope of a WSGI environ."""
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key
        else:
            continue
        headers.append((name.replace("_", "-").lower().encode("latin-1"), value.encode("latin-1")))
    root = environ.get("SCRIPT_NAME", "")
    path = root + environ.get("PATH_INFO", "")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": environ.get("SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2] or "1.1",
        "method": environ["REQUEST_METHOD"],
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": path.encode("latin-1").decode("utf-8", "replace"),
        "raw_path": path.encode("latin-1"),
        "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
        "root_path": root.encode("latin-1").decode("utf-8", "replace"),
        "headers": headers,
        "client": (environ.get("REMOTE_ADDR", "127.0.0.1"), int(environ.get("REMOTE_PORT") or 0)),
        "server": (environ.get("SERVER_NAME", "localhost"), int(environ.get("SERVER_PORT") or 80)),
    }


async def _serve(
    served: Any, environ: dict[str, Any]
) -> tuple[str, list[Any], list[bytes]] | BaseException:
    """Run one request through the served ASGI application (on the portal's loop). A
    BaseException other than a cancellation (a view's KeyboardInterrupt) is returned, to
    be raised in the test's thread: raised here, it would end the portal's loop."""
    import anyio

    try:
        return await _serve_one(served, environ)
    except anyio.get_cancelled_exc_class():
        raise
    except Exception:
        raise
    except BaseException as exc:
        return exc


async def _serve_one(served: Any, environ: dict[str, Any]) -> tuple[str, list[Any], list[bytes]]:
    import anyio

    stream = environ.get("wsgi.input")
    length = environ.get("CONTENT_LENGTH")
    # What is left of the body; None: read to the end. Read as the app asks for it, as a
    # server does: werkzeug's test client sends the same stream again when it follows a
    # 307/308 redirect, which the app answered without reading the body.
    left: int | None = int(length) if length else None
    more = stream is not None and left != 0
    done = anyio.Event()
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal left, more
        if more:
            assert stream is not None
            chunk = stream.read(65536 if left is None else min(65536, left))
            if left is not None:
                left -= len(chunk)
            more = bool(chunk) and left != 0
            return {"type": "http.request", "body": chunk, "more_body": more}
        await done.wait()  # the client stays connected until the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    try:
        await served(_scope(environ), receive, send)
    finally:
        done.set()
    status = int(start["status"])
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
    return f"{status} {reason}".strip(), headers, chunks


class OutcomeRecorder:
    """Collects one outcome per test id and writes them all, as JSON, at the end.

    A test's outcome is its call's ("passed", "failed", "skipped", "xfailed"...); "error"
    if its setup (or its module's collection) failed; a failing teardown appends
    " + error in teardown". The failure texts of all its phases are kept with it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.outcomes: dict[str, list[str]] = {}

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        when = getattr(report, "when", "collect")
        if report.passed and when != "call":
            return
        if report.failed and when == "teardown":
            outcome, text = self.outcomes.get(report.nodeid, ["passed", ""])
            self.outcomes[report.nodeid] = [
                f"{outcome} + error in teardown",
                f"{text}\n{self._text(report)}".lstrip("\n"),
            ]
            return
        if report.failed and when in ("setup", "collect"):
            outcome = "error"
        elif report.skipped and hasattr(report, "wasxfail"):
            outcome = "xfailed"
        else:
            outcome = report.outcome
        self.outcomes[report.nodeid] = [outcome, self._text(report)]

    @staticmethod
    def _text(report: pytest.CollectReport | pytest.TestReport) -> str:
        """The skip reason; or, for a failure, a ``{PHASE_MARK} <phase>`` line, the
        traceback and what the test logged and printed."""
        if not report.failed:
            return report.longreprtext
        text = f"{PHASE_MARK} {getattr(report, 'when', 'collect')}\n{report.longreprtext}"
        for title, content in report.sections:
            text += f"\n----- {title} -----\n{content}"
        return text

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if not report.passed:
            self._record(report)

    def pytest_unconfigure(self) -> None:
        report = {
            "attached": {
                "apps": attached["apps"],
                "runners": sorted(attached["runners"]),
                "served": attached["served"],
            },
            "outcomes": self.outcomes,  # in the order the tests ran
        }
        with open(self.path, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=1)


_driver: AsgiDriver | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _driver
    _restore_pytest_notset()
    backend = os.environ.get(BACKEND_VAR)
    asgi = os.environ.get(ASGI_VAR) or None
    if backend:
        _attach_loopshim_to_every_app(backend, os.environ.get(SCOPE_VAR) or "process", asgi)
        if asgi is not None:
            _driver = AsgiDriver(os.environ.get(ASGI_LOOP_VAR) or "asyncio")
            _driver.install()
    report = os.environ.get(REPORT_VAR)
    if report:
        config.pluginmanager.register(OutcomeRecorder(report), "loopshim-suite-outcomes")


def pytest_unconfigure(config: pytest.Config) -> None:
    global _driver
    if _driver is not None:
        _driver.close()
        _driver = None


def pytest_report_header(config: pytest.Config) -> str:
    backend = os.environ.get(BACKEND_VAR)
    if not backend:
        return "flask_suite_plugin: plain Flask, no LoopShim"
    scope = os.environ.get(SCOPE_VAR) or "process"
    asgi = os.environ.get(ASGI_VAR)
    served = (
        f", served through to_asgi(mode={asgi!r}) on {os.environ.get(ASGI_LOOP_VAR) or 'asyncio'}"
        if asgi
        else ""
    )
    return f"flask_suite_plugin: every Flask app on LoopShim({backend!r}, scope={scope!r}){served}"
