"""Run ``async def`` code from synchronous code (Flask, WSGI, scripts) on the event
loop you choose: asyncio, uvloop or trio.

.. versionadded:: 0.1
"""

from __future__ import annotations

from ._ensure_sync import ensure_sync
from ._errors import (
    BackendNotFound,
    BackendUnavailable,
    LoopshimError,
    OptionError,
    ReentrantCallError,
    RunnerClosed,
    ScopeError,
)
from ._loop_local import LoopLocal, loop_local
from ._registry import available_backends, get_runner, register_backend, run
from ._runner import LoopRunner

__version__ = "0.1.0.dev0"

__all__ = [
    "BackendNotFound",
    "BackendUnavailable",
    "LoopLocal",
    "LoopRunner",
    "LoopshimError",
    "OptionError",
    "ReentrantCallError",
    "RunnerClosed",
    "ScopeError",
    "__version__",
    "available_backends",
    "ensure_sync",
    "get_runner",
    "loop_local",
    "register_backend",
    "run",
]
