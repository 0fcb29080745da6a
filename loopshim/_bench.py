"""The machinery behind ``loopshim bench``: the contenders (loopshim's runners and the
peers a user would otherwise pick), the workloads, and one interleaved measurement.

Every optional library (Flask, asgiref, anyio, trio, uvloop) is imported inside the
function that needs it, so importing this module costs nothing and works everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import random
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

if sys.version_info >= (3, 11):
    from typing import Self
else:
    from typing_extensions import Self

from ._core import BUILTIN_BACKENDS, available_backends, get_runner
from ._core import install_hint as _extra_hint

__all__ = [
    "BASELINE",
    "PEERS",
    "WORKLOADS",
    "BenchResult",
    "Cell",
    "Contender",
    "Settings",
    "Workload",
    "contenders_for",
    "install_hint",
    "run_bench",
]

AsyncFn = Callable[..., Coroutine[Any, Any, Any]]
#: Turns an async function into a sync callable: what a contender offers.
ToSync = Callable[[AsyncFn], Callable[..., Any]]
#: Makes a call for one caller thread; called in that thread.
CallFactory = Callable[[], Callable[[], None]]

#: The contender every ratio is relative to: Flask's default, asgiref's async_to_sync.
BASELINE: Final = "flask-default"

#: Warm-up per cell and caller thread: at least one call, then up to this many calls
#: or this many seconds, whichever comes first.
_WARMUP_CALLS: Final = 20
_WARMUP_SECONDS: Final = 0.1


class BenchError(Exception):
    """A contender gave a wrong answer."""


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# --- contenders -------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A contender, set up: how it runs an async function, and how a Flask app is made
    to run its async views with it."""

    to_sync: ToSync
    install: Callable[[Any], None]


@dataclass(frozen=True)
class Contender:
    """One way of running async code from sync code."""

    key: str
    label: str
    setup: Callable[[contextlib.ExitStack[Any]], Prepared]
    requires: tuple[str, ...] = ()
    backend: str | None = None  # loopshim's backend, for loopshim contenders
    scope: str | None = None

    @property
    def kind(self) -> Literal["loopshim", "peer"]:
        return "loopshim" if self.backend is not None else "peer"


def _prepared_peer(to_sync: ToSync) -> Prepared:
    """A peer prepared as Flask's docs suggest for another loop: it replaces the app's
    async_to_sync."""

    def install(app: Any) -> None:
        app.async_to_sync = to_sync

    return Prepared(to_sync, install)


def _leave_flask_alone(app: Any) -> None:
    return None


def _asgiref(fn: AsyncFn) -> Callable[..., Any]:
    from asgiref.sync import async_to_sync

    return async_to_sync(fn)


def _flask_default(stack: contextlib.ExitStack[Any]) -> Prepared:
    # A plain Flask app imports asgiref itself, only when it meets an async view.
    return Prepared(_asgiref, _leave_flask_alone)


def _runs_with(run: Callable[[Callable[[], Awaitable[Any]]], Any]) -> ToSync:
    """A to_sync for the ``trio.run(fn)`` family, which takes a function, not a coroutine."""

    def to_sync(fn: AsyncFn) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return run(functools.partial(fn, *args, **kwargs))

        return call

    return to_sync


def _takes_coroutine(run: Callable[[Coroutine[Any, Any, Any]], Any]) -> ToSync:
    """A to_sync for the ``asyncio.run(coro)`` family."""

    def to_sync(fn: AsyncFn) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return run(fn(*args, **kwargs))

        return call

    return to_sync


def _run_peer(module: str, adapt: Callable[[Any], ToSync]) -> Callable[..., Prepared]:
    """The set-up of a peer that runs each call with ``<module>.run``."""

    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        return _prepared_peer(adapt(importlib.import_module(module).run))

    return setup


def _anyio_portal(backend: str, options: dict[str, Any]) -> Callable[..., Prepared]:
    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        from anyio.from_thread import start_blocking_portal

        portal = stack.enter_context(start_blocking_portal(backend, options))
        return _prepared_peer(_runs_with(portal.call))

    return setup


