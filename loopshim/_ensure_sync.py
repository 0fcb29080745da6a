"""``ensure_sync`` for extension authors, and the per-request context isolation the
WSGI integrations share. Neither imports Flask or werkzeug."""

from __future__ import annotations

import contextvars
import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._registry import get_runner
from ._runner import is_async_callable

__all__ = ["ensure_sync", "isolate_requests"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def ensure_sync(func: Callable[..., Any]) -> Callable[..., Any]:
    """Return *func* unchanged if it is synchronous; otherwise a synchronous wrapper.

    Inside a Flask app context the wrapper comes from that app (``current_app.
    ensure_sync``), so it runs on the backend the app selected with
    :class:`loopshim.flask.LoopShim` — or on Flask's default if the app has none. Outside
    an app context it runs on the default runner (``get_runner()``). Extension authors
    call it where they would call ``current_app.ensure_sync``, without importing Flask.

    .. versionadded:: 0.1
    """
    if not is_async_callable(func):
        return func
    flask = sys.modules.get("flask")
    if flask is not None and flask.has_app_context():
        return flask.current_app.ensure_sync(func)  # type: ignore[no-any-return]
    return get_runner().wrap(func)


class _ContextIterable:
    """A WSGI response iterable whose iteration and ``close()`` run in one context."""

    __slots__ = ("_context", "_iterable", "_iterator")

    def __init__(self, context: contextvars.Context, iterable: Iterable[bytes]) -> None:
        self._context = context
        self._iterable = iterable
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._iterable)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        close = getattr(self._iterable, "close", None)
        if close is not None:
            self._context.run(close)


def isolate_requests(wsgi_app: WSGIApp) -> WSGIApp:
    """Run each request — the call and the iteration of its response — in its own copy
    of the server thread's context, so values that async code copies back to the caller
    never reach the next request served by the same thread."""

    @functools.wraps(wsgi_app)
    def in_own_context(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        context = contextvars.copy_context()
        return _ContextIterable(context, context.run(wsgi_app, environ, start_response))

    return in_own_context
