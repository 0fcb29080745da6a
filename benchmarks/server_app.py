"""The Flask app that benchmarks/server.py serves with gunicorn, one variant per server:

- ``sync``: a sync view;
- ``default``: an async view on Flask's default (asgiref's ``async_to_sync``);
- ``loopshim:BACKEND:SCOPE``: an async view on loopshim's LoopShim extension, set up
  through the ``LOOPSHIM_BACKEND`` and ``LOOPSHIM_SCOPE`` config keys.

``GET /?id=N`` answers ``N``, so the load generator can check every response.

    gunicorn -k gthread --threads 8 -b 127.0.0.1:8000 \\
        --chdir benchmarks 'server_app:create_app("loopshim:trio:process")'
"""

from __future__ import annotations

import anyio.lowlevel
from flask import Flask, request

from loopshim.flask import LoopShim


def create_app(variant: str) -> Flask:
    """The app for *variant* (see the module docstring)."""
    app = Flask(__name__)
    if variant.startswith("loopshim:"):
        _, backend, scope = variant.split(":")
        app.config.update(LOOPSHIM_BACKEND=backend, LOOPSHIM_SCOPE=scope)
        LoopShim(app)
    elif variant not in ("sync", "default"):
        raise ValueError(f"unknown variant {variant!r}: sync, default or loopshim:BACKEND:SCOPE")

    if variant == "sync":

        @app.get("/")
        def echo_sync() -> str:
            return request.args["id"]

    else:

        @app.get("/")
        async def echo_async() -> str:
            await anyio.lowlevel.checkpoint()  # a view that awaits, on any backend
            return request.args["id"]

    return app
