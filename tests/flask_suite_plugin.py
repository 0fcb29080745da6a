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
from typing import Any

import pytest

BACKEND_VAR = "LOOPSHIM_SUITE_BACKEND"
SCOPE_VAR = "LOOPSHIM_SUITE_SCOPE"
REPORT_VAR = "LOOPSHIM_SUITE_REPORT"
#: Starts the text of each failing phase (setup, call, teardown, collect) of a test.
PHASE_MARK = "===== failed in"


def _restore_pytest_notset() -> None:
    from _pytest import compat, monkeypatch

    if not hasattr(monkeypatch, "notset"):
        monkeypatch.notset = compat.NOTSET  # type: ignore[attr-defined]


#: How many apps got LoopShim, and the (backend, scope) of the runners they got. Counts
#: only: a reference to an app would keep it alive (Flask's suite checks apps are freed).
attached: dict[str, Any] = {"apps": 0, "runners": set()}


def _attach_loopshim_to_every_app(backend: str, scope: str) -> None:
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

    flask.Flask.__init__ = __init__  # type: ignore[method-assign]


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
            "attached": {"apps": attached["apps"], "runners": sorted(attached["runners"])},
            "outcomes": self.outcomes,  # in the order the tests ran
        }
        with open(self.path, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=1)


def pytest_configure(config: pytest.Config) -> None:
    _restore_pytest_notset()
    backend = os.environ.get(BACKEND_VAR)
    if backend:
        _attach_loopshim_to_every_app(backend, os.environ.get(SCOPE_VAR) or "process")
    report = os.environ.get(REPORT_VAR)
    if report:
        config.pluginmanager.register(OutcomeRecorder(report), "loopshim-suite-outcomes")


def pytest_report_header(config: pytest.Config) -> str:
    backend = os.environ.get(BACKEND_VAR)
    if not backend:
        return "flask_suite_plugin: plain Flask, no LoopShim"
    scope = os.environ.get(SCOPE_VAR) or "process"
    return f"flask_suite_plugin: every Flask app on LoopShim({backend!r}, scope={scope!r})"
