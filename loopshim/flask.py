"""Flask integration: run every async function Flask calls — views, ``View`` and
``MethodView`` handlers, request hooks, error handlers, context processors, signal
receivers, ``copy_current_request_context`` — on the backend you choose.

::

    from flask import Flask
    from loopshim.flask import LoopShim

    app = Flask(__name__)
    LoopShim(app)                  # reads LOOPSHIM_BACKEND, LOOPSHIM_SCOPE, LOOPSHIM_OPTIONS
    app.loop_backend = "trio"      # switch at any time; later requests use trio

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import inspect
import types
import weakref
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, ParamSpec, TypeVar

try:
    import flask
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    from ._errors import MissingExtra

    raise MissingExtra(
        'loopshim.flask needs Flask, which is not installed: pip install "loopshim[flask]"',
        name="flask",
    ) from exc

from ._core import (
    LoopRunner,
    SyncCall,
    bridge_available,
    direct_call,
    get_runner,
    is_async_callable,
    is_plain_async_def,
    sync_caller_maker,
)
from ._ensure_sync import isolate_requests
from ._errors import ArgumentError, OptionError, UsageError
from ._options import DEFAULT_SCOPE

__all__ = ["LoopShim", "copy_current_request_context"]

P = ParamSpec("P")
T = TypeVar("T")

EXTENSION_KEY = "loopshim"


class _AppState:
    """What LoopShim keeps per app: the chosen backend, scope, options and runner."""

    def __init__(
        self,
        config: MutableMapping[str, Any],
        backend: str | None,
        scope: str,
        options: Mapping[str, Any],
        reentrant: bool | None,
    ) -> None:
        if not isinstance(options, Mapping):
            raise OptionError(
                f"LOOPSHIM_OPTIONS must be a dict of runner options, got {options!r} "
                f"({type(options).__name__})"
            )
        self.config = config
        self.scope = scope
        self.options = dict(options)
        self.reentrant = _reentrant(reentrant)
        self.runner = self._runner_for(backend)
        self._use(self.runner)

    @property
    def backend(self) -> str:
        return self.runner.name

    def _runner_for(self, backend: str | None) -> LoopRunner:
        try:
            return get_runner(backend, scope=self.scope, **self.options)
        except OptionError as exc:
            raise _explained(exc, backend, self.options) from None

    def switch(self, backend: str | LoopRunner) -> None:
        if isinstance(backend, LoopRunner):
            self.runner = backend
        elif isinstance(backend, str):
            self.runner = self._runner_for(backend)  # raises now for an unknown name
        else:
            raise ArgumentError(
                "app.loop_backend takes a backend name (a str such as 'trio') or a "
                f"LoopRunner; got {backend!r} ({type(backend).__name__})"
            )
        self.config["LOOPSHIM_BACKEND"] = self.runner.name
        self._use(self.runner)

    def _use(self, runner: LoopRunner) -> None:
        #: Makes the synchronous callable Flask gets for an async function.
        self.async_to_sync = sync_caller_maker(runner, bridged=self.reentrant)
        #: For a plain async function, known to be one: call it with this, unchecked.
        self.call = direct_call(runner, bridged=self.reentrant)

    def install(self, app: flask.Flask) -> None:
        """Point *app*'s ``async_to_sync`` at the current runner. Flask calls it (through
        ``ensure_sync``) for every async view and hook of every request, so it is the
        runner's own maker, not a method that looks the runner up."""
        # An instance attribute shadows Flask.async_to_sync.
        setattr(app, "async_to_sync", self.async_to_sync)  # noqa: B010


def _reentrant(value: object) -> bool:
    """``LOOPSHIM_REENTRANT``: None (the default) means on when greenlet is installed."""
    if value is None:
        return bridge_available()
    if not isinstance(value, bool):
        raise OptionError(
            f"LOOPSHIM_REENTRANT must be True, False or None (on when greenlet is "
            f"installed); got {value!r} ({type(value).__name__})"
        )
    if value and not bridge_available():
        raise OptionError(
            "LOOPSHIM_REENTRANT = True runs async views through a greenlet bridge, and the "
            'greenlet package is not installed: pip install "loopshim[flask]"'
        )
    return value