def _new_loop(library: str) -> Any:
    if library == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    import asyncio

    return asyncio.new_event_loop()


def _loop_per_thread(library: str) -> Callable[..., Prepared]:
    """The recipe of keeping one event loop per thread and calling its
    ``run_until_complete``: about the least a thread-scope call can cost on *library*."""

    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        local = threading.local()
        made: list[Any] = []

        @stack.callback
        def close_loops() -> None:
            for loop in made:
                loop.close()

        def loop_of_thread() -> Any:
            loop = getattr(local, "loop", None)
            if loop is None:
                loop = local.loop = _new_loop(library)
                made.append(loop)
            return loop

        return _prepared_peer(
            _takes_coroutine(lambda coro: loop_of_thread().run_until_complete(coro))
        )

    return setup


def _loop_thread(library: str) -> Callable[..., Prepared]:
    """The recipe of one loop in a background thread and ``run_coroutine_threadsafe``:
    about the least a process-scope call can cost on *library*."""

    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        import asyncio

        loop = _new_loop(library)
        thread = threading.Thread(target=loop.run_forever, name=f"bench-{library}-loop")
        thread.start()

        def stop() -> None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

        stack.callback(stop)

        return _prepared_peer(
            _takes_coroutine(lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result())
        )

    return setup


def _trio_thread(stack: contextlib.ExitStack[Any]) -> Prepared:
    """trio's recipe for the same: ``trio.run`` in a background thread, and
    ``trio.from_thread.run`` with its token."""
    import trio

    started = threading.Event()
    handles: dict[str, Any] = {}

    async def serve() -> None:
        handles["token"] = trio.lowlevel.current_trio_token()
        handles["stop"] = stop = trio.Event()
        started.set()
        await stop.wait()

    thread = threading.Thread(target=trio.run, args=(serve,), name="bench-trio-loop")
    thread.start()
    started.wait()
    token = handles["token"]

    @stack.callback
    def stop() -> None:
        trio.from_thread.run_sync(handles["stop"].set, trio_token=token)
        thread.join()

    return _prepared_peer(_runs_with(functools.partial(trio.from_thread.run, trio_token=token)))


#: The peers, in table order; the first is the baseline.
PEERS: Final[tuple[Contender, ...]] = (
    Contender(BASELINE, "Flask default (asgiref)", _flask_default, ("asgiref",)),
    Contender("asyncio.run", "asyncio.run", _run_peer("asyncio", _takes_coroutine)),
    Contender("uvloop.run", "uvloop.run", _run_peer("uvloop", _takes_coroutine), ("uvloop",)),
    Contender("trio.run", "trio.run", _run_peer("trio", _runs_with), ("trio",)),
    Contender("anyio.run", "anyio.run", _run_peer("anyio", _runs_with), ("anyio",)),
    Contender(
        "anyio-portal-asyncio", "anyio portal asyncio", _anyio_portal("asyncio", {}), ("anyio",)
    ),
    Contender(
        "anyio-portal-uvloop",
        "anyio portal uvloop",
        _anyio_portal("asyncio", {"use_uvloop": True}),
        ("anyio", "uvloop"),
    ),
    Contender(
        "anyio-portal-trio", "anyio portal trio", _anyio_portal("trio", {}), ("anyio", "trio")
    ),
    Contender("loop-per-thread-asyncio", "asyncio loop per thread", _loop_per_thread("asyncio")),
    Contender(
        "loop-per-thread-uvloop",
        "uvloop loop per thread",
        _loop_per_thread("uvloop"),
        ("uvloop",),
    ),
    Contender("loop-thread-asyncio", "asyncio loop thread", _loop_thread("asyncio")),
    Contender("loop-thread-uvloop", "uvloop loop thread", _loop_thread("uvloop"), ("uvloop",)),
    Contender("loop-thread-trio", "trio loop thread", _trio_thread, ("trio",)),
)


def _loopshim_setup(backend: str, scope: str) -> Callable[..., Prepared]:
    def setup(stack: contextlib.ExitStack[Any]) -> Prepared:
        runner = get_runner(backend, scope=scope, cached=False)
        stack.callback(runner.close)

        def install(app: Any) -> None:
            from .flask import LoopShim

            app.config.update(LOOPSHIM_BACKEND=backend, LOOPSHIM_SCOPE=scope)
            LoopShim(app)

        return Prepared(runner.wrap, install)

    return setup


