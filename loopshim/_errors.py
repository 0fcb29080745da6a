"""The exception hierarchy: every error loopshim raises on purpose derives from
:class:`LoopshimError`, and also from the builtin class a caller would naturally catch."""

from __future__ import annotations

__all__ = [
    "BackendNotFound",
    "BackendUnavailable",
    "LoopshimError",
    "OptionError",
    "ReentrantCallError",
    "RunnerClosed",
    "ScopeError",
]


class LoopshimError(Exception):
    """Base class of every error loopshim raises on purpose.

    .. versionadded:: 0.1
    """


class BackendNotFound(LoopshimError, LookupError):
    """No backend of that name is known; the message lists the available ones.

    .. versionadded:: 0.1
    """


class BackendUnavailable(LoopshimError, ImportError):
    """The backend is known but its library cannot be imported; the message says
    what to install.

    .. versionadded:: 0.1
    """


class OptionError(LoopshimError, ValueError):
    """An unknown scope, an unknown option, or an option of the wrong type or value.

    .. versionadded:: 0.1
    """


class ScopeError(LoopshimError, RuntimeError):
    """The operation is not available in the runner's scope (``spawn`` outside
    ``scope="process"``).

    .. versionadded:: 0.1
    """


class RunnerClosed(LoopshimError, RuntimeError):
    """The runner was closed: before the call, or while the call was running.

    .. versionadded:: 0.1
    """


class ReentrantCallError(LoopshimError, RuntimeError):
    """A blocking call was made from a thread that is running an event loop, where
    it would stall that loop or deadlock.

    .. versionadded:: 0.1
    """
