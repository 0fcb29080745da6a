"""What a watched loop records about itself, on its own thread, for the blocked-loop
watchdog (``block_warning``).

The loop is *busy* from the moment it leaves its wait for events (``select``,
``epoll``) until it comes back to it; a busy spell of at least the threshold is a block.
A library's :meth:`~loopshim.abc.Library.watch_loop` hooks a :class:`LoopActivity`
into its loop in one of three ways, chosen by what the loop lets it see cheaply:

- *waits*: the loop notes when it wakes from its wait and when it is about to wait
  again (asyncio's own loops, whose selector is Python). Exact.
- *wakes*: the loop notes only when it wakes, and a timer on the loop wakes it every
  tenth of the threshold, which bounds the waits (trio, whose hooks cost more to call
  than to run: one hook per iteration instead of two). Exact.
- *beats*: a timer on the loop notes the time every tenth of the threshold (uvloop,
  whose wait is in libuv). A loop that comes back to its wait runs its due timers, so
  a late beat means a busy loop: a block ends at the first beat after it, and began
  between the last beat and the moment the next one was due, taken as their middle
  (within a twentieth of the threshold).

With none of these, the watchdog sends the beats itself (*probes*, a thread hop each).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Literal, TypeVar

__all__ = ["LoopActivity", "clamp"]

#: The shortest and longest a watchdog sleeps, and the shortest beat interval, whatever
#: the threshold: a tiny one must not make it spin, a huge one must not overflow a wait.
_MIN_NAP: Final = 0.001
_MAX_NAP: Final = 3600.0

_monotonic: Final = time.monotonic

_A = TypeVar("_A")
_R = TypeVar("_R")

Ended = Callable[[float, float], None]


def clamp(seconds: float) -> float:
    """*seconds*, kept within what a watchdog may sleep or a beat may wait."""
    return min(max(seconds, _MIN_NAP), _MAX_NAP)


class LoopActivity:
    """What a watched loop records about itself, on its own thread, for its watchdog.

    A library's :meth:`~loopshim.abc.Library.watch_loop` calls one of :meth:`waits`
    (or :meth:`wrap_wait`), :meth:`wakes` and :meth:`beats`, once, from a callback on
    the loop; if it calls none, the watchdog probes the loop itself. The hooks these
    return run on the loop thread at every loop iteration or beat, and do little: a
    clock read or two and a few attribute reads and writes. The loop reports the end
    of every busy spell of at least the threshold, with its start and end.

    .. versionadded:: 0.1
    """

    __slots__ = ("_ended", "beat_interval", "busy_since", "due", "last_beat", "mode", "threshold")

    def __init__(self, threshold: float, ended: Ended) -> None:
        #: The ``block_warning`` threshold, in seconds.
        self.threshold = threshold
        #: How often beats (and the wakes' timer) come: a tenth of the threshold.
        self.beat_interval = clamp(threshold / 10)
        #: How the loop reports: None until a hook is chosen, and with probes.
        self.mode: Literal["waits", "wakes", "beats"] | None = None
        #: With waits and wakes: when the loop last woke from its wait (with wakes,
        #: when it last marked); with waits, None while it waits.
        self.busy_since: float | None = None
        #: With beats and probes: when the last beat ran, and when the next is due.
        self.last_beat = _monotonic()
        self.due = self.last_beat
        self._ended = ended

    def waits(self) -> tuple[Callable[..., None], Callable[..., None]]:
        """Report the loop's waits: returns ``(waiting, woke)``; call ``waiting()`` just
        before the loop waits for events and ``woke()`` just after. Each accepts and
        ignores one argument (an instrument's hook is passed the wait's timeout). The
        loop counts as busy from this call on. See also :meth:`wrap_wait`."""
        self.mode = "waits"
        threshold = self.threshold
        ended = self._ended
        monotonic = _monotonic
        activity = self

        def waiting(_: object = None) -> None:
            since = activity.busy_since
            activity.busy_since = None
            if since is not None:
                now = monotonic()
                if now - since >= threshold:
                    ended(since, now)

        def woke(_: object = None) -> None:
            activity.busy_since = monotonic()

        woke()
        return waiting, woke

    def wrap_wait(self, wait: Callable[[_A], _R]) -> Callable[[_A], _R]:
        """Report the loop's waits around *wait*, the function the loop calls with one
        argument to wait for events (a selector's ``select(timeout)``): returns the
        function to call instead. :meth:`waits` in one call per iteration instead of
        three."""
        self.mode = "waits"
        threshold = self.threshold
        ended = self._ended
        monotonic = _monotonic
        activity = self

        def wait_and_report(argument: _A) -> _R:
            since = activity.busy_since
            activity.busy_since = None
            if since is not None:
                now = monotonic()
                if now - since >= threshold:
                    ended(since, now)
            try:
                return wait(argument)
            finally:
                activity.busy_since = monotonic()

        self.busy_since = monotonic()
        return wait_and_report

    def wakes(self) -> tuple[Callable[..., None], float]:
        """Report the loop's wakes, for a loop that can say cheaply when its wait for
        events returns but not when it starts: returns ``(mark, interval)``; call
        ``mark()`` just after each wait returns, and from a timer on the loop every
        *interval* seconds (so that an idle loop marks too). A busy spell runs from one
        mark to the next. ``mark`` accepts and ignores one argument."""
        self.mode = "wakes"
        threshold = self.threshold
        ended = self._ended
        monotonic = _monotonic
        activity = self

        def mark(_: object = None) -> None:
            now = monotonic()
            since = activity.busy_since
            activity.busy_since = now
            if since is not None and now - since >= threshold:
                ended(since, now)

        mark()
        return mark, self.beat_interval

    def beats(self) -> tuple[Callable[[], None], float]:
        """Report beats: returns ``(beat, interval)``; call ``beat()`` now, then from a
        timer on the loop every *interval* seconds for as long as the loop runs."""
        self.mode = "beats"
        return self.beat, self.beat_interval

    def beat(self) -> None:
        """The loop is responsive now: a beat, or the answer to the watchdog's probe."""
        now = _monotonic()
        last = self.last_beat
        due = self.due
        if due > last:
            start = (last + due) / 2  # as busy_start says
            if now - start >= self.threshold:
                self._ended(start, now)
        self.last_beat = now
        if self.mode == "beats":
            self.due = now + self.beat_interval

    def busy_start(self, now: float) -> float | None:
        """When the current busy spell began, if the loop is busy at *now*: the same
        value for the whole spell, and the one its end is reported with."""
        if self.mode in ("waits", "wakes"):
            return self.busy_since
        last = self.last_beat
        due = self.due
        if last < due < now:  # the next beat is late
            return (last + due) / 2
        return None
