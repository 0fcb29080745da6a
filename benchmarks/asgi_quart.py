"""Quart's app for benchmarks/asgi.py: the views of ``asgi_apps.py``, written for Quart."""

from __future__ import annotations

import asyncio
import time

from asgi_apps import FANOUT, SLEEP
from quart import Quart

app = Quart(__name__)


@app.get("/fanout")
async def fanout() -> str:
    await asyncio.gather(*(asyncio.sleep(SLEEP) for _ in range(FANOUT)))
    return "ok"


@app.get("/trivial")
async def trivial() -> str:
    return "ok"


@app.get("/blocking")
def blocking() -> str:  # Quart runs sync views in its executor's threads
    time.sleep(SLEEP)
    return "ok"
