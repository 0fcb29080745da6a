"""The greenlet bridge: a coroutine whose steps run in a greenlet of their own, so that
synchronous code called from it can hand an awaitable back to the coroutine's task and
wait for it there, while the loop goes on serving every other task.

This is what makes re-entrant calls work: a coroutine running on a runner calls sync
code (a Flask template's async context processor, a sync helper) that calls the runner
again; the inner coroutine is awaited by the outer coroutine's own task, in its context.
The same mechanism runs a whole synchronous call on a loop (:func:`run_sync_in_task`):
the sync code runs in the bridge greenlet, and every async call it makes is awaited by
the task. SQLAlchemy's asyncio support and greenback work the same way.

Nothing here imports ``greenlet`` until a bridge is asked for; without it,
:func:`available` is false and callers say what to install.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Final, TypeVar

__all__ = ["available", "bridge_owner", "bridged", "hand_over", "run_sync_in_task"]

T = TypeVar("T")

# What a step reports to its driver.
_YIELD: Final = 0  # the coroutine yielded to the loop; payload: what it yielded
_RETURN: Final = 1  # the coroutine returned; payload: its value
_RAISE: Final = 2  # the coroutine raised; payload: the exception
_PASS: Final = 3  # sync code in the step awaits something that yields to the loop;
# payload: what it yields, for the task to yield

_greenlet: Any = None
_Worker: Any = None
_pool = threading.local()


def available() -> bool:
    """Whether the ``greenlet`` package can be imported."""
    return _load() is not None


def _load() -> Any:
    global _greenlet, _Worker
    if _greenlet is None:
        try:
            import greenlet
        except ImportError:
            return None
        _greenlet = greenlet
        _Worker = _make_worker_class(greenlet)
    return _greenlet


def _make_worker_class(greenlet: Any) -> type:
    class Worker(greenlet.greenlet):  # type: ignore[misc]
        """Runs one coroutine step at a time; free again once the step ends."""

        __slots__ = ("owner",)

        def __init__(self) -> None:
            super().__init__(self._serve)
            #: Whose loop the steps run on (a runner's scope, an ASGI app).
            self.owner: object = None

        def _serve(self, coro: Any, throw: bool, value: Any) -> None:
            while True:
                try:
                    out = coro.throw(value) if throw else coro.send(value)
                except StopIteration as stop:
                    reply = (_RETURN, stop.value)
                except BaseException as exc:
                    reply = (_RAISE, exc)
                else:
                    reply = (_YIELD, out)
                coro = value = out = None  # hold nothing between steps
                coro, throw, value = self.parent.switch(reply)

    return Worker


def _take_worker(owner: object) -> Any:
    try:
        worker = _pool.free.pop()
    except IndexError:
        worker = _Worker()
    except AttributeError:  # this thread's first
        _pool.free = []
        worker = _Worker()
    worker.owner = owner
    current = _greenlet.getcurrent()
    if worker.parent is not current:  # setting it checks for cycles: skip it if we can
        worker.parent = current
    # The step runs in the task's own context (the same object, not a copy), so what
    # it sets is the task's.
    worker.gr_context = current.gr_context
    return worker


def _give_back(worker: Any) -> None:
    worker.owner = None
    worker.gr_context = None
    _pool.free.append(worker)


def bridge_owner() -> object:
    """Whose loop the current code runs on, if it runs in a bridge greenlet (sync code
    called from a bridged coroutine); None otherwise."""
    if _greenlet is None:
        return None
    current = _greenlet.getcurrent()
    return current.owner if isinstance(current, _Worker) else None


@types.coroutine
def bridged(coro: Coroutine[Any, Any, T], owner: object) -> Generator[Any, Any, T]:
    """Await *coro*, each of its steps running in a bridge greenlet owned by *owner*, so
    that sync code it calls can :func:`hand_over` awaitables to this task."""
    if _Worker is None:
        _load()
    throw, value = False, None
    try:
        while True:
            worker = _take_worker(owner)
            reply = worker.switch(coro, throw, value)
            while reply[0] == _PASS:  # sync code in the step waits on the loop
                try:
                    sent = yield reply[1]
                except BaseException as exc:
                    reply = worker.switch(True, exc)
                else:
                    reply = worker.switch(False, sent)
            _give_back(worker)
            kind, payload = reply
            if kind == _RETURN:
                return payload  # type: ignore[no-any-return]
            if kind == _RAISE:
                raise payload
            try:
                value, throw = (yield payload), False
            except BaseException as exc:
                value, throw = exc, True
    finally:
        if sys.exc_info()[0] is GeneratorExit:
            coro.close()


def hand_over(awaitable: Awaitable[T]) -> T:
    """From sync code running in a bridge greenlet: await *awaitable* in the task that
    runs this greenlet, and return its result (or raise its exception) here.

    The awaitable is stepped right here, in this greenlet (so that sync code it calls may
    hand over in turn); only when it yields to the loop does the greenlet switch to the
    task, which yields that on and switches back with what the loop sends.
    """
    steps: Any = awaitable.__await__()
    parent = _greenlet.getcurrent().parent
    throw, value = False, None
    while True:
        try:
            out = steps.throw(value) if throw else steps.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        throw, value = parent.switch((_PASS, out))


async def run_sync_in_task(fn: Callable[..., T], owner: object, /, *args: Any) -> T:
    """Call ``fn(*args)`` — sync code — in a bridge greenlet of the current task: the
    async calls it makes through :func:`hand_over` are awaited by this task."""

    async def call() -> T:
        return fn(*args)

    return await bridged(call(), owner)