def loopshim_contender(backend: str, scope: str) -> Contender:
    """The contender for loopshim's *backend* in *scope*."""
    return Contender(
        f"loopshim-{backend}-{scope}",
        f"loopshim {backend} {scope}",
        _loopshim_setup(backend, scope),
        backend=backend,
        scope=scope,
    )


def contenders_for(backends: Sequence[str], scopes: Sequence[str], peers: bool) -> list[Contender]:
    """loopshim's runners for *backends* x *scopes*, then the peers (or only the
    baseline, which the ratios need, when *peers* is false)."""
    found = [loopshim_contender(b, s) for b in backends for s in scopes]
    found.extend(PEERS if peers else PEERS[:1])
    return found


# --- workloads --------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """Something to run once per call. *build* turns a prepared contender into a
    factory of calls, one per caller thread; each call checks its answer."""

    name: str
    description: str
    build: Callable[[Prepared], CallFactory]
    requires: tuple[str, ...] = ()
    #: False when the work involves no async code, so only loopshim (whose Flask
    #: extension is still in the path) and the baseline take part.
    uses_async: bool = True


def _checked(sync: Callable[[], Any], expected: object) -> Callable[[], None]:
    def call() -> None:
        answer = sync()
        if answer != expected:
            raise BenchError(f"expected {expected!r}, got {answer!r}")

    return call


def _coroutine_workload(make: Callable[[], tuple[AsyncFn, object]]) -> Callable[..., CallFactory]:
    def build(prepared: Prepared) -> CallFactory:
        fn, expected = make()
        sync = prepared.to_sync(fn)
        return lambda: _checked(sync, expected)

    return build


def _noop() -> tuple[AsyncFn, object]:
    async def noop() -> None:
        return None

    return noop, None


CHECKPOINTS: Final = 10


def _checkpoints() -> tuple[AsyncFn, object]:
    from anyio.lowlevel import checkpoint

    async def checkpoints() -> int:
        for _ in range(CHECKPOINTS):
            await checkpoint()
        return CHECKPOINTS

    return checkpoints, CHECKPOINTS


FANOUT_TASKS: Final = 100
FANOUT_SLEEP: Final = 0.010


def _fanout() -> tuple[AsyncFn, object]:
    import anyio

    async def fanout() -> int:
        async with anyio.create_task_group() as tasks:
            for _ in range(FANOUT_TASKS):
                tasks.start_soon(anyio.sleep, FANOUT_SLEEP)
        return FANOUT_TASKS

    return fanout, FANOUT_TASKS


def _flask_app(kind: Literal["sync", "async"]) -> Any:
    from flask import Flask

    app = Flask(__name__)
    if kind == "sync":

        @app.route("/")
        def sync_view() -> str:
            return "ok"

    else:

        @app.route("/")
        async def async_view() -> str:
            return "ok"

    return app


def _flask_workload(kind: Literal["sync", "async"]) -> Callable[..., CallFactory]:
    def build(prepared: Prepared) -> CallFactory:
        app = _flask_app(kind)
        prepared.install(app)

        def per_thread() -> Callable[[], None]:
            client = app.test_client()  # one per thread: a client is not thread-safe

            def request() -> None:
                response = client.get("/")
                if response.status_code != 200 or response.data != b"ok":
                    raise BenchError(f"GET / answered {response.status} {response.data[:200]!r}")

            return request

        return per_thread

    return build


WORKLOADS: Final[dict[str, Workload]] = {
    w.name: w
    for w in (
        Workload("noop", "a no-op coroutine", _coroutine_workload(_noop)),
        Workload(
            "checkpoints",
            f"a coroutine with {CHECKPOINTS} checkpoints (anyio.lowlevel.checkpoint)",
            _coroutine_workload(_checkpoints),
            ("anyio",),
        ),
        Workload(
            "fanout",
            f"{FANOUT_TASKS} concurrent {FANOUT_SLEEP * 1000:.0f} ms sleeps (anyio task group)",
            _coroutine_workload(_fanout),
            ("anyio",),
        ),
        Workload(
            "flask-sync",
            "one Flask request to a sync view (test client)",
            _flask_workload("sync"),
            ("flask",),
            uses_async=False,
        ),
        Workload(
            "flask-async",
            "one Flask request to an async view (test client)",
            _flask_workload("async"),
            ("flask",),
        ),
    )
}


# --- results ----------------------------------------------------------------------

Status = Literal["ok", "not installed", "error"]


@dataclass(frozen=True)
class Settings:
    """What ``loopshim bench`` was asked to do."""

    backends: tuple[str, ...]
    scopes: tuple[str, ...]
    workloads: tuple[str, ...]
    peers: bool = True
    duration: float | None = 0.5  # seconds per cell, spread over the rounds
    repeat: int | None = None  # or: calls per cell and caller thread
    rounds: int = 50
    threads: int = 1

    def batch_budget(self, round_index: int) -> tuple[float | None, int | None]:
        """(seconds, calls) of one batch in round *round_index*: one of them is None."""
        if self.repeat is not None:
            share, extra = divmod(self.repeat, self.rounds)
            return None, share + (1 if round_index < extra else 0)
        assert self.duration is not None
        return self.duration / self.rounds, None


@dataclass
class Cell:
    """One workload run by one contender: its status and every figure measured."""

    workload: Workload
    contender: Contender
    status: Status = "ok"
    detail: str = ""
    #: Duration of every call, in nanoseconds, from every caller thread.
    times_ns: list[int] = field(default_factory=list)
    #: One (round, calls, wall-clock nanoseconds) per batch.
    batches: list[tuple[int, int, int]] = field(default_factory=list)
    factory: CallFactory | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return self.contender.label

    @property
    def measured(self) -> bool:
        return self.status == "ok" and bool(self.times_ns)

    # Read only once the run is over (reports, JSON, plot), so computed once.
    @functools.cached_property
    def median_s(self) -> float:
        return statistics.median(self.times_ns) / 1e9

    @functools.cached_property
    def p95_s(self) -> float:
        if len(self.times_ns) < 2:
            return self.times_ns[0] / 1e9
        return statistics.quantiles(self.times_ns, n=20, method="inclusive")[-1] / 1e9

    @property
    def calls(self) -> int:
        return len(self.times_ns)

    @property
    def elapsed_s(self) -> float:
        return sum(wall for _, _, wall in self.batches) / 1e9

    @property
    def calls_per_s(self) -> float:
        """Throughput: calls completed by all caller threads per second of wall time."""
        elapsed = self.elapsed_s
        return self.calls / elapsed if elapsed > 0 else float("nan")

    def fail(self, status: Status, detail: str) -> None:
        self.status, self.detail, self.factory = status, detail, None


@dataclass
class BenchResult:
    """Everything one run measured, in table order."""

    settings: Settings
    cells: list[Cell]
    #: Workloads that could not run at all, with the reason.
    skipped: dict[str, str]
    started: float
    wall_s: float = 0.0

    def cell(self, workload: str, contender_key: str) -> Cell | None:
        return next(
            (
                c
                for c in self.cells
                if c.workload.name == workload and c.contender.key == contender_key
            ),
            None,
        )

    def measured_cell(self, workload: str, contender_key: str) -> Cell | None:
        """The cell, if it was measured."""
        cell = self.cell(workload, contender_key)
        return cell if cell is not None and cell.measured else None

    def baseline(self, workload: str) -> Cell | None:
        return self.measured_cell(workload, BASELINE)

    def speedup(self, cell: Cell) -> float | None:
        """How many times faster than Flask's default per call (median), or None."""
        base = self.baseline(cell.workload.name)
        if base is None or not cell.measured:
            return None
        return base.median_s / cell.median_s


