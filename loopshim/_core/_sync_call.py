"""The fast synchronous caller Flask gets for each async function: made and called
without a Python frame of its own."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final

from ._checks import check_async_callable, is_plain_async_def
from ._protocol import LoopRunner
from ._runner import COROUTINE_MARKERS, Runner

__all__ = ["SyncCall", "direct_call", "sync_caller_maker"]


#: Attributes of the async function a :class:`SyncCall` reads through, as
#: :func:`functools.wraps` would have copied them (``__doc__`` and ``__module__`` are
#: properties, since every class defines them).
_READ_THROUGH: Final = frozenset({"__name__", "__qualname__", "__annotations__"})


class SyncCall(functools.partial[Any]):
    # A synchronous callable that runs an async function on a runner: what
    # sync_caller_maker() makes. Far cheaper than Runner.wrap's function (Flask asks for
    # one on every request): as a partial of the scope's call it is made and called
    # without a Python frame of its own, and the async function's metadata is read
    # through on demand rather than copied — its name, qualified name, docstring, module
    # and annotations, the attributes in its __dict__, and __wrapped__ (so
    # inspect.signature shows its signature). Unlike a function, it does not bind as a
    # method.

    @property
    def __wrapped__(self) -> Callable[..., Awaitable[Any]]:
        return self.args[0]  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        fn = self.args[0]
        if name in _READ_THROUGH:
            return getattr(fn, name)
        own = getattr(fn, "__dict__", None)
        if own is not None and name in own and name not in COROUTINE_MARKERS:
            return own[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return getattr(self.args[0], "__doc__", None)

    @property
    def __module__(self) -> str | None:  # type: ignore[override]
        return getattr(self.args[0], "__module__", None)

    def __repr__(self) -> str:
        return f"<loopshim sync caller for {self.args[0]!r}>"


def direct_call(runner: LoopRunner, *, bridged: bool = False) -> Callable[..., Any] | None:
    """What a :class:`SyncCall` for *runner* calls — ``call(async_fn, *args, **kwargs)``
    — for loopshim's own runners; None for any other :class:`LoopRunner`. *bridged*:
    the calls run in the greenlet bridge, so that sync code they call may call the
    runner again."""
    if not isinstance(runner, Runner):
        return None
    scope = runner._scope
    return scope.call_bridged if bridged else scope.call


def sync_caller_maker(
    runner: LoopRunner, *, bridged: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A function that turns an async function into a synchronous callable running it on
    *runner*: a :class:`SyncCall` for loopshim's own runners, ``runner.wrap`` for any
    other :class:`LoopRunner`."""
    call = direct_call(runner, bridged=bridged)
    if call is None:
        return runner.wrap

    def make(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not is_plain_async_def(fn):
            check_async_callable(fn, "async_to_sync")
        return SyncCall(call, fn)

    return make
