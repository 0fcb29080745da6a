"""loopshim from a real Jupyter kernel: the kernel's asyncio loop is running while a
cell executes, and a cell's code calls loopshim synchronously."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")


@pytest.fixture(scope="module")
def kernel() -> Iterator[Any]:
    manager = jupyter_client.KernelManager(kernel_name="python3")
    # The kernel runs this interpreter (the venv), bound to 127.0.0.1 only.
    manager.kernel_spec.argv[0] = __import__("sys").executable
    manager.ip = "127.0.0.1"
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute(client: Any, code: str) -> tuple[str, str]:
    """Run a cell; return (stdout, error text)."""
    stdout: list[str] = []
    errors: list[str] = []

    def on_output(message: dict[str, Any]) -> None:
        content = message["content"]
        if message["msg_type"] == "stream" and content.get("name") == "stdout":
            stdout.append(content["text"])
        elif message["msg_type"] == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")

    client.execute_interactive(textwrap.dedent(code), timeout=60, output_hook=on_output)
    return "".join(stdout), "".join(errors)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_a_cell_calls_loopshim_run(kernel: Any, backend: str) -> None:
    pytest.importorskip(backend)
    out, error = execute(
        kernel,
        f"""
        import asyncio, anyio, loopshim
        print("kernel loop running:", asyncio.get_running_loop().is_running())

        async def fetch(n):
            await anyio.sleep(0.01)
            return n * 2

        print("result:", loopshim.run(fetch, 21, backend={backend!r}))
        print("wrapped:", loopshim.get_runner({backend!r}).wrap(fetch)(5))
        """,
    )
    assert not error, error
    assert "kernel loop running: True" in out
    assert "result: 42" in out
    assert "wrapped: 10" in out


@pytest.mark.timeout(180)
def test_a_cell_awaits_run_async_and_thread_scope_explains_itself(kernel: Any) -> None:
    out, error = execute(
        kernel,
        """
        import anyio, loopshim

        async def fetch(n):
            await anyio.sleep(0.01)
            return n + 1

        print("awaited:", await loopshim.get_runner("asyncio").run_async(fetch, 1))
        try:
            loopshim.get_runner("asyncio", scope="thread").run(fetch, 1)
        except loopshim.ReentrantCallError as exc:
            print("refused:", exc)
        """,
    )
    assert not error, error
    assert "awaited: 2" in out
    assert "refused: this thread is running an asyncio event loop" in out
    assert "run_async" in out
