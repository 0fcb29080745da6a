"""What the bench compares: a contender is one way of running async code, set up once
per run; loopshim's runners are contenders beside the peers (``_peers``,
``_async_peers``)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import loopshim

from ._hosts import OnLoop, host_on
from ._timing import BatchFactory

__all__ = [
    "AsyncFn",
    "Awaiter",
    "Contender",
    "Prepared",
    "ToSync",
    "cross_loop_contender",
    "loopshim_contender",
]

AsyncFn = Callable[..., Coroutine[Any, Any, Any]]
#: Turns an async function into a sync callable: what a contender offers sync code.
ToSync = Callable[[AsyncFn], Callable[..., Any]]
#: Turns an async function into what a coroutine awaits to have it run (on another
#: loop, for the cross-loop workload; itself, for the floor of re-entrant calls).
Awaiter = Callable[[AsyncFn], Callable[[], Awaitable[Any]]]


@dataclass(frozen=True)
class Prepared:
    """A contender, set up: what it offers the workloads it takes part in."""

    #: How sync code runs an async function: from a caller thread, or — inside a
    #: coroutine on :attr:`on_loop` — by re-entering the loop that runs that coroutine.
    to_sync: ToSync | None = None
    #: How a Flask app is made to run its async views with the contender.
    install: Callable[[Any], None] | None = None
    #: Where the coroutine of a re-entrant or cross-loop batch runs.
    on_loop: OnLoop | None = None
    #: Set: the batch awaits ``awaiter(fn)()`` in that coroutine instead of calling
    #: ``to_sync(fn)`` from sync code there.
    awaiter: Awaiter | None = None
    #: Set: the contender runs its batches itself, in a process of its own; given a
    #: workload's name, the factory of that workload's batch runners.
    own_batches: Callable[[str], BatchFactory] | None = None


@dataclass(frozen=True)
class Contender:
    """One way of running async code."""

    key: str
    label: str
    setup: Callable[[contextlib.ExitStack[Any]], Prepared]
    #: The libraries it imports (by distribution name, which is also the module's).
    requires: tuple[str, ...] = ()
    #: loopshim's backend and scope, for loopshim's contenders.
    backend: str | None = None
    scope: str | None = None
    #: The workloads it takes part in; None: every workload whose calls come from sync
    #: code (``Workload.from_sync``).
    workloads: tuple[str, ...] | None = None
    #: For loopshim's contenders: whether the runner is made with ``reentrant=True``.
    reentrant: bool = False
    #: For the cross-loop workload: the loop the calls are awaited from, and the loop
    #: they run on.
    pair: tuple[str, str] | None = None

    @property
    def kind(self) -> Literal["loopshim", "peer"]:
        """``loopshim`` for loopshim's runners, ``peer`` for the rest."""
        return "loopshim" if self.backend is not None else "peer"


def _loopshim_setup(
    backend: str, scope: str, reentrant: bool
) -> Callable[[contextlib.ExitStack[Any]], Prepared]:
    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        options = {"reentrant": True} if reentrant else {}
        runner = loopshim.get_runner(backend, scope=scope, cached=False, **options)
        stack.callback(runner.close)

        def install(app: Any) -> None:
            from loopshim.flask import LoopShim

            app.config.update(LOOPSHIM_BACKEND=backend, LOOPSHIM_SCOPE=scope)
            LoopShim(app)

        return Prepared(runner.wrap, install, on_loop=runner.run)

    return setup


#: The workloads a runner made with ``reentrant=True`` takes part in: the re-entrant
#: calls, and a no-op call from a caller thread, which shows what the option costs a
#: call that does not re-enter.
REENTRANT_WORKLOADS = ("noop", "reentrant")


def loopshim_contender(backend: str, scope: str, *, reentrant: bool = False) -> Contender:
    """The contender for loopshim's *backend* in *scope* (with ``reentrant=True``: the
    one for re-entrant calls, which needs greenlet)."""
    if not reentrant:
        return Contender(
            f"loopshim-{backend}-{scope}",
            f"loopshim {backend} {scope}",
            _loopshim_setup(backend, scope, False),
            backend=backend,
            scope=scope,
        )
    return Contender(
        f"loopshim-{backend}-{scope}-reentrant",
        f"loopshim {backend} {scope}, reentrant=True",
        _loopshim_setup(backend, scope, True),
        ("greenlet",),
        backend=backend,
        scope=scope,
        workloads=REENTRANT_WORKLOADS,
        reentrant=True,
    )


def _run_async_setup(backend: str, host: str) -> Callable[[contextlib.ExitStack[Any]], Prepared]:
    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        runner = loopshim.get_runner(backend, scope="process", cached=False)
        stack.callback(runner.close)

        def awaiter(fn: AsyncFn) -> Callable[[], Awaitable[Any]]:
            return functools.partial(runner.run_async, fn)

        return Prepared(on_loop=host_on(stack, host), awaiter=awaiter)

    return setup


def cross_loop_contender(backend: str, host: str) -> Contender:
    """loopshim's *backend* in process scope, awaited with ``run_async`` from a
    coroutine on a *host* loop (``asyncio`` or ``trio``) in the caller thread."""
    return Contender(
        f"loopshim-{backend}-process-from-{host}",
        f"loopshim {backend} process, run_async from {host}",
        _run_async_setup(backend, host),
        ("trio",) if host == "trio" else (),
        backend=backend,
        scope="process",
        workloads=("cross-loop",),
        pair=(host, backend),
    )
