"""loop_local: one value per running loop, closed with that loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest
from conftest import BackendCase, make_runner

import loopshim


class Client:
    def __init__(self) -> None:
        self.closed = False


def test_one_instance_per_loop_closed_with_the_loop(case: BackendCase, scope: str) -> None:
    made: list[Client] = []
    closed: list[Client] = []

    def factory() -> Client:
        made.append(Client())
        return made[-1]

    async def aclose(client: Client) -> None:
        await anyio.sleep(0)
        client.closed = True
        closed.append(client)

    local = loopshim.loop_local(factory, aclose=aclose)

    async def use() -> Client:
        first = local.get()
        await anyio.sleep(0)
        assert local.get() is first
        return first

    runner = make_runner(case, scope)
    a1, a2 = runner.run(use), runner.run(use)
    other: list[Client] = []
    t = threading.Thread(target=lambda: other.append(runner.run(use)))
    t.start()
    t.join(30)
    if scope == "process":
        assert a1 is a2 is other[0]  # one loop for everybody
    elif scope == "thread" and case.options.get("driver") != "public":
        assert a1 is a2  # one loop per thread
        assert other[0] is not a1
    else:
        assert len({id(a1), id(a2), id(other[0])}) == 3  # a loop per call
    runner.close()
    assert made
    assert all(c.closed for c in made)
    assert sorted(map(id, closed)) == sorted(map(id, made))


def test_get_outside_a_loop_is_an_error() -> None:
    local = loopshim.loop_local(Client)
    with pytest.raises(loopshim.LoopshimError, match="no loop is running"):
        local.get()


def test_get_on_a_foreign_loop_is_an_error() -> None:
    local = loopshim.loop_local(Client)

    async def use() -> Any:
        return local.get()

    with pytest.raises(loopshim.LoopshimError, match="loopshim did not start"):
        asyncio.run(use())


def test_failing_aclose_is_logged_and_others_still_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []

    async def broken(_: object) -> None:
        raise RuntimeError("aclose failed")

    async def fine(_: object) -> None:
        closed.append("fine")

    first = loopshim.loop_local(object, aclose=fine)
    second = loopshim.loop_local(object, aclose=broken)

    async def use() -> None:
        first.get()
        second.get()

    runner = loopshim.get_runner("asyncio", scope="call", cached=False)
    runner.run(use)
    assert closed == ["fine"]
    assert "aclose failed" in caplog.text or "closing" in caplog.text


def test_factory_must_not_be_async() -> None:
    async def make() -> Client:
        return Client()

    local = loopshim.loop_local(make)  # type: ignore[arg-type]

    async def use() -> Any:
        return local.get()

    with pytest.raises(TypeError, match="returned an awaitable"):
        loopshim.get_runner("asyncio", scope="call", cached=False).run(use)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="callable factory"):
        loopshim.loop_local(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aclose"):
        loopshim.loop_local(Client, aclose="close")  # type: ignore[arg-type]
