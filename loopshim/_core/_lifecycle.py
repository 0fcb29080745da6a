"""All process-wide state of runners: the runners still open, closed at interpreter
exit; and what a forked child does with the parent's loops."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ._log import logger

if TYPE_CHECKING:
    from ._protocol import LoopRunner
    from ._runner import Runner

__all__ = ["evict", "forget", "registry_lock", "share", "shared", "track"]

#: The runners get_runner() shares, by (name, scope, *options).
_cache: dict[tuple[Any, ...], LoopRunner] = {}
_lock = threading.Lock()


def registry_lock() -> threading.Lock:
    """The lock held while the registry or the cache of shared runners changes."""
    return _lock


def shared(key: Hashable) -> LoopRunner | None:
    """The shared runner for *key*, unless there is none or it was closed (hold the
    registry lock)."""
    runner = _cache.get(key)  # type: ignore[call-overload]
    if runner is None or getattr(runner, "closed", False):
        return None
    return runner  # type: ignore[no-any-return]


def share(key: tuple[Any, ...], runner: LoopRunner) -> None:
    """Make *runner* the shared one for *key* (hold the registry lock)."""
    _cache[key] = runner


def evict(name: str) -> list[LoopRunner]:
    """Forget the shared runners of backend *name*; return them (hold the lock)."""
    return [_cache.pop(k) for k in [k for k in _cache if k[0] == name]]


# Every runner not closed yet, so that interpreter exit closes (and drains) it even if
# the program dropped its last reference: its loop thread would otherwise run on.
_live_runners: set[Runner] = set()


def track(runner: Runner) -> None:
    """Close *runner* at interpreter exit unless it is closed before."""
    _live_runners.add(runner)


def forget(runner: Runner) -> None:
    """*runner* was closed: nothing left to do for it at exit."""
    _live_runners.discard(runner)


def _close_all_at_exit() -> None:
    # Interpreter exit closes what the program left open, so background tasks are
    # drained (for shutdown_timeout) rather than killed with the daemon thread.
    for runner in list(_live_runners):
        try:
            runner.close()
        except Exception:
            logger.exception("closing %r at exit failed", runner)


atexit.register(_close_all_at_exit)


def _after_fork_in_child() -> None:
    for runner in list(_live_runners):
        runner._scope.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