def _explained(exc: OptionError, backend: str | None, options: Mapping[str, Any]) -> OptionError:
    """*exc* from get_runner(), said in the app's configuration terms."""
    message = str(exc)
    if "hashable" in message:
        return OptionError(
            f"the values of LOOPSHIM_OPTIONS must be hashable: the app shares its runner "
            f"with every caller of the same backend and options; got {options!r}. To give "
            "the app a runner of its own, make one with loopshim.get_runner(..., "
            "cached=False) and assign it: app.loop_backend = runner"
        )
    if options and "unknown option" in message:
        name = backend or "the default backend"
        return OptionError(
            f"{message} (LOOPSHIM_OPTIONS = {options!r} is applied to {name}; an option "
            "of another backend must be removed from it before switching)"
        )
    return exc


def _quick_ensure_sync(state: _AppState) -> Callable[..., Any]:
    """What ``Flask.ensure_sync`` does, with the common cases — a plain ``def`` or
    ``async def`` function — answered without inspect's general machinery. It holds no
    reference to the app, which stores it: an app must stay free of reference cycles, so
    that it is freed as soon as its last reference goes (pallets/flask#3761)."""

    def ensure_sync(func: Callable[..., Any]) -> Callable[..., Any]:
        if is_plain_async_def(func):
            call = state.call
            return SyncCall(call, func) if call is not None else state.async_to_sync(func)
        # A plain sync function, unless inspect.markcoroutinefunction marked it as async.
        if type(func) is types.FunctionType and getattr(func, "_is_coroutine_marker", None) is None:
            return func
        if inspect.iscoroutinefunction(func):  # Flask's own test
            return state.async_to_sync(func)
        return func

    return ensure_sync


def _weak_wsgi_app(app: flask.Flask) -> Callable[..., Any]:
    """``app.wsgi_app`` as a function that reaches the app through a weak reference,
    to be stored on the app without making a reference cycle."""
    if "wsgi_app" in vars(app):  # middleware installed already: it holds the app anyway
        return app.wsgi_app
    ref = weakref.ref(app)
    method = type(app).wsgi_app

    @functools.wraps(method)
    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        target = ref()
        if target is None:
            raise UsageError("the Flask app of this WSGI callable was garbage-collected")
        return method(target, environ, start_response)

    return wsgi_app


def _state(app: flask.Flask) -> _AppState:
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise AttributeError(
            "app.loop_backend is available once the LoopShim extension is set up: "
            "LoopShim(app) or LoopShim().init_app(app)"
        )
    return state  # type: ignore[no-any-return]