# --- planning ---------------------------------------------------------------------


def install_hint(module: str) -> str:
    """The ``pip install`` line that provides *module*: a backend's extra, else the
    bench extra."""
    for builtin in BUILTIN_BACKENDS.values():
        if builtin.requires == module and builtin.extra:
            return _extra_hint(builtin.extra)
    return _extra_hint("flask" if module == "flask" else "bench")


def _missing(modules: Sequence[str]) -> list[str]:
    return [m for m in modules if not _installed(m)]


def _not_installed(modules: Sequence[str]) -> str:
    hints = dict.fromkeys(install_hint(m) for m in modules)
    return f"needs {', '.join(modules)}: {'; '.join(hints)}"


def _backend_missing(backend: str) -> str:
    builtin = BUILTIN_BACKENDS.get(backend)
    if builtin is not None and builtin.requires is not None and builtin.extra is not None:
        return _not_installed((builtin.requires,))
    return "not importable here"


def _requirements(workload: Workload, contender: Contender) -> tuple[str, ...]:
    """What a contender needs for a workload: nothing of its own when no async code
    runs (Flask's default serves a sync view without asgiref)."""
    return contender.requires if workload.uses_async else ()


def plan(settings: Settings) -> BenchResult:
    """The cells to measure, with those that cannot run already marked."""
    contenders = contenders_for(settings.backends, settings.scopes, settings.peers)
    installed = set(available_backends())
    cells: list[Cell] = []
    skipped: dict[str, str] = {}
    for name in settings.workloads:
        workload = WORKLOADS[name]
        missing = _missing(workload.requires)
        if missing:
            skipped[name] = _not_installed(missing)
            continue
        for contender in contenders:
            if not workload.uses_async and contender.kind == "peer" and contender.key != BASELINE:
                continue
            cell = Cell(workload, contender)
            missing = _missing(_requirements(workload, contender))
            if contender.backend is not None and contender.backend not in installed:
                cell.fail("not installed", _backend_missing(contender.backend))
            elif missing:
                cell.fail("not installed", _not_installed(missing))
            cells.append(cell)
    return BenchResult(settings, cells, skipped, started=time.time())


