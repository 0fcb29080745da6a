from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from servers import postgres_dsn, redis_url  # noqa: F401 - session fixtures (real servers)
from third_party_backend import PlainAsyncioBackend

import loopshim

SCOPES = ["process", "thread", "call"]


@dataclass(frozen=True)
class BackendCase:
    """A backend under test: a name plus the options that select a variant of it."""

    id: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    requires: str | None = None
    #: Scopes where this variant differs from the plain backend (None: all).
    scopes: tuple[str, ...] | None = None


BACKENDS = [
    BackendCase("asyncio", "asyncio"),
    BackendCase("uvloop", "uvloop", requires="uvloop"),
    BackendCase("trio", "trio", requires="trio"),
    BackendCase("third-party", "third_party"),
    # trio's thread scope with public API only: a fresh trio.run per call.
    BackendCase("trio-public", "trio", {"driver": "public"}, requires="trio", scopes=("thread",)),
]


def _installed(case: BackendCase) -> bool:
    return case.requires is None or importlib.util.find_spec(case.requires) is not None


def _backend_params(scope: str | None) -> list[Any]:
    params = []
    for case in BACKENDS:
        if scope is not None and case.scopes is not None and scope not in case.scopes:
            continue
        if scope is None and case.scopes is not None:
            continue
        marks = (
            [] if _installed(case) else [pytest.mark.skip(reason=f"{case.requires} not installed")]
        )
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # "case" x "scope" without the combinations a variant does not change.
    if "case" in metafunc.fixturenames and "scope" in metafunc.fixturenames:
        fixed = getattr(metafunc.function, "scopes", None)
        params = []
        for scope in fixed or SCOPES:
            for p in _backend_params(scope):
                params.append(pytest.param(p.values[0], scope, id=f"{p.id}-{scope}", marks=p.marks))
        metafunc.parametrize(("case", "scope"), params)
    elif "case" in metafunc.fixturenames:
        metafunc.parametrize("case", _backend_params(None))


def only_scopes(*scopes: str) -> Any:
    """Decorator: run a backend x scope test for these scopes only."""

    def mark(fn: Any) -> Any:
        fn.scopes = scopes
        return fn

    return mark


@pytest.fixture(autouse=True)
def _third_party_backend(request: pytest.FixtureRequest) -> Iterator[None]:
    """A backend written against loopshim.abc only, as a third party would: the suites
    run on it too, proving that such a backend gets every scope and guarantee. It is
    registered for its own test cases only (other tests count the backends)."""
    case = request.getfixturevalue("case") if "case" in request.fixturenames else None
    if case is None or case.name != "third_party":
        yield
        return
    loopshim.register_backend("third_party", PlainAsyncioBackend, replace=True)
    try:
        yield
    finally:
        from loopshim._core import _registry

        _registry._registered.pop("third_party", None)


@pytest.fixture
def runner(case: BackendCase, scope: str) -> Iterator[loopshim.LoopRunner]:
    r = loopshim.get_runner(case.name, scope=scope, cached=False, **case.options)
    yield r
    r.close()


def make_runner(case: BackendCase, scope: str, **options: Any) -> loopshim.LoopRunner:
    return loopshim.get_runner(case.name, scope=scope, cached=False, **case.options, **options)


def asyncio_runner(backend: str, scope: str, **options: Any) -> loopshim.LoopRunner:
    """A private runner on "asyncio" or "uvloop" (skipped if uvloop is not installed)."""
    if backend == "uvloop":
        pytest.importorskip("uvloop")
    return loopshim.get_runner(backend, scope=scope, cached=False, **options)
