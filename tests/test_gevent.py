"""Under gevent's monkey-patching: process scope works and lets greenlets run while a
call waits; the scopes and backends that cannot work say so.

Each case runs in a fresh interpreter, since monkey-patching cannot be undone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("gevent")


def run_patched(source: str) -> dict[str, object]:
    script = "from gevent import monkey\nmonkey.patch_all()\n" + textwrap.dedent(source)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("loop_backend", ["asyncio", "uvloop"])
def test_process_scope_waits_cooperatively(loop_backend: str) -> None:
    if loop_backend == "uvloop":
        pytest.importorskip("uvloop")
    result = run_patched(f"""
        import asyncio, json, threading
        import gevent
        import loopshim

        runner = loopshim.get_runner({loop_backend!r})
        event = None
        ticks = []

        async def wait_for_the_other_greenlet():
            global event
            event = asyncio.Event()
            await asyncio.wait_for(event.wait(), 20)
            return "woken"

        async def wake():
            event.set()
            return "set"

        def ticker():
            while len(ticks) < 5:
                ticks.append(1)
                gevent.sleep(0.01)

        # If a waiting caller blocked the hub, the second greenlet could never wake the
        # first one, and the ticker would not tick while it waits.
        first = gevent.spawn(runner.run, wait_for_the_other_greenlet)
        gevent.sleep(0.05)
        tick = gevent.spawn(ticker)
        second = gevent.spawn(runner.run, wake)
        gevent.joinall([first, second, tick], timeout=30)
        many = [gevent.spawn(runner.run, asyncio.sleep, 0.01, i) for i in range(50)]
        gevent.joinall(many, timeout=30)
        runner.close()
        print(json.dumps({{
            "first": first.value, "second": second.value, "ticks": len(ticks),
            "many": [g.value for g in many],
            "errors": [repr(g.exception) for g in [first, second, *many] if g.exception],
        }}))
    """)
    assert result == {
        "first": "woken",
        "second": "set",
        "ticks": 5,
        "many": list(range(50)),
        "errors": [],
    }


@pytest.mark.loopshim_scopes("thread", "call")
def test_thread_and_call_scope_refuse_clearly(loop_scope: str) -> None:
    result = run_patched(f"""
        import json, asyncio
        import loopshim

        runner = loopshim.get_runner("asyncio", scope={loop_scope!r}, cached=False)
        try:
            runner.run(asyncio.sleep, 0)
        except loopshim.ScopeError as exc:
            print(json.dumps({{"error": str(exc)}}))
    """)
    assert "cannot run under gevent's monkey-patching" in str(result["error"])
    assert "Use process scope" in str(result["error"])


def test_trio_refuses_clearly() -> None:
    pytest.importorskip("trio")
    result = run_patched("""
        import json
        import loopshim

        try:
            loopshim.get_runner("trio")
        except loopshim.BackendUnavailable as exc:
            print(json.dumps({"error": str(exc)}))
    """)
    assert "'trio' cannot run under gevent's monkey-patching" in str(result["error"])


def test_flask_views_and_background_tasks_under_gevent() -> None:
    result = run_patched("""
        import json
        import anyio
        import gevent
        from flask import Flask, g
        from loopshim.flask import LoopShim

        app = Flask(__name__)
        LoopShim(app)
        done = []

        async def background(uid):
            await anyio.sleep(0.05)
            done.append(uid)

        @app.get("/<uid>")
        async def view(uid):
            g.uid = uid
            await anyio.sleep(0.01)
            LoopShim.runner().spawn(background, uid)
            return {"uid": g.uid}

        client_calls = [
            gevent.spawn(lambda i=i: app.test_client().get(f"/u{i}").get_json()["uid"])
            for i in range(30)
        ]
        gevent.joinall(client_calls, timeout=30)
        LoopShim.runner(app).close()
        print(json.dumps({"seen": [c.value for c in client_calls], "done": sorted(done)}))
    """)
    expected = [f"u{i}" for i in range(30)]
    assert result == {"seen": expected, "done": sorted(expected)}
