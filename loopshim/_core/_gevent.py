"""Living with gevent's monkey-patching (gunicorn's gevent workers, ``patch_all()``).

Once gevent has patched :mod:`threading`, ``threading.Thread`` starts a greenlet, not a
thread: an event loop "thread" would then run inside the hub's OS thread, where every
greenlet that calls ``run()`` sees that loop running (and gets ``ReentrantCallError``),
and anything that blocks the loop blocks every greenlet. So ``process`` scope starts its
loop in a native OS thread, with the unpatched selector; callers keep waiting on the
patched locks, which gevent wakes across threads, so a waiting greenlet yields to the
others. ``thread`` and ``call`` scope would run the loop in the hub's own thread, which
cannot work, so they refuse with a clear error.

Nothing here imports gevent: it only looks at ``sys.modules``.
"""

from __future__ import annotations

import _thread
import sys
import threading
from collections.abc import Callable
from typing import Any

from .._errors import BackendUnavailable, ScopeError


def threading_patched() -> bool:
    """Whether gevent has monkey-patched :mod:`threading` in this process."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def _original(module: str, name: str) -> Any:
    return sys.modules["gevent.monkey"].get_original(module, name)


def native_get_ident() -> Callable[[], int]:
    """The function giving the OS thread's identifier, even where gevent made
    ``threading.get_ident`` per greenlet."""
    if threading_patched():
        return _original("_thread", "get_ident")  # type: ignore[no-any-return]
    return threading.get_ident


def native_selector() -> Any:
    """A selector gevent did not replace, for a loop in a native thread."""
    return _original("selectors", "DefaultSelector")()


def refuse_scope(scope: str, backend: str) -> None:
    """Raise :class:`ScopeError` for a scope that cannot work under gevent."""
    raise ScopeError(
        f"{scope!r} scope cannot run under gevent's monkey-patching: the {backend} loop "
        "would run in the hub's own thread, blocking every greenlet while it runs and "
        "colliding with the other greenlets' calls. Use process scope (the default), whose "
        "loop runs in a native thread while callers wait cooperatively"
    )


def refuse_backend(name: str) -> None:
    """Raise :class:`BackendUnavailable` for a backend that cannot run under gevent."""
    raise BackendUnavailable(
        f"backend {name!r} cannot run under gevent's monkey-patching, which replaces "
        "the threading and select primitives it is built on (patch_all() even removes "
        "select.epoll). Under gevent workers use the asyncio or uvloop backend, in "
        "process scope"
    )


class NativeThread:
    """A real OS thread even under gevent, with the part of :class:`threading.Thread`'s
    interface that :class:`~loopshim._runner.LoopThread` uses."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.name = name
        self.ident: int | None = None
        self._target = target
        allocate_lock = _original("_thread", "allocate_lock")
        self._running = allocate_lock()
        self._started = allocate_lock()

    def start(self) -> None:
        self._running.acquire()
        self._started.acquire()
        _original("_thread", "start_new_thread")(self._main, ())
        self._started.acquire()  # until ident is known; the thread releases it at once
        self._started.release()

    def _main(self) -> None:
        self.ident = _original("_thread", "get_ident")()
        self._started.release()
        try:
            self._target()
        finally:
            self._running.release()

    def is_alive(self) -> bool:
        return self.ident is not None and bool(self._running.locked())

    def join(self, timeout: float | None = None) -> None:
        if self._running.acquire(timeout=-1 if timeout is None else timeout):
            self._running.release()


class NativeLatch:
    """A one-shot ``threading.Event`` on native locks (set in one thread, waited in
    another; waiting blocks the OS thread, so use it only for short waits)."""

    def __init__(self) -> None:
        self._flag = False
        self._lock = _original("_thread", "allocate_lock")()
        self._lock.acquire()

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        if self._lock.acquire(timeout=-1 if timeout is None else timeout):
            self._lock.release()
            return True
        return False


def new_thread(target: Callable[[], None], name: str) -> threading.Thread | NativeThread:
    """A daemon OS thread running *target*: a plain thread, or a native one under gevent."""
    if threading_patched():
        return NativeThread(target, name)
    return threading.Thread(target=target, name=name, daemon=True)


def native_lock() -> _thread.LockType:
    """A lock of the OS's (``_thread.allocate_lock()``), even where gevent patched it."""
    if threading_patched():
        lock: _thread.LockType = _original("_thread", "allocate_lock")()
        return lock
    return _thread.allocate_lock()


def new_event() -> threading.Event | NativeLatch:
    """An event to set and wait across OS threads, native under gevent."""
    return NativeLatch() if threading_patched() else threading.Event()
