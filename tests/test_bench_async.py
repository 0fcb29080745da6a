"""The workloads of ``loopshim bench`` whose calls are made inside a coroutine —
``reentrant`` and ``cross-loop`` — without timing anything: which rows take part, that
every row's batches run and check their answers, that nest_asyncio stays in a process
of its own, how the budget of a batch is kept, and how the rows are compared and
written, on made-up results. (``test_cli.py`` runs them through the command.)"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json

import pytest

from loopshim.bench._async_peers import ASYNC_PEERS, FLOOR, NEST_ASYNCIO, by_hand_key
from loopshim.bench._contenders import Contender, cross_loop_contender, loopshim_contender
from loopshim.bench._format import BY_HAND, DIRECT, comparison_of
from loopshim.bench._isolated import IsolatedError, isolated
from loopshim.bench._json import to_json
from loopshim.bench._peers import BASELINE
from loopshim.bench._plan import plan
from loopshim.bench._results import BenchResult, BenchSettings, Cell
from loopshim.bench._table import format_table
from loopshim.bench._targets import check_targets
from loopshim.bench._timing import Budget, BudgetTimer, timed_awaits, timed_calls
from loopshim.bench._workloads import WORKLOADS, BenchError

ASYNC_WORKLOADS = ("reentrant", "cross-loop")
_BY_KEY = {peer.key: peer for peer in ASYNC_PEERS}
RECIPES = [peer for peer in ASYNC_PEERS if peer.pair is not None]


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _cells(
    backends: tuple[str, ...] = ("asyncio", "trio"),
    scopes: tuple[str, ...] = ("thread", "process"),
    workloads: tuple[str, ...] = ("noop", *ASYNC_WORKLOADS),
    peers: bool = True,
) -> dict[str, set[str]]:
    """{workload: the keys of the contenders that take part}, as a run plans them."""
    result = plan(BenchSettings(backends, scopes, workloads, peers=peers))
    found: dict[str, set[str]] = {w: set() for w in workloads}
    for cell in result.cells:
        found[cell.workload.name].add(cell.contender.key)
    return found


# --- who takes part -----------------------------------------------------------------


def test_each_async_workload_has_its_own_rows() -> None:
    found = _cells()
    shims = {f"loopshim-{b}-{s}" for b in ("asyncio", "trio") for s in ("thread", "process")}
    reentrant = {f"{key}-reentrant" for key in shims}
    assert found["reentrant"] == reentrant | {
        FLOOR,
        "greenback-asyncio",
        "greenback-trio",
        NEST_ASYNCIO,
    }
    assert found["cross-loop"] == {
        f"loopshim-{b}-process-from-{host}"
        for b in ("asyncio", "trio")
        for host in ("asyncio", "trio")
    } | {peer.key for peer in RECIPES}
    # A runner with reentrant=True also makes plain no-op calls (what the option costs
    # a call that does not re-enter); no async peer takes part in noop.
    assert reentrant <= found["noop"]
    assert shims <= found["noop"]
    assert not found["noop"] & ({peer.key for peer in ASYNC_PEERS} | found["cross-loop"])
    assert BASELINE in found["noop"]
    assert BASELINE not in found["reentrant"] | found["cross-loop"]


def test_every_pair_of_loops_has_its_recipe() -> None:
    pairs = {peer.pair for peer in RECIPES}
    assert pairs == {(h, t) for h in ("asyncio", "trio") for t in ("asyncio", "uvloop", "trio")}
    for peer in RECIPES:
        assert peer.pair is not None
        assert peer.key == by_hand_key(*peer.pair)
        assert peer.label.startswith(f"by hand: {peer.pair[0]} → {peer.pair[1]} thread")


def test_run_async_needs_process_scope_so_other_scopes_have_no_cross_loop_rows() -> None:
    found = _cells(scopes=("thread", "call"))
    assert found["cross-loop"] == {peer.key for peer in RECIPES}
    assert all(
        key.endswith(("thread-reentrant", "call-reentrant"))
        for key in found["reentrant"]
        if key.startswith("loopshim")
    )


def test_no_peers_keeps_what_the_rows_are_compared_with() -> None:
    found = _cells(peers=False)
    assert FLOOR in found["reentrant"]
    assert not found["reentrant"] & {"greenback-asyncio", "greenback-trio", NEST_ASYNCIO}
    assert not found["cross-loop"] & {peer.key for peer in RECIPES}
    assert BASELINE in found["noop"]


def test_the_async_rows_name_what_they_need() -> None:
    assert loopshim_contender("trio", "call", reentrant=True).requires == ("greenlet",)
    assert loopshim_contender("trio", "call").requires == ()
    assert cross_loop_contender("asyncio", "trio").requires == ("trio",)
    assert cross_loop_contender("trio", "asyncio").requires == ()
    assert _BY_KEY["by-hand-trio-to-uvloop"].requires == ("trio", "uvloop")
    assert _BY_KEY["by-hand-asyncio-to-asyncio"].requires == ()
    assert _BY_KEY["greenback-trio"].requires == ("greenback", "trio")
    assert _BY_KEY[NEST_ASYNCIO].requires == ("nest_asyncio",)


# --- every row's batches run --------------------------------------------------------


def _async_contenders() -> list[tuple[str, Contender]]:
    found: list[tuple[str, Contender]] = []
    for backend in ("asyncio", "uvloop", "trio"):
        for scope in ("process", "thread", "call"):
            found.append(("reentrant", loopshim_contender(backend, scope, reentrant=True)))
        for host in ("asyncio", "trio"):
            found.append(("cross-loop", cross_loop_contender(backend, host)))
    found.append(("noop", loopshim_contender("trio", "thread", reentrant=True)))
    found += [(w, peer) for peer in ASYNC_PEERS for w in peer.workloads or ()]
    return found


def _needs(contender: Contender) -> tuple[str, ...]:
    backend = () if contender.backend in (None, "asyncio") else (contender.backend,)
    return (*contender.requires, *backend)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("workload", "contender"),
    _async_contenders(),
    ids=[f"{w}:{c.key}" for w, c in _async_contenders()],
)
def test_every_row_runs_its_batches_and_checks_its_answers(
    workload: str, contender: Contender
) -> None:
    if not _installed(*_needs(contender)):
        pytest.skip(f"needs {', '.join(_needs(contender))}")
    with contextlib.ExitStack() as stack:
        prepared = contender.setup(stack)
        if prepared.own_batches is not None:
            factory = prepared.own_batches(workload)
        else:
            factory = WORKLOADS[workload].build(prepared)
        run = factory()
        first, second = run(Budget(calls=1)), run(Budget(calls=3))
    assert len(first) == 1
    assert len(second) == 3
    assert all(isinstance(t, int) and t > 0 for t in first + second)


@pytest.mark.timeout(60)
def test_nest_asyncio_runs_in_a_process_of_its_own() -> None:
    pytest.importorskip("nest_asyncio")
    task_class = asyncio.Task
    with contextlib.ExitStack() as stack:
        prepared = _BY_KEY[NEST_ASYNCIO].setup(stack)
        assert prepared.own_batches is not None
        assert prepared.to_sync is prepared.on_loop is None  # nothing runs in this process
        times = prepared.own_batches("reentrant")()(Budget(calls=5))
    assert len(times) == 5
    # This process is left as it was: asyncio's C Task, no patched loop class.
    assert asyncio.Task is task_class
    assert not hasattr(asyncio, "_nest_patched")
    loop = asyncio.new_event_loop()
    assert not hasattr(type(loop), "_nest_patched")
    loop.close()


@pytest.mark.timeout(60)
def test_an_isolated_contender_that_fails_says_why() -> None:
    with contextlib.ExitStack() as stack:
        prepared = isolated("no-such-contender")(stack)
        assert prepared.own_batches is not None
        with pytest.raises(IsolatedError, match="set-up failed: KeyError: 'no-such-contender'"):
            prepared.own_batches("reentrant")()


# --- the budget of a batch ----------------------------------------------------------


def test_a_batch_makes_the_calls_its_budget_allows() -> None:
    calls: list[int] = []
    assert len(timed_calls(lambda: calls.append(1), Budget(calls=4))) == 4 == len(calls)
    assert timed_calls(lambda: calls.append(1), Budget(calls=0)) == []
    assert len(calls) == 4
    # A budget of seconds that is already used up still makes one call.
    assert len(timed_calls(lambda: None, Budget(seconds=0.0))) == 1
    # With both, whichever ends first.
    assert len(timed_calls(lambda: None, Budget(seconds=60.0, calls=7))) == 7


def test_a_budget_timer_stops_before_a_call_that_would_overshoot() -> None:
    timer = BudgetTimer(Budget(seconds=1e-3))
    start = timer._deadline - 10_000  # type: ignore[operator]
    assert timer.add(start - 1_000, start) is False  # 1 µs call, 10 µs left
    assert timer.add(start, start + 8_000) is True  # 2 µs left: less than half a call
    assert timer.times == [1_000, 8_000]


def test_answers_are_checked_outside_the_timed_call() -> None:
    def check(answer: object) -> None:
        if answer != "ok":
            raise BenchError(f"got {answer!r}")

    assert len(timed_calls(lambda: "ok", Budget(calls=2), check)) == 2
    with pytest.raises(BenchError, match="got 'wrong'"):
        timed_calls(lambda: "wrong", Budget(calls=2), check)

    async def answer() -> str:
        return "wrong"

    with pytest.raises(BenchError, match="got 'wrong'"):
        asyncio.run(timed_awaits(answer, Budget(calls=2), check))


# --- comparisons, the table and the JSON document, on made-up results -------------------


def _contender(key: str) -> Contender:
    if key in _BY_KEY:
        return _BY_KEY[key]
    _, backend, scope, *rest = key.split("-")
    if rest == ["reentrant"]:
        return loopshim_contender(backend, scope, reentrant=True)
    return cross_loop_contender(backend, rest[1])


def _cell(workload: str, key: str, micros: float) -> Cell:
    times = [round(micros * 1e3)] * 21
    return Cell(WORKLOADS[workload], _contender(key), times_ns=times, batches=[(0, 21, 1)])


def _result(*cells: Cell) -> BenchResult:
    settings = BenchSettings(("asyncio", "trio"), ("process",), ASYNC_WORKLOADS, duration=0.2)
    return BenchResult(settings, list(cells), {}, started=0.0)


def _made_up() -> BenchResult:
    return _result(
        _cell("reentrant", FLOOR, 0.1),
        _cell("reentrant", "greenback-asyncio", 2.2),
        _cell("reentrant", "loopshim-asyncio-process-reentrant", 4.4),
        _cell("reentrant", "loopshim-trio-process-reentrant", 5.3),
        _cell("cross-loop", "by-hand-asyncio-to-asyncio", 30),
        _cell("cross-loop", "by-hand-trio-to-asyncio", 80),
        _cell("cross-loop", "loopshim-asyncio-process-from-asyncio", 27),
        _cell("cross-loop", "loopshim-asyncio-process-from-trio", 40),
        _cell("cross-loop", "loopshim-trio-process-from-trio", 60),  # its recipe is missing
    )


def test_rows_are_compared_with_the_floor_or_the_recipe_of_their_pair() -> None:
    result = _made_up()
    assert comparison_of(WORKLOADS["reentrant"]) is DIRECT
    assert comparison_of(WORKLOADS["cross-loop"]) is BY_HAND
    shown = {
        cell.contender.key: comparison_of(cell.workload).text(result, cell) for cell in result.cells
    }
    assert shown["loopshim-asyncio-process-reentrant"] == "44.0x"
    assert shown[FLOOR] == "1.00x"
    assert shown["loopshim-asyncio-process-from-asyncio"] == "0.90x"  # 27 / 30
    assert shown["loopshim-asyncio-process-from-trio"] == "0.50x"  # 40 / 80
    assert shown["loopshim-trio-process-from-trio"] == "-"
    assert shown["by-hand-trio-to-asyncio"] == "1.00x"


def test_the_table_shows_the_async_workloads_and_their_targets() -> None:
    result = _made_up()
    text = format_table(result, check_targets(result))
    headers = [line.split() for line in text.splitlines() if line.strip().startswith("contender")]
    assert [h[4:] for h in headers] == [["vs", "direct"], ["vs", "by", "hand"]]
    assert "vs direct = the row's median / awaiting the function directly's" in text
    assert "(lower is faster), for cross-loop" in text
    assert "[PASS] reentrant: loopshim asyncio process, reentrant=True ≤ 2x the time of " in text
    assert (
        "awaiting the function directly (the floor) + 5.0 µs: 44.0x (4.4 µs; at most 5.2 µs)"
        in text
    )
    assert "[FAIL] reentrant: loopshim trio process, reentrant=True" in text
    assert (
        "[----] cross-loop: loopshim trio process, run_async from trio no slower than "
        "by hand: trio → trio thread (to_thread + from_thread.run): not checked" in text
    )
    floorless = _result(*[c for c in result.cells if c.contender.key != FLOOR])
    assert "(no vs direct: awaiting the function directly (the floor) was not measured)" in (
        format_table(floorless, [])
    )


def test_the_json_document_says_which_rows_reenter_and_which_loops_they_join() -> None:
    result = _made_up()
    document = json.loads(json.dumps(to_json(result, check_targets(result), ["bench"])))
    rows = {r["contender"]: r for r in document["results"]}
    assert rows["loopshim-asyncio-process-reentrant"]["reentrant"] is True
    assert rows["loopshim-asyncio-process-from-trio"]["reentrant"] is False
    assert rows["loopshim-asyncio-process-from-trio"]["pair"] == ["trio", "asyncio"]
    assert rows["by-hand-trio-to-asyncio"]["pair"] == ["trio", "asyncio"]
    assert rows[FLOOR]["reentrant"] is None  # a peer
    assert rows[FLOOR]["pair"] is None
    assert rows[FLOOR]["speedup_vs_flask_default"] is None  # Flask's default takes no part
    targets = {t["contender"]: t for t in document["targets"]}
    reentrant = targets["loopshim-asyncio-process-reentrant"]
    assert (reentrant["limit"], reentrant["allowance_s"], reentrant["status"]) == (2, 5e-6, "pass")
    assert reentrant["ratio"] == pytest.approx(44.0)
    assert targets["loopshim-trio-process-reentrant"]["status"] == "fail"  # 5.3 > 5.2 µs
    crossing = targets["loopshim-asyncio-process-from-trio"]
    assert (crossing["reference"], crossing["allowance_s"]) == ("by-hand-trio-to-asyncio", 0)
    assert crossing["ratio"] == pytest.approx(0.5)


def test_every_async_workload_is_described() -> None:
    for name in ASYNC_WORKLOADS:
        workload = WORKLOADS[name]
        assert not workload.from_sync
        assert workload.uses_async
        assert workload.requires == ()
    assert all(WORKLOADS[n].from_sync for n in WORKLOADS if n not in ASYNC_WORKLOADS)


def test_a_contender_without_what_a_workload_needs_is_an_error_not_a_silent_row() -> None:
    from loopshim.bench._contenders import Prepared

    with pytest.raises(BenchError, match="offers no on_loop"):
        WORKLOADS["reentrant"].build(Prepared())
    with pytest.raises(BenchError, match="offers no to_sync"):
        WORKLOADS["noop"].build(Prepared())
