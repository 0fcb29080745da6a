"""The public backend interface: what a backend for another event-loop library
provides, to get all three scopes and every guarantee loopshim gives.

Subclass :class:`Backend` (and, for a library loopshim does not know yet,
:class:`Library`), implement a :class:`DrivenLoop` and a :class:`LoopThread`, and
register the backend class with :func:`loopshim.register_backend` or an entry point in
the ``loopshim.backends`` group. A backend's task runs one :class:`Job` at a time: it
awaits ``job.awaitable()`` in ``job.context``, stores ``job.result`` or ``job.error``,
sets ``job.handle`` to what cancels it, and ends with ``job.complete(...)``. loopshim's
own backends (``loopshim/backends/``) are written against this interface only.

.. versionadded:: 0.1
"""

from __future__ import annotations

from ._core import (
    AsyncEvent,
    Backend,
    Canceller,
    CancelReason,
    DrivenLoop,
    Job,
    JobSet,
    Library,
    LoopActivity,
    LoopState,
    LoopThread,
    close_own_work,
    library,
)

__all__ = [
    "AsyncEvent",
    "Backend",
    "CancelReason",
    "Canceller",
    "DrivenLoop",
    "Job",
    "JobSet",
    "Library",
    "LoopActivity",
    "LoopState",
    "LoopThread",
    "close_own_work",
    "library",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
