"""Ctrl-C in the main thread while it drives a loop (``thread`` and ``call`` scope).

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives.
Inside a loop's own machinery that can leave the loop unusable for good: uvloop's
``run_until_complete`` interrupted while it sets up or tears down its signal handling
stays "already running" (it can then neither run nor close, and its descriptors leak);
trio's scheduler turns it into ``TrioInternalError``, which ends the run; and loopshim's
own bookkeeping around a call (the running loop, async-generator hooks, sniffio's
marker) can be left half done.

So while a loop is driven in the main thread, an :class:`InterruptGuard` stands in for
SIGINT's handler and handles Ctrl-C much as ``asyncio.Runner`` does. It calls the
program's handler at once (Python's default one raises ``KeyboardInterrupt``; a
program's own may raise something else, or nothing); what that raises the first time
is kept, the loop is asked — through a signal-safe wake-up — to cancel the call, and
the exception is raised once the loop is back at rest. A second one is for a call that
does not end when cancelled: raised at once if it lands in the call's own code
(blocking code in a coroutine), else the backend stops waiting for the call — which
stays on the loop, cancelled — and raises the first. Either way no exception ever
lands in the loop's machinery, and the loop stays usable.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

__all__ = ["InterruptGuard", "guard", "never", "under_guard"]

_raw_signal: Any = importlib.import_module("_signal")
# signal.signal() and signal.getsignal() convert handlers to and from enums, which
# costs several µs a call; the functions underneath them cost a fraction of that.
_set_handler: Final[Callable[[int, Any], Any]] = _raw_signal.signal
_get_handler: Final[Callable[[int], Any]] = _raw_signal.getsignal
_SIGINT: Final = int(signal.SIGINT)


def never() -> bool:
    return False


class InterruptGuard:
    """SIGINT's handler while the main thread drives a loop: it calls the program's
    handler (Python's default raises ``KeyboardInterrupt``) and keeps what that raises
    out of the loop's machinery."""

    __slots__ = ("_handler", "abandon", "active", "in_call", "on_interrupt", "pending", "raised")

    def __init__(self, handler: Callable[[int, FrameType | None], Any]) -> None:
        self._handler = handler
        #: Set by its user as the first statement of the ``try`` it guards, and unset as
        #: the first of its ``finally`` (neither can be interrupted): an inactive guard
        #: is the program's handler, and harmless when left installed (as an exception
        #: from another signal's handler can leave it).
        self.active = False
        #: What the program's handler raised, to raise once the loop is at rest.
        self.pending: BaseException | None = None
        #: It raised again: stop waiting for the call.
        self.abandon = False
        #: :attr:`pending` was raised already (release raises nothing then).
        self.raised = False
        #: While a call is driven: asks the loop to cancel it, or to stop waiting for
        #: it once :attr:`abandon` is set. Called from the signal handler, so it must
        #: be signal-safe (``call_soon_threadsafe``, trio's ``run_sync_soon``).
        self.on_interrupt: Callable[[], object] | None = None
        #: Whether the call's own code (its task's step) is what runs now.
        self.in_call: Callable[[], bool] = never

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.active:
            self._handler(signum, frame)
            return
        try:
            self._handler(signum, frame)
        except BaseException as exc:
            if self.pending is None:
                self.pending = exc
            else:
                self.abandon = True
                if self.in_call():
                    self.raised = True
                    raise
            self._notify()

    def _notify(self) -> None:
        notify = self.on_interrupt
        if notify is not None:
            # A closed loop raises: there is nothing left to tell it.
            with contextlib.suppress(Exception):
                notify()

    @property
    def driving(self) -> bool:
        """Whether a call is being driven under this guard (for the loop's callbacks,
        which may run after the call that scheduled them is over)."""
        return self.on_interrupt is not None

    def arm(self, on_interrupt: Callable[[], object], in_call: Callable[[], bool]) -> None:
        """A call is driven from now on: an interrupt (at once, if one came already)
        goes to *on_interrupt*; *in_call* says whether the call's own code runs."""
        self.on_interrupt = on_interrupt
        self.in_call = in_call
        if self.pending is not None:
            self._notify()

    def disarm(self) -> None:
        """The call is no longer driven."""
        self.in_call = never
        self.on_interrupt = None

    def take(self) -> BaseException:
        """The pending interrupt, to be raised now by the caller (who stops waiting)."""
        assert self.pending is not None
        self.raised = True
        return self.pending

    def release(self) -> None:
        """Put the program's handler back, then raise what it raised, if that was not
        raised yet. (The guard's user unsets :attr:`active` just before.)"""
        self.disarm()
        if _get_handler(_SIGINT) is self:  # else the program installed another meanwhile
            _set_handler(_SIGINT, self._handler)
        error, self.pending = self.pending, None
        if error is not None and not self.raised:
            self.raised = True
            raise error


def guard() -> InterruptGuard | None:
    """A guard for a loop about to be driven in this thread, installed, not active yet;
    None in other threads than the main one (signals reach the main thread only), and
    where SIGINT is ignored or has no Python handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    current = _get_handler(_SIGINT)
    while isinstance(current, InterruptGuard):  # left installed: see InterruptGuard.active
        current = current._handler
    if not callable(current):  # SIG_IGN, SIG_DFL, or a handler installed by C code
        return None
    new = InterruptGuard(current)
    _set_handler(_SIGINT, new)
    return new


def under_guard(fn: Callable[[InterruptGuard | None], object]) -> None:
    """Call ``fn(guard)`` with a :func:`guard` active around it, then raise what the
    program's handler raised meanwhile; ``fn(None)`` where there is no guard."""
    installed = guard()
    if installed is None:
        fn(None)
        return
    try:
        installed.active = True
        fn(installed)
    finally:
        installed.active = False
        installed.release()
