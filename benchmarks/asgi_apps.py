"""The apps that benchmarks/asgi.py serves, one per variant, the same three views in each:

- ``GET /fanout``: awaits three concurrent 10 ms sleeps (``asyncio.gather``);
- ``GET /trivial``: an async view that returns at once;
- ``GET /blocking``: a sync view doing 10 ms of blocking work (``time.sleep``).

Quart's is in ``asgi_quart.py``; ``bridge_app`` is Flask through ``loopshim.asgi.to_asgi`` (its
worker threads: ``$BENCH_THREADS``, default 32); ``create_app(variant)`` is the Flask WSGI
app for gunicorn: ``"loopshim"`` (LoopShim on uvloop, process scope) or ``"default"``
(Flask's own ``async_to_sync``, asgiref).
"""

from __future__ import annotations

import asyncio
import os
import time

from flask import Flask

SLEEP = 0.01
FANOUT = 3


def _flask(name: str) -> Flask:
    app = Flask(name)

    @app.get("/fanout")
    async def fanout() -> str:
        await asyncio.gather(*(asyncio.sleep(SLEEP) for _ in range(FANOUT)))
        return "ok"

    @app.get("/trivial")
    async def trivial() -> str:
        return "ok"

    @app.get("/blocking")
    def blocking() -> str:
        time.sleep(SLEEP)
        return "ok"

    return app


def create_app(variant: str) -> Flask:
    """The WSGI app of a gunicorn variant: ``"loopshim"`` or ``"default"``."""
    app = _flask(__name__)
    if variant == "loopshim":
        from loopshim.flask import LoopShim

        app.config.update(LOOPSHIM_BACKEND="uvloop", LOOPSHIM_SCOPE="process")
        LoopShim(app)
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}: loopshim or default")
    return app


def _bridge_app() -> object:
    from loopshim.asgi import to_asgi

    return to_asgi(_flask(__name__), threads=int(os.environ.get("BENCH_THREADS", "32")))


#: Flask through loopshim's ASGI bridge.
bridge_app = _bridge_app()
