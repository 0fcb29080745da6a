"""The first part of closing a loop, the same for every backend: loopshim's own jobs
(calls and background tasks) drain for the grace period, those left are cancelled and
logged, then the loop's ``loop_local`` values close — all while the loop and the
libraries' own tasks still run. What is left after that (async generators, leftover
tasks, executors) is the backend's to close."""

from __future__ import annotations

from typing import Any

from . import _lifecycle
from ._backend import CANCEL_GRACE, AsyncEvent, Library
from ._job import CancelReason, Job, log_cancelled_at_close
from ._log import logger
from ._loop_local import LoopState

__all__ = ["JobSet", "close_own_work"]


class JobSet(set[Job[Any]]):
    """The jobs running on one loop; they leave it (``job.complete(jobs)``) as they end.
    Used on the loop only."""

    def __init__(self) -> None:
        super().__init__()
        self._empty: AsyncEvent | None = None

    def discard(self, job: object) -> None:
        super().discard(job)
        if not self and self._empty is not None:
            self._empty.set()

    async def _wait_empty(self, library: Library) -> None:
        if self:
            self._empty = library.new_event()
            await self._empty.wait()

    async def drain(self, library: Library, backend: str, grace: float) -> list[Job[Any]]:
        """Let the jobs finish for *grace* seconds, then cancel those left (their callers
        get :class:`~loopshim.RunnerClosed`), log the background tasks among them, and
        give them :data:`CANCEL_GRACE` to unwind. Returns the jobs that ignored it."""
        if self and grace > 0:
            spawned = [job.label for job in self if job.future is not None]
            if spawned and _lifecycle.exiting():
                # A forgotten fire-and-forget task delays the exit: say so, and why.
                logger.warning(
                    "exiting: waiting up to %g s (the %s runner's shutdown_timeout) for %d "
                    "background task%s: %s",
                    grace,
                    backend,
                    len(spawned),
                    "" if len(spawned) == 1 else "s",
                    ", ".join(spawned),
                )
            await library.within(grace, lambda: self._wait_empty(library))
        leftover = list(self)
        if not leftover:
            return []
        for job in leftover:
            job.cancel(CancelReason.CLOSED)
        await library.within(CANCEL_GRACE, lambda: self._wait_empty(library))
        log_cancelled_at_close(backend, leftover, grace)
        stuck = list(self)
        if stuck:
            logger.warning(
                "%d task(s) of the %s runner ignored cancellation at close and were abandoned: %s",
                len(stuck),
                backend,
                ", ".join(job.label for job in stuck),
            )
        return stuck


async def close_own_work(
    library: Library, backend: str, state: LoopState, jobs: JobSet | None, grace: float
) -> list[Job[Any]]:
    """Drain *jobs* (see :meth:`JobSet.drain`), then close the loop's ``loop_local``
    values. Run it on the loop, first thing when it closes. Returns the jobs that
    ignored cancellation."""
    stuck = await jobs.drain(library, backend, grace) if jobs else []
    await state.aclose()
    return stuck
