"""Backends for the watchdog's tests, in a module of their own (a backend's modules are
machinery to the watchdog): asyncio, run by the third-party backend of the suites, with
a library that gives the watchdog no hook, so that the watchdog probes the loop; with
one that reports the loop's waits through ``LoopActivity.waits()``'s pair of hooks, as
an instrument-style hook would; and with one whose hook fails."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from third_party_backend import PlainAsyncioBackend

from loopshim.abc import Library, LoopActivity
from loopshim.backends._libraries import AsyncioLibrary


class ProbedAsyncio(AsyncioLibrary):
    """asyncio, as a library without a hook for the watchdog (Library's default)."""

    watch_loop = Library.watch_loop


class PairedAsyncio(AsyncioLibrary):
    """asyncio, as a library that reports its loop's waits with a hook before the wait
    and one after it."""

    def watch_loop(self, activity: LoopActivity) -> None:
        selector: Any = getattr(asyncio.get_running_loop(), "_selector")  # noqa: B009
        select = selector.select
        waiting, woke = activity.waits()

        def select_and_report(timeout: float | None = None) -> Any:
            waiting(timeout)
            try:
                return select(timeout)
            finally:
                woke(timeout)

        vars(selector)["select"] = select_and_report


class BrokenHookAsyncio(AsyncioLibrary):
    """asyncio, as a library whose hook for the watchdog fails."""

    def watch_loop(self, activity: LoopActivity) -> None:
        raise RuntimeError("no hook here")


class ProbedBackend(PlainAsyncioBackend):
    library: ClassVar[Library] = ProbedAsyncio()


class PairedBackend(PlainAsyncioBackend):
    library: ClassVar[Library] = PairedAsyncio()


class BrokenHookBackend(PlainAsyncioBackend):
    library: ClassVar[Library] = BrokenHookAsyncio()