class _LoopBackend:
    """``app.loop_backend``: the name of the app's backend; assigning a name switches to
    the shared runner of that backend (with the app's scope and options), assigning a
    :class:`~loopshim.LoopRunner` makes the app use that very runner.

    Assigning to an attribute can only be intercepted by the class, so this descriptor
    is set on the app's class (``flask.Flask`` itself for a plain app). For an app
    without LoopShim it is invisible: ``loop_backend`` behaves as any attribute would
    (reading it raises ``AttributeError`` until it is assigned, and assigning stores it
    on the app)."""

    def __get__(self, app: flask.Flask | None, owner: type | None = None) -> Any:
        if app is None:
            return self
        state = app.extensions.get(EXTENSION_KEY)
        if state is None:
            try:
                return vars(app)["loop_backend"]
            except KeyError:
                state = _state(app)  # raises AttributeError: how to set LoopShim up
        return state.backend

    def __set__(self, app: flask.Flask, backend: str | LoopRunner) -> None:
        state = app.extensions.get(EXTENSION_KEY)
        if state is None:
            vars(app)["loop_backend"] = backend
            return
        state.switch(backend)
        state.install(app)

    def __delete__(self, app: flask.Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise AttributeError("app.loop_backend cannot be deleted while LoopShim is set up")
        try:
            del vars(app)["loop_backend"]
        except KeyError:
            raise AttributeError("loop_backend") from None


class LoopShim:
    """The Flask extension: ``LoopShim(app)`` or ``LoopShim().init_app(app)``.

    Configuration, read from ``app.config`` by :meth:`init_app` (the constructor's
    arguments are the defaults):

    - ``LOOPSHIM_BACKEND``: ``"asyncio"``, ``"uvloop"``, ``"trio"`` or a registered name;
      default ``$LOOPSHIM_BACKEND``, else asyncio.
    - ``LOOPSHIM_SCOPE``: ``"process"`` (default), ``"thread"`` or ``"call"``.
    - ``LOOPSHIM_OPTIONS``: a dict of runner options (``timeout``, ``shutdown_timeout``...).
    - ``LOOPSHIM_REENTRANT``: let sync code called from an async view or hook (a
      template's async context processor, an extension's ``ensure_sync``) call async
      code again; ``None`` (default) means on when greenlet is installed.

    Bad values raise at once. The extension overrides the app's ``async_to_sync`` (and,
    unless the app's class has its own, ``ensure_sync``, with a faster check), so
    everything Flask passes through ``ensure_sync`` runs on the selected runner, and runs
    each request in its own copy of the server thread's context, so that context
    variables set by one request never reach the next request served by that thread.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        app: flask.Flask | None = None,
        *,
        backend: str | None = None,
        scope: str = DEFAULT_SCOPE,
        options: Mapping[str, Any] | None = None,
        reentrant: bool | None = None,
    ) -> None:
        self.backend = backend
        self.scope = scope
        self.options = dict(options or {})
        self.reentrant = reentrant
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Set the extension up on *app*.

        .. versionadded:: 0.1
        """
        if EXTENSION_KEY in app.extensions:
            raise UsageError(f"LoopShim is already set up on {app!r}")
        state = _AppState(
            app.config,
            app.config.get("LOOPSHIM_BACKEND", self.backend),
            app.config.get("LOOPSHIM_SCOPE", self.scope),
            app.config.get("LOOPSHIM_OPTIONS", self.options),
            app.config.get("LOOPSHIM_REENTRANT", self.reentrant),
        )
        app.extensions[EXTENSION_KEY] = state
        state.install(app)
        if type(app).ensure_sync is flask.Flask.ensure_sync:  # a subclass's own is kept
            setattr(app, "ensure_sync", _quick_ensure_sync(state))  # noqa: B010
        app.wsgi_app = isolate_requests(_weak_wsgi_app(app))  # type: ignore[method-assign,assignment]
        if not isinstance(getattr(type(app), "loop_backend", None), _LoopBackend):
            type(app).loop_backend = _LoopBackend()  # type: ignore[attr-defined]

    @staticmethod
    def runner(app: flask.Flask | None = None) -> LoopRunner:
        """The runner *app* (default: the current app) uses now.

        .. versionadded:: 0.1
        """
        return _state(app if app is not None else flask.current_app).runner


def copy_current_request_context(func: Callable[P, T]) -> Callable[P, T]:
    """Like :func:`flask.copy_current_request_context`, and also for async functions.

    For an ``async def`` function it returns an async function that pushes a copy of
    the current request context around the call, so a background task started with
    ``spawn`` can use ``request``, ``session`` and ``g``::

        @app.post("/orders")
        async def create_order():
            LoopShim.runner().spawn(copy_current_request_context(send_receipt))
            return "", 202

    Without it, a background task never sees the request that started it. Synchronous
    functions are passed to Flask's own version.

    .. versionadded:: 0.1
    """
    if not is_async_callable(func):
        return flask.copy_current_request_context(func)
    from flask.globals import request_ctx

    if not flask.has_request_context():
        raise UsageError(
            "copy_current_request_context() needs a request context: call it while "
            "handling a request"
        )
    context = request_ctx._get_current_object().copy()  # type: ignore[attr-defined]
    async_func: Callable[P, Awaitable[Any]] = func  # type: ignore[assignment]

    @functools.wraps(func)
    async def with_request_context(*args: P.args, **kwargs: P.kwargs) -> Any:
        with context:
            return await async_func(*args, **kwargs)

    return with_request_context  # type: ignore[return-value]