# --- measuring --------------------------------------------------------------------


class _Callers:
    """N long-lived caller threads (as a threaded WSGI server has) that run one job at a
    time, all at once: the job is called in every thread; :meth:`run` returns when every
    thread is done with it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._start = threading.Barrier(count + 1)
        self._done = threading.Barrier(count + 1)
        self._job: Callable[[int], None] | None = None
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"bench-caller-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self, index: int) -> None:
        while True:
            try:
                self._start.wait()
            except threading.BrokenBarrierError:
                return
            job = self._job
            if job is None:
                return
            try:
                job(index)
            except BaseException as exc:
                self._errors.append(exc)
            try:
                self._done.wait()
            except threading.BrokenBarrierError:
                return

    def run(self, job: Callable[[int], None]) -> list[BaseException]:
        """Run *job(thread_index)* in every thread; return the exceptions it raised."""
        self._job, self._errors = job, []
        self._start.wait()
        self._done.wait()
        return self._errors

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:  # every thread is waiting for the next job: none comes
            self._job = None
            with contextlib.suppress(threading.BrokenBarrierError):
                self._start.wait(timeout=5)
        # After an error or Ctrl-C, breaking the barriers ends the threads once their
        # current batch is over.
        self._start.abort()
        self._done.abort()
        for thread in self._threads:
            thread.join(5)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


#: Progress callback: (batches done, batches in all, what runs now); during the warm-up,
#: batches done is 0.
Progress = Callable[[int, int, str], None]


def _no_progress(done: int, total: int, what: str) -> None:
    return None


def _import_problem(modules: Sequence[str], cache: dict[str, str]) -> str:
    """Why one of *modules* cannot be imported ("" if all can): a library that is found
    but fails to import is as good as not installed."""
    for module in modules:
        if module not in cache:
            try:
                importlib.import_module(module)
                cache[module] = ""
            except ImportError as exc:
                cache[module] = f"{module} fails to import ({exc}): {install_hint(module)}"
        if cache[module]:
            return cache[module]
    return ""


def _prepare(result: BenchResult, stack: contextlib.ExitStack[Any]) -> None:
    """Set every contender up once, then build each cell's call factory."""
    prepared: dict[str, Prepared | BaseException] = {}
    imports: dict[str, str] = {}
    for cell in result.cells:
        if cell.status != "ok":
            continue
        problem = _import_problem(_requirements(cell.workload, cell.contender), imports)
        if problem:
            cell.fail("not installed", problem)
            continue
        key = cell.contender.key
        if key not in prepared:
            try:
                prepared[key] = cell.contender.setup(stack)
            except Exception as exc:
                prepared[key] = exc
        ready = prepared[key]
        if isinstance(ready, BaseException):
            # BackendUnavailable is an ImportError: the backend's library is missing.
            status: Status = "not installed" if isinstance(ready, ImportError) else "error"
            cell.fail(status, f"set-up failed: {_describe(ready)}")
            continue
        try:
            cell.factory = cell.workload.build(ready)
        except Exception as exc:
            cell.fail("error", f"set-up failed: {_describe(exc)}")


