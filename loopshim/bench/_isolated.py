"""A contender run in a process of its own, for a peer that patches the interpreter for
every other row (nest_asyncio): each caller thread gets a child process that sets the
contender up and runs the workload's batches there, timed there by the same loop as
every other row (``_timing``); the parent sends each batch's budget and receives the
durations of its calls, one JSON line each way. The round trip is outside every timed
call (it is part of the batch's wall-clock time only).

The child is ``python -m loopshim.bench._isolated KEY WORKLOAD``: it reads budgets on
stdin until it closes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import IO, Any, Final

from ._contenders import Prepared
from ._timing import BatchFactory, BatchRunner, Budget

__all__ = ["IsolatedError", "isolated", "main"]

#: How long a child may take to start, and to stop once its stdin closes, in seconds.
_START_S: Final = 60.0
_STOP_S: Final = 10.0


class IsolatedError(Exception):
    """The contender's own process failed; the message is its error."""


class _Child:
    """One child process, serving one caller thread."""

    def __init__(self, key: str, workload: str) -> None:
        # What the child prints on stderr (a crash) is kept for the error message, and
        # out of the bench's own output.
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "loopshim.bench._isolated", key, workload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        try:
            self._read()  # "ready", once it is set up
        except BaseException:
            self.close()
            raise

    def _read(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait(_START_S)
            self.stderr.seek(0)
            last = self.stderr.read().strip().splitlines()[-1:]
            why = f": {last[0]}" if last else ""
            raise IsolatedError(f"the contender's process ended (exit status {code}){why}")
        reply = json.loads(line)
        if "error" in reply:
            raise IsolatedError(reply["error"])
        return reply["ok"]

    def run(self, budget: Budget) -> list[int]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"seconds": budget.seconds, "calls": budget.calls}))
        self.process.stdin.write("\n")
        times: list[int] = self._read()
        return times

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(_STOP_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.stderr.close()


def isolated(key: str) -> Callable[[contextlib.ExitStack[Any]], Prepared]:
    """The set-up of the contender *key* of ``_async_peers.IN_PROCESS``, run in a
    process of its own per caller thread."""

    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        children: list[_Child] = []
        lock = threading.Lock()

        @stack.callback
        def close_children() -> None:
            for child in children:
                child.close()

        def own_batches(workload: str) -> BatchFactory:
            def per_thread() -> BatchRunner:
                child = _Child(key, workload)
                with lock:
                    children.append(child)
                return child.run

            return per_thread

        return Prepared(own_batches=own_batches)

    return setup


def _reply(out: IO[str], **fields: Any) -> None:
    out.write(json.dumps(fields) + "\n")
    out.flush()


def main(argv: list[str]) -> int:
    """The child: set the contender up, then run a batch for each budget read."""
    from ._async_peers import IN_PROCESS
    from ._workloads import WORKLOADS

    key, workload = argv
    out, sys.stdout = sys.stdout, sys.stderr  # stdout carries the replies, nothing else
    with contextlib.ExitStack() as stack:
        try:
            prepared = IN_PROCESS[key].setup(stack)
            run = WORKLOADS[workload].build(prepared)()
        except Exception as exc:
            _reply(out, error=f"set-up failed: {type(exc).__name__}: {exc}")
            return 1
        _reply(out, ok="ready")
        for line in sys.stdin:
            budget = json.loads(line)
            try:
                times = run(Budget(seconds=budget["seconds"], calls=budget["calls"]))
            except Exception as exc:
                _reply(out, error=f"{type(exc).__name__}: {exc}".strip().rstrip(":"))
                return 1
            _reply(out, ok=times)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
