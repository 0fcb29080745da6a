"""Run ``async def`` code from synchronous code (Flask, WSGI, scripts) on the event
loop you choose: asyncio, uvloop or trio.

.. versionadded:: 0.1
"""

from __future__ import annotations

from ._core import (
    LoopLocal,
    LoopRunner,
    available_backends,
    get_runner,
    loop_local,
    register_backend,
    run,
)
from ._ensure_sync import ensure_sync
from ._errors import (
    ArgumentError,
    BackendNotFound,
    BackendUnavailable,
    LoopError,
    LoopshimError,
    MissingExtra,
    OptionError,
    ReentrantCallError,
    RunnerClosed,
    ScopeError,
    UsageError,
)
from .backends import _libraries

__version__ = "0.1.0.dev0"

__all__ = [
    "ArgumentError",
    "BackendNotFound",
    "BackendUnavailable",
    "LoopError",
    "LoopLocal",
    "LoopRunner",
    "LoopshimError",
    "MissingExtra",
    "OptionError",
    "ReentrantCallError",
    "RunnerClosed",
    "ScopeError",
    "UsageError",
    "__version__",
    "available_backends",
    "ensure_sync",
    "get_runner",
    "loop_local",
    "register_backend",
    "run",
]

# Public names print as loopshim.X in tracebacks and reprs, wherever they are defined.
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        _obj.__module__ = __name__
del _name, _obj, _libraries