def _warm_up(
    cell: Cell, callers: _Callers, calls: dict[tuple[int, int], Callable[[], None]]
) -> None:
    """Make each thread's call, and run it a few times: imports, first loops, caches."""
    assert cell.factory is not None
    factory, ident = cell.factory, id(cell)

    def job(index: int) -> None:
        call = calls[ident, index] = factory()
        deadline = time.perf_counter() + _WARMUP_SECONDS
        for _ in range(_WARMUP_CALLS):
            call()
            if time.perf_counter() > deadline:
                return

    errors = callers.run(job)
    if errors:
        cell.fail("error", _describe(errors[0]))


def _batch(
    cell: Cell,
    round_index: int,
    callers: _Callers,
    calls: dict[tuple[int, int], Callable[[], None]],
    seconds: float | None,
    count: int | None,
) -> None:
    """Every caller thread calls for *seconds* (or *count* times); the per-call times
    and the batch's wall-clock time are added to *cell*."""
    ident = id(cell)
    per_thread: list[list[int]] = [[] for _ in range(callers.count)]
    spans: list[tuple[int, int]] = []
    clock = time.perf_counter_ns

    def job(index: int) -> None:
        call, times = calls[ident, index], per_thread[index]
        begin = clock()
        if count is not None:
            for _ in range(count):
                start = clock()
                call()
                times.append(clock() - start)
        else:
            assert seconds is not None
            deadline = begin + int(seconds * 1e9)
            end = begin
            while end < deadline:
                start = clock()
                call()
                end = clock()
                times.append(end - start)
        spans.append((begin, clock()))

    errors = callers.run(job)
    if errors:
        cell.fail("error", _describe(errors[0]))
        return
    calls_made = sum(len(times) for times in per_thread)
    for times in per_thread:
        cell.times_ns.extend(times)
    wall = max(end for _, end in spans) - min(begin for begin, _ in spans)
    cell.batches.append((round_index, calls_made, wall))


def _measure(live: list[Cell], settings: Settings, callers: _Callers, progress: Progress) -> None:
    calls: dict[tuple[int, int], Callable[[], None]] = {}
    total = len(live) * settings.rounds
    for index, cell in enumerate(live, 1):
        progress(0, total, f"warming up {index}/{len(live)}: {cell.workload.name}, {cell.label}")
        _warm_up(cell, callers, calls)
    step = 0
    for round_index in range(settings.rounds):
        seconds, count = settings.batch_budget(round_index)
        for cell in random.sample(live, len(live)):
            what = f"round {round_index + 1}/{settings.rounds}: {cell.workload.name}, {cell.label}"
            progress(step, total, what)
            step += 1
            if cell.status == "ok" and count != 0:
                _batch(cell, round_index, callers, calls, seconds, count)
    progress(total, total, "done")


def run_bench(settings: Settings, progress: Progress = _no_progress) -> BenchResult:
    """Plan, set up, warm up and measure: each round gives every cell one batch, in a
    fresh random order, so that slow phases of a busy machine hit every cell alike."""
    result = plan(settings)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        _prepare(result, stack)
        # Entered last, so left first: the callers stop before the runners close.
        callers = stack.enter_context(_Callers(settings.threads))
        _measure([c for c in result.cells if c.status == "ok"], settings, callers, progress)
    result.wall_s = time.perf_counter() - started
    return result
