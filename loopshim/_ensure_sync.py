"""``ensure_sync`` for extension authors, and the per-request context isolation the
WSGI integrations share. Neither imports Flask or werkzeug."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._core import CopyBackLog, copied_back, get_runner, is_async_callable

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


class _RequestEnd:
    """A WSGI response iterable that ends the request's isolation when it is closed."""

    __slots__ = ("_iterable", "_iterator", "_log")

    def __init__(self, iterable: Iterable[bytes], log: CopyBackLog) -> None:
        self._iterable = iterable
        self._iterator: Iterator[bytes] | None = None
        self._log = log

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        log = self._log
        log.busy += 1
        try:
            if self._iterator is None:
                self._iterator = iter(self._iterable)
            return next(self._iterator)
        finally:
            log.busy -= 1

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            _end(self._log)


def _end(log: CopyBackLog) -> None:
    """Reset what was copied back during the request, newest first, and the log."""
    tokens = log.tokens
    if tokens:  # most requests copy nothing back
        for token in reversed(tokens):
            # A token made in another context (a coroutine's nested call) or reset
            # already (the app reset its own variable) needs nothing from us.
            with contextlib.suppress(ValueError, RuntimeError):
                token.var.reset(token)
        tokens.clear()
    own, log.own = log.own, None
    if own is not None:
        # Every request's path: no suppress() object to make here.
        try:  # noqa: SIM105
            copied_back.reset(own)
        except (ValueError, RuntimeError):
            pass  # a context other than the request's (see above)


def isolate_requests(wsgi_app: WSGIApp) -> WSGIApp:
    """Keep what a request's coroutines set in context variables within that request.

    loopshim copies the variables a coroutine sets back into its caller's context, the
    server thread's. For the length of each request those copies are recorded, and reset
    when it ends: when the server closes its response, as every WSGI server does, or at
    the latest when the next request starts in the same context (a test client that
    never closes its responses). So they never reach the next request served by that
    thread. The request itself runs in the server thread's own context, as Flask expects
    (its test client re-enters contexts a request left behind); a file-wrapper response
    is returned as it is, so the server can still send the file directly.
    """

    @functools.wraps(wsgi_app)
    def isolated(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        stale = copied_back.get()
        if stale is not None and not stale.busy:  # a request whose response was not closed
            _end(stale)
        log = CopyBackLog()
        log.own = copied_back.set(log)
        log.busy = 1
        try:
            result = wsgi_app(environ, start_response)
        except BaseException:
            _end(log)
            raise
        finally:
            log.busy = 0
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            _end(log)  # the file is all that is left to send
            return result
        return _RequestEnd(result, log)

    return isolated
