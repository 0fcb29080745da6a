"""The Flask app that benchmarks/db.py measures, one variant per app: one ``SELECT 1`` per
request.

- ``sync``: a sync view, through ``psycopg_pool.ConnectionPool`` (autocommit: the query
  is the only round trip, as with asyncpg);
- ``loopshim:BACKEND:SCOPE``: an async view on loopshim's LoopShim extension, through an
  ``asyncpg`` pool: in ``process`` scope one pool, made when the app is created, on the
  runner's loop; in ``thread`` (and ``call``) scope a pool per loop, through
  :func:`loopshim.loop_local`. The pool does not reset a connection's session with a
  query of its own when it comes back (psycopg's pool does not either).

``GET /?id=N`` answers ``N`` once the query has returned 1, so the load generator can
check every response. The DSN comes from the ``create_app`` argument, else from
``$LOOPSHIM_BENCH_DSN``; each pool holds ``pool_size`` connections (else
``$LOOPSHIM_BENCH_POOL``, else 8; a per-loop pool holds one, as its loop runs one
request at a time).

    LOOPSHIM_BENCH_DSN=postgresql://... gunicorn -k gthread --threads 8 \\
        --chdir benchmarks 'db_app:create_app("loopshim:uvloop:thread")'
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg
from flask import Flask, abort, request
from psycopg_pool import ConnectionPool

import loopshim
from loopshim.flask import LoopShim

DSN_ENV = "LOOPSHIM_BENCH_DSN"
POOL_ENV = "LOOPSHIM_BENCH_POOL"


class LoopPool:
    """An asyncpg pool for one loop, connected at its first use: a ``loop_local``
    factory returns at once, and a loop of ``thread`` scope runs one request at a time,
    so nothing races to connect it."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn = dsn
        self.size = size
        self.pool: asyncpg.Pool | None = None

    async def get(self) -> asyncpg.Pool:
        if self.pool is None:
            self.pool = await asyncpg.create_pool(
                self.dsn, min_size=self.size, max_size=self.size, reset=_keep_session
            )
        return self.pool

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.close()


async def _keep_session(connection: asyncpg.Connection) -> None:
    """asyncpg's pool resets a connection's session state with a query of its own when the
    connection comes back (``RESET ALL``, ``UNLISTEN *``...); psycopg's pool sends nothing
    for an idle autocommit connection. This keeps one round trip per request on both
    sides (asyncpg still rolls back a transaction left open)."""


def _answer(one: Any) -> str:
    if one != 1:
        abort(500, f"SELECT 1 returned {one!r}")
    return request.args["id"]


def create_app(variant: str, dsn: str | None = None, pool_size: int | None = None) -> Flask:
    """The app for *variant* (see the module docstring)."""
    dsn = dsn or os.environ[DSN_ENV]
    size = pool_size or int(os.environ.get(POOL_ENV, "8"))
    app = Flask(__name__)
    if variant == "sync":
        pool = ConnectionPool(
            dsn, min_size=size, max_size=size, kwargs={"autocommit": True}, open=True
        )
        pool.wait()
        app.extensions["db_pool"] = pool

        @app.get("/")
        def select_sync() -> str:
            with pool.connection() as conn:
                row = conn.execute("SELECT 1").fetchone()
            return _answer(row[0] if row else None)

        return app

    if not variant.startswith("loopshim:"):
        raise ValueError(f"unknown variant {variant!r}: sync or loopshim:BACKEND:SCOPE")
    _, backend, scope = variant.split(":")
    app.config.update(LOOPSHIM_BACKEND=backend, LOOPSHIM_SCOPE=scope)
    LoopShim(app)
    if scope == "process":
        shared = LoopPool(dsn, size)
        LoopShim.runner(app).run(shared.get)  # connected now, on the runner's loop
        app.extensions["db_pool"] = shared
        get_pool = shared.get
    else:
        per_loop = loopshim.loop_local(lambda: LoopPool(dsn, 1), aclose=LoopPool.aclose)

        async def get_pool() -> asyncpg.Pool:
            return await per_loop.get().get()

    @app.get("/")
    async def select_async() -> str:
        pool = await get_pool()
        return _answer(await pool.fetchval("SELECT 1"))

    return app


def close_app(app: Flask) -> None:
    """Close what :func:`create_app` opened for *app* (the runner too)."""
    pool = app.extensions.get("db_pool")
    shim = app.extensions.get("loopshim")
    if isinstance(pool, ConnectionPool):
        pool.close()
    elif isinstance(pool, LoopPool):
        LoopShim.runner(app).run(pool.aclose)
    if shim is not None:
        LoopShim.runner(app).close()
