"""The exception hierarchy: every error loopshim raises on purpose derives from
:class:`LoopshimError`, and also from the builtin class a caller would naturally catch."""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "BackendNotFound",
    "BackendUnavailable",
    "LoopError",
    "LoopshimError",
    "MissingExtra",
    "OptionError",
    "ReentrantCallError",
    "RunnerClosed",
    "ScopeError",
    "UsageError",
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


class ArgumentError(LoopshimError, TypeError):
    """An argument of the wrong kind: a plain function, a coroutine object or an
    awaitable where an async function is expected; a factory that is not callable; a
    backend that is neither a name nor a runner.

    .. versionadded:: 0.1
    """


class UsageError(LoopshimError, RuntimeError):
    """loopshim was used where it cannot work: ``loop_local.get()`` outside a loop
    loopshim runs, ``copy_current_request_context()`` outside a request, the Flask
    extension set up twice on one app, a pytest-plugin fixture in a place it cannot
    serve.

    .. versionadded:: 0.1
    """


class LoopError(LoopshimError, RuntimeError):
    """An event loop failed under loopshim: its thread could not start, or its run
    ended while a call was still on it.

    .. versionadded:: 0.1
    """


class MissingExtra(LoopshimError, ImportError):
    """A loopshim module needs an optional dependency that is not installed
    (``loopshim.flask`` needs Flask); the message gives the ``pip install`` line.

    .. versionadded:: 0.1
    """
