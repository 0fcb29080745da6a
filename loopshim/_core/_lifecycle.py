"""All process-wide state of runners: the shared runners ``get_runner()`` hands out,
the runners still open (closed at interpreter exit, or soon after the program drops
them), and what a forked child does with the parent's loops.

Nothing is registered with the interpreter (``atexit``, ``os.register_at_fork``) until
loopshim is first used: importing it, as pytest does with its plugin, changes nothing.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Final

from ._log import logger

if TYPE_CHECKING:
    from ._protocol import LoopRunner
    from ._runner import Runner
    from ._scopes import RunnerScope

__all__ = [
    "evict",
    "exiting",
    "forget",
    "is_shared",
    "registry_lock",
    "share",
    "shared",
    "track",
]

#: How long interpreter exit waits for runners dropped without close() to be closed.
_REAPER_JOIN: Final = 30.0

#: The runners get_runner() shares, by (name, scope, *options).
_cache: dict[tuple[Any, ...], LoopRunner] = {}
_lock = threading.Lock()
#: Runners not closed yet, held weakly (a dropped runner is closed when collected),
#: with what closes each one then.
_finalizers: weakref.WeakKeyDictionary[Runner, weakref.finalize[Any, Any]] = (
    weakref.WeakKeyDictionary()
)
#: Threads closing runners the program dropped.
_reapers: list[threading.Thread] = []
_hooked = False
_exiting = False


def _install_hooks() -> None:
    global _hooked
    if _hooked:
        return
    _hooked = True
    atexit.register(_close_all_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


def registry_lock() -> threading.Lock:
    """The lock held while the registry or the cache of shared runners changes."""
    _install_hooks()  # from now on a fork may find it held: the child must reset it
    return _lock


def shared(key: Hashable) -> LoopRunner | None:
    """The shared runner for *key*, unless there is none or it was closed for good
    (hold the registry lock)."""
    runner = _cache.get(key)  # type: ignore[call-overload]
    if runner is None or getattr(runner, "closed", False):
        return None
    return runner  # type: ignore[no-any-return]


def share(key: tuple[Any, ...], runner: LoopRunner) -> None:
    """Make *runner* the shared one for *key* (hold the registry lock)."""
    _cache[key] = runner


def evict(name: str) -> list[LoopRunner]:
    """Forget the shared runners of backend *name*; return them (hold the lock)."""
    # A runner is shared under its request and its validated options: once each here.
    evicted = [_cache.pop(k) for k in [k for k in _cache if k[0] == name]]
    return list({id(runner): runner for runner in evicted}.values())


def is_shared(runner: object) -> bool:
    """Whether *runner* is one that get_runner() shares."""
    return any(shared is runner for shared in _cache.values())


def exiting() -> bool:
    """Whether the interpreter is exiting (loopshim's exit hook has started)."""
    return _exiting


def track(runner: Runner) -> None:
    """Close *runner* at interpreter exit, or soon after the program drops it, unless
    it is closed before."""
    _install_hooks()
    name = repr(runner)
    finalizer = weakref.finalize(
        runner, _reap, runner._scope, runner.options.shutdown_timeout, name
    )
    finalizer.atexit = False  # exit closes what is still alive, in _close_all_at_exit
    _finalizers[runner] = finalizer


def forget(runner: Runner) -> None:
    """*runner* was closed for good: nothing left to do for it."""
    finalizer = _finalizers.pop(runner, None)
    if finalizer is not None:
        finalizer.detach()


def _reap(scope: RunnerScope, grace: float, name: str) -> None:
    # The garbage collector collected a runner nobody closed. It runs wherever a
    # collection was triggered, so the closing (which waits) gets a thread of its own.
    if scope.closed:
        return
    reaper = threading.Thread(
        target=_close_dropped, args=(scope, grace, name), name="loopshim-reaper", daemon=True
    )
    _reapers.append(reaper)
    reaper.start()


def _close_dropped(scope: RunnerScope, grace: float, name: str) -> None:
    try:
        scope.close(grace, final=True)
    except Exception:
        logger.exception("closing %s, dropped without close(), failed", name)


def _close_all_at_exit() -> None:
    # Interpreter exit closes what the program left open, so background tasks are
    # drained (for shutdown_timeout) rather than killed with the daemon thread.
    global _exiting
    _exiting = True
    for runner in list(_finalizers):
        try:
            runner.close()
        except Exception:
            logger.exception("closing %r at exit failed", runner)
    for reaper in _reapers:
        reaper.join(_REAPER_JOIN)


def _after_fork_in_child() -> None:
    # The child has one thread: locks another thread held at the fork stay held for
    # ever, so every lock of loopshim's is made anew, and the parent's loops (and the
    # threads serving them, which do not exist here) are forgotten, never touched.
    global _lock
    _lock = threading.Lock()
    _reapers.clear()
    for runner in list(_finalizers):
        runner._scope.after_fork_in_child()
