"""The backends loopshim's own suite runs on, through loopshim's pytest plugin.

The plugin parametrises every test that uses ``loop_backend``, ``loop_scope`` or
``loop_runner``: over the backends below (this ``loop_backend`` overrides the plugin's)
and over the scopes of ``loopshim_scopes`` in ``pyproject.toml`` (process, thread and
call), with a fresh runner per test (``loopshim_loop_scope = function``). A test narrows
them with ``@pytest.mark.loopshim_scopes(...)`` and
``@pytest.mark.parametrize("loop_backend", [...])``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import pytest
from servers import postgres_dsn, redis_url  # noqa: F401 - session fixtures (real servers)
from third_party_backend import PlainAsyncioBackend

import loopshim


class BackendCase(NamedTuple):
    """A backend under test: a name plus the options that select a variant of it. A
    ``(name, options)`` pair, as the plugin's ``loop_backend`` may give."""

    name: str
    options: dict[str, Any]


def _case(
    id: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    requires: str | None = None,
    scopes: tuple[str, ...] = (),
) -> Any:
    """A ``loop_backend`` parameter: skipped if *requires* is not installed, and run only
    in *scopes* if given (the scopes where a variant differs from the plain backend)."""
    marks: list[pytest.MarkDecorator] = []
    if requires is not None and importlib.util.find_spec(requires) is None:
        marks.append(pytest.mark.skip(reason=f"{requires} not installed"))
    if scopes:
        marks.append(pytest.mark.loopshim_scopes(*scopes))
    case = BackendCase(name, dict(options or {}))
    return pytest.param(case, id=id, marks=marks)


BACKENDS = [
    _case("asyncio", "asyncio"),
    _case("uvloop", "uvloop", requires="uvloop"),
    _case("trio", "trio", requires="trio"),
    # A backend written against loopshim.abc only, as a third party would: the suites
    # run on it too, proving that such a backend gets every scope and guarantee.
    _case("third-party", "third_party"),
    # trio's thread scope with public API only: a fresh trio.run per call.
    _case("trio-public", "trio", {"driver": "public"}, requires="trio", scopes=("thread",)),
]


@pytest.fixture(params=BACKENDS)
def loop_backend(request: pytest.FixtureRequest) -> Iterator[BackendCase]:
    """The backend under test (overrides the plugin's fixture of that name). The
    third-party backend is registered for its own test cases only: other tests count
    the backends."""
    case: BackendCase = request.param
    if case.name != "third_party":
        yield case
        return
    loopshim.register_backend("third_party", PlainAsyncioBackend, replace=True)
    try:
        yield case
    finally:
        from loopshim._core import _registry

        _registry._registered.pop("third_party", None)
