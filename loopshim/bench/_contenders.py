"""What the bench compares: a contender is one way of running async code from sync code,
set up once per run; loopshim's runners are contenders beside the peers (``_peers``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import loopshim

__all__ = ["AsyncFn", "Contender", "Prepared", "ToSync", "loopshim_contender"]

AsyncFn = Callable[..., Coroutine[Any, Any, Any]]
#: Turns an async function into a sync callable: what a contender offers.
ToSync = Callable[[AsyncFn], Callable[..., Any]]


@dataclass(frozen=True)
class Prepared:
    """A contender, set up: how it runs an async function, and how a Flask app is made
    to run its async views with it."""

    to_sync: ToSync
    install: Callable[[Any], None]


@dataclass(frozen=True)
class Contender:
    """One way of running async code from sync code."""

    key: str
    label: str
    setup: Callable[[contextlib.ExitStack[Any]], Prepared]
    #: The libraries it imports (by distribution name, which is also the module's).
    requires: tuple[str, ...] = ()
    #: loopshim's backend and scope, for loopshim's contenders.
    backend: str | None = None
    scope: str | None = None

    @property
    def kind(self) -> Literal["loopshim", "peer"]:
        """``loopshim`` for loopshim's runners, ``peer`` for the rest."""
        return "loopshim" if self.backend is not None else "peer"


def _loopshim_setup(backend: str, scope: str) -> Callable[[contextlib.ExitStack[Any]], Prepared]:
    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        runner = loopshim.get_runner(backend, scope=scope, cached=False)
        stack.callback(runner.close)

        def install(app: Any) -> None:
            from loopshim.flask import LoopShim

            app.config.update(LOOPSHIM_BACKEND=backend, LOOPSHIM_SCOPE=scope)
            LoopShim(app)

        return Prepared(runner.wrap, install)

    return setup


def loopshim_contender(backend: str, scope: str) -> Contender:
    """The contender for loopshim's *backend* in *scope*."""
    return Contender(
        f"loopshim-{backend}-{scope}",
        f"loopshim {backend} {scope}",
        _loopshim_setup(backend, scope),
        backend=backend,
        scope=scope,
    )
