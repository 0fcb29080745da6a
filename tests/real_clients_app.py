"""The Flask app that tests/test_real_clients.py serves with gunicorn: real database,
cache and HTTP clients used by async views through ``LoopShim``.

Configured by environment variables: ``BACKEND`` and ``SCOPE`` (the runner's),
``SHUTDOWN_TIMEOUT``, ``PG_DSN``, ``REDIS_URL``, ``UPSTREAM`` (an HTTP server's base URL),
``SQLITE`` (a database file), ``POOL_SIZE`` (of each connection pool), ``WRITES_TABLE``.

Where the clients live:

- ``process`` scope on asyncio and uvloop: module-level clients, made once at import on
  the runner's loop, and never closed by the app (loopshim's shutdown deals with what they
  leave on the loop);
- ``thread`` and ``call`` scope: one :func:`loopshim.loop_local` per client, closed with
  its loop by its ``aclose``; ``redis.asyncio.Redis`` and ``asyncpg``'s pool are awaitable
  values (awaiting one connects it, and returns it);
- trio: ``httpx`` as above; the asyncio-only clients as ``loop_local`` values in every
  scope — they fail on trio, and the test checks how.

Routes:

- ``GET /<client>/<n>[?hold=SECONDS]``: ``{"client", "n", "value", "peak"}``, the value
  computed from *n* by the server behind the client; with ``hold``, the Postgres clients
  keep their pooled connection that long; ``peak`` is the most requests that were in that
  client's view at once (in process scope, where all share one loop);
- ``GET /pid``: the worker's process id;
- ``GET /spawn/<n>?delay=SECONDS``: spawns a background task that inserts *n* into
  ``WRITES_TABLE`` after *delay* (process scope).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import redis.asyncio
from flask import Flask, request
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import loopshim
from loopshim.flask import LoopShim

# loopshim logs on the "loopshim" logger: to stderr, where the test reads it.
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("loopshim").setLevel(logging.INFO)

BACKEND = os.environ["BACKEND"]
SCOPE = os.environ["SCOPE"]
PG_DSN = os.environ["PG_DSN"]
REDIS_URL = os.environ["REDIS_URL"]
UPSTREAM = os.environ["UPSTREAM"]
SQLITE = os.environ["SQLITE"]
POOL_SIZE = int(os.environ["POOL_SIZE"])
WRITES_TABLE = os.environ.get("WRITES_TABLE", "writes")

app = Flask(__name__)
app.config.update(
    LOOPSHIM_BACKEND=BACKEND,
    LOOPSHIM_SCOPE=SCOPE,
    LOOPSHIM_OPTIONS={"shutdown_timeout": float(os.environ["SHUTDOWN_TIMEOUT"])},
)
LoopShim(app)


def new_psycopg_pool() -> AsyncConnectionPool:
    return AsyncConnectionPool(PG_DSN, min_size=1, max_size=POOL_SIZE, open=False)


def new_asyncpg_pool() -> asyncpg.Pool:
    return asyncpg.create_pool(PG_DSN, min_size=1, max_size=POOL_SIZE)


def new_redis() -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(REDIS_URL)


def new_pg_engine() -> AsyncEngine:
    url = PG_DSN.replace("postgresql://", "postgresql+asyncpg://", 1)
    return create_async_engine(url, pool_size=POOL_SIZE, max_overflow=0)


def new_sqlite_engine() -> AsyncEngine:
    return create_async_engine(f"sqlite+aiosqlite:///{SQLITE}")


def new_http() -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=UPSTREAM)


Getter = Callable[[], Awaitable[Any]]


def module_level(value: Any) -> Getter:
    async def get() -> Any:
        return value

    return get


def per_loop(factory: Callable[[], Any], aclose: Callable[[Any], Awaitable[object]]) -> Getter:
    local = loopshim.loop_local(factory, aclose=aclose)

    async def get() -> Any:
        value = local.get()
        if isinstance(value, AsyncConnectionPool):
            await value.open()  # a no-op once open
            return value
        if hasattr(value, "__await__"):  # asyncpg's pool, redis: connects once, returns itself
            return await value
        return value

    return get


async def _close_pool(pool: AsyncConnectionPool) -> None:
    await pool.close()


if SCOPE == "process":
    http_client = module_level(new_http())  # httpx makes no loop-bound object until used
else:
    http_client = per_loop(new_http, lambda client: client.aclose())

if SCOPE == "process" and BACKEND != "trio":

    async def _made_on_the_loop() -> tuple[Any, ...]:
        psycopg = new_psycopg_pool()
        await psycopg.open(wait=True)
        return psycopg, await new_asyncpg_pool(), await new_redis()

    PSYCOPG, ASYNCPG, REDIS = LoopShim.runner(app).run(_made_on_the_loop)
    psycopg_pool = module_level(PSYCOPG)
    asyncpg_pool = module_level(ASYNCPG)
    redis_client = module_level(REDIS)
    pg_engine = module_level(new_pg_engine())
    sqlite_engine = module_level(new_sqlite_engine())
else:
    psycopg_pool = per_loop(new_psycopg_pool, _close_pool)
    asyncpg_pool = per_loop(new_asyncpg_pool, lambda pool: pool.close())
    redis_client = per_loop(new_redis, lambda client: client.aclose())
    pg_engine = per_loop(new_pg_engine, lambda engine: engine.dispose())
    sqlite_engine = per_loop(new_sqlite_engine, lambda engine: engine.dispose())


async def use_psycopg(n: int, hold: float) -> Any:
    pool = await psycopg_pool()
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT %s::int + 1 FROM pg_sleep(%s)", (n, hold))
        row = await cursor.fetchone()
        return row[0]


async def use_asyncpg(n: int, hold: float) -> Any:
    pool = await asyncpg_pool()
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT $1::int * 2 FROM pg_sleep($2)", n, hold)


async def use_redis(n: int, hold: float) -> Any:
    client = await redis_client()
    key = f"loopshim-test:{BACKEND}:{SCOPE}:{os.getpid()}:{n}"
    await client.set(key, n * 3)
    value = await client.get(key)
    await client.delete(key)
    return int(value)


async def use_pg_engine(n: int, hold: float) -> Any:
    engine = await pg_engine()
    query = text("SELECT CAST(:n AS INTEGER) + 4 FROM pg_sleep(:hold)")
    async with engine.connect() as conn:
        return (await conn.execute(query, {"n": n, "hold": hold})).scalar_one()


async def use_sqlite_engine(n: int, hold: float) -> Any:
    engine = await sqlite_engine()
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT :n + 5"), {"n": n})).scalar_one()


async def use_http(n: int, hold: float) -> Any:
    client = await http_client()
    return (await client.get("/", params={"n": n})).text


CLIENTS: dict[str, Callable[[int, float], Awaitable[Any]]] = {
    "psycopg": use_psycopg,
    "asyncpg": use_asyncpg,
    "redis": use_redis,
    "sqlalchemy-asyncpg": use_pg_engine,
    "sqlalchemy-aiosqlite": use_sqlite_engine,
    "httpx": use_http,
}
in_view = dict.fromkeys(CLIENTS, 0)
peak = dict.fromkeys(CLIENTS, 0)


@app.get("/<client>/<int:n>")
async def use(client: str, n: int) -> dict[str, Any]:
    in_view[client] += 1
    peak[client] = max(peak[client], in_view[client])
    try:
        value = await CLIENTS[client](n, float(request.args.get("hold", 0)))
    finally:
        in_view[client] -= 1
    return {"client": client, "n": n, "value": value, "peak": peak[client]}


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())


async def write_later(n: int, delay: float) -> None:
    await asyncio.sleep(delay)
    pool = await psycopg_pool()
    async with pool.connection() as conn:
        await conn.execute(f"INSERT INTO {WRITES_TABLE} (n) VALUES (%s)", (n,))


@app.get("/spawn/<int:n>")
async def spawn(n: int) -> dict[str, Any]:
    LoopShim.runner().spawn(write_later, n, float(request.args["delay"]))
    return {"spawned": n}


@app.errorhandler(Exception)
def report(error: Exception) -> tuple[dict[str, Any], int]:
    """What a view raised, with its PEP 678 notes, for the test to read."""
    app.logger.exception("the view failed")
    notes = [str(note) for note in getattr(error, "__notes__", ())]
    return {"error": type(error).__name__, "message": str(error), "notes": notes}, 500
