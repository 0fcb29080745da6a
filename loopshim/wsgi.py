"""Serve an ``async def handler(request) -> Response`` (werkzeug's ``Request`` and
``Response``) as a WSGI application, without Flask.

::

    from werkzeug import Request, Response
    from loopshim.wsgi import to_wsgi

    async def handler(request: Request) -> Response:
        return Response(f"hello {request.args.get('name', 'world')}")

    application = to_wsgi(handler, backend="trio")

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

try:
    from werkzeug.wrappers import Request, Response
except ImportError as exc:  # pragma: no cover - werkzeug comes with the flask extra
    from ._errors import MissingExtra

    raise MissingExtra(
        'loopshim.wsgi needs werkzeug, which is not installed: pip install "loopshim[flask]"',
        name="werkzeug",
    ) from exc

from ._core import check_async_callable, get_runner
from ._ensure_sync import isolate_requests
from ._errors import ArgumentError
from ._options import DEFAULT_SCOPE

__all__ = ["to_wsgi"]

Handler = Callable[[Request], Awaitable[Response]]


def to_wsgi(
    handler: Handler,
    *,
    backend: str | None = None,
    scope: str = DEFAULT_SCOPE,
    **options: Any,
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """Return a WSGI application that runs ``await handler(Request(environ))`` on the
    given backend and scope (see :func:`loopshim.get_runner` for both, and for the
    options), and serves the ``Response`` it returns. Each request runs in its own copy
    of the server thread's context.

    .. versionadded:: 0.1
    """
    check_async_callable(handler, "to_wsgi")
    runner = get_runner(backend, scope=scope, **options)
    run = runner.wrap(handler)

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        response = run(Request(environ))
        if not isinstance(response, Response):
            raise ArgumentError(
                f"the handler {getattr(handler, '__qualname__', handler)!r} returned "
                f"{response!r}; it must return a werkzeug Response"
            )
        return response(environ, start_response)

    return isolate_requests(application)
