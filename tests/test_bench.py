"""The parts of ``loopshim bench`` that need no timing, on made-up results: the targets
and --check, the plot, the schedule that keeps a short run short, the progress line, and
the boundaries of the bench subpackage. (``test_bench_async.py``: the workloads whose
calls are made inside a coroutine.)"""

from __future__ import annotations

import ast
import io
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from loopshim.bench._async_peers import ASYNC_PEERS, FLOOR, by_hand_key
from loopshim.bench._command import exit_status
from loopshim.bench._contenders import Contender, cross_loop_contender, loopshim_contender
from loopshim.bench._measure import (
    MIN_BATCH_S,
    Budget,
    batch_rounds,
    expected_seconds,
    next_budget,
    warm_up_budget,
)
from loopshim.bench._peers import BASELINE, PEERS
from loopshim.bench._progress import TerminalProgress
from loopshim.bench._results import PLAIN_FLASK, BenchResult, BenchSettings, Cell
from loopshim.bench._targets import Target, check_targets
from loopshim.bench._workloads import WORKLOADS

PACKAGE = Path(__file__).resolve().parent.parent / "loopshim"
_PEERS = {peer.key: peer for peer in (*PEERS, *ASYNC_PEERS)}
BACKENDS = ("asyncio", "uvloop", "trio")


def _contender(key: str) -> Contender:
    """The contender of *key*: a peer's, or ``loopshim-B-S``, ``loopshim-B-S-reentrant``,
    ``loopshim-B-process-from-HOST``."""
    if key in _PEERS:
        return _PEERS[key]
    _, backend, scope, *rest = key.split("-")
    if rest == ["reentrant"]:
        return loopshim_contender(backend, scope, reentrant=True)
    if rest[:1] == ["from"]:
        return cross_loop_contender(backend, rest[1])
    assert not rest, key
    return loopshim_contender(backend, scope)


def _cell(workload: str, key: str, micros: float, p95: float | None = None) -> Cell:
    """A measured cell whose median is *micros* µs (and p95 *p95* µs)."""
    times = [round(micros * 1e3)] * 19 + [round((p95 or micros) * 1e3)] * 2
    return Cell(WORKLOADS[workload], _contender(key), times_ns=times, batches=[(0, 21, 1)])


def _result(*cells: Cell, backends: tuple[str, ...] = ("asyncio", "uvloop", "trio")) -> BenchResult:
    workloads = tuple(dict.fromkeys(c.workload.name for c in cells))
    settings = BenchSettings(backends, ("process", "thread", "call"), workloads, duration=0.2)
    return BenchResult(settings, list(cells), {}, started=0.0)


# --- targets ------------------------------------------------------------------------

#: DESIGN.md's targets: (workload, loopshim row, reference, kind, limit).
DESIGN_TARGETS = {
    *(
        t
        for b, need in (("asyncio", 30), ("uvloop", 30), ("trio", 20))
        for t in [
            ("noop", f"loopshim-{b}-thread", BASELINE, "speed-up", need),
            ("noop", f"loopshim-{b}-process", BASELINE, "speed-up", 5),
            ("noop", f"loopshim-{b}-process", f"anyio-portal-{b}", "speed-up", 1),
            ("noop", f"loopshim-{b}-process", f"loop-thread-{b}", "cost", 1.10),
            ("noop", f"loopshim-{b}-call", f"{b}.run", "cost", 1.10),
            ("flask-async", f"loopshim-{b}-process", f"loop-thread-{b}", "cost", 1),
            *(
                ("fanout", f"loopshim-{b}-{s}", None, "time", 0.020)
                for s in ("process", "thread", "call")
            ),
        ]
    ),
    *(
        t
        for b in ("asyncio", "uvloop")  # trio has no loop to keep per thread
        for t in [
            ("noop", f"loopshim-{b}-thread", f"loop-per-thread-{b}", "cost", 1.15),
            ("flask-async", f"loopshim-{b}-thread", f"loop-per-thread-{b}", "cost", 1),
        ]
    ),
}


#: Issue 13's targets for calls from async code: (workload, loopshim row, reference,
#: kind, limit, allowance in seconds).
ASYNC_TARGETS = {
    *(
        ("reentrant", f"loopshim-{b}-{s}-reentrant", FLOOR, "cost", 2, 5e-6)
        for b in BACKENDS
        for s in ("process", "thread", "call")
    ),
    *(
        ("cross-loop", f"loopshim-{b}-process-from-{host}", by_hand_key(host, b), "cost", 1, 0)
        for b in BACKENDS
        for host in ("asyncio", "trio")
    ),
}


def _everything_measured() -> BenchResult:
    shims = [f"loopshim-{b}-{s}" for b in BACKENDS for s in ("process", "thread", "call")]
    keys = shims + [p.key for p in PEERS]
    cells = [
        _cell(w, key, 100) for w in ("noop", "fanout", "flask-sync", "flask-async") for key in keys
    ]
    reentrant = [f"{key}-reentrant" for key in shims]
    cells += [_cell("noop", key, 100) for key in reentrant]
    cells += [_cell("reentrant", key, 4) for key in [*reentrant, FLOOR]]
    cross = [f"loopshim-{b}-process-from-{h}" for b in BACKENDS for h in ("asyncio", "trio")]
    cells += [_cell("cross-loop", key, 30) for key in cross]
    cells += [_cell("cross-loop", p.key, 30) for p in ASYNC_PEERS if p.pair is not None]
    return _result(*cells)


def test_the_targets_are_those_of_the_design_and_of_issue_13() -> None:
    targets = check_targets(_everything_measured())
    found = {(t.workload, t.contender, t.reference, t.kind, t.limit) for t in targets}
    assert found == DESIGN_TARGETS | {t[:5] for t in ASYNC_TARGETS}
    assert len(targets) == len(DESIGN_TARGETS) + len(ASYNC_TARGETS)
    allowances = {(t.workload, t.contender): t.allowance_s for t in targets}
    for workload, contender, *_, allowance in ASYNC_TARGETS:
        assert allowances[workload, contender] == allowance
    assert {t.allowance_s for t in targets if t.workload not in ("reentrant", "cross-loop")} == {0}
    # The retired targets compared a Flask async view with a sync view.
    assert not any(t.workload == "flask-sync" for t in targets)
    # A runner with reentrant=True has no target in the noop workload: what the option
    # costs a call that does not re-enter is shown, not held to a limit.
    assert not any(t.contender.endswith("-reentrant") and t.workload == "noop" for t in targets)


@pytest.mark.parametrize(
    ("workload", "ours", "reference", "ours_us", "reference_us", "status"),
    [
        # thread scope: >= 30x Flask's default on asyncio and uvloop, >= 20x on trio
        ("noop", "loopshim-asyncio-thread", BASELINE, 13.3, 400, "pass"),
        ("noop", "loopshim-asyncio-thread", BASELINE, 13.4, 400, "fail"),
        ("noop", "loopshim-uvloop-thread", BASELINE, 19.9, 400, "fail"),
        ("noop", "loopshim-trio-thread", BASELINE, 19.9, 400, "pass"),
        ("noop", "loopshim-trio-thread", BASELINE, 20.1, 400, "fail"),
        # ... and <= 1.15x a loop kept per thread by hand
        ("noop", "loopshim-uvloop-thread", "loop-per-thread-uvloop", 5.7, 5.0, "pass"),
        ("noop", "loopshim-uvloop-thread", "loop-per-thread-uvloop", 5.8, 5.0, "fail"),
        # process scope: >= 5x Flask's default, faster than anyio's portal, <= 1.10x a loop thread
        ("noop", "loopshim-trio-process", BASELINE, 79, 400, "pass"),
        ("noop", "loopshim-trio-process", BASELINE, 81, 400, "fail"),
        ("noop", "loopshim-asyncio-process", "anyio-portal-asyncio", 99, 100, "pass"),
        ("noop", "loopshim-asyncio-process", "anyio-portal-asyncio", 101, 100, "fail"),
        ("noop", "loopshim-trio-process", "loop-thread-trio", 109, 100, "pass"),
        ("noop", "loopshim-trio-process", "loop-thread-trio", 111, 100, "fail"),
        # call scope: within 10% of the backend's run(); faster is fine
        ("noop", "loopshim-uvloop-call", "uvloop.run", 109, 100, "pass"),
        ("noop", "loopshim-uvloop-call", "uvloop.run", 111, 100, "fail"),
        ("noop", "loopshim-uvloop-call", "uvloop.run", 50, 100, "pass"),
        # a Flask async view: no slower than with the recipe of the same scope
        ("flask-async", "loopshim-asyncio-thread", "loop-per-thread-asyncio", 99, 100, "pass"),
        ("flask-async", "loopshim-asyncio-thread", "loop-per-thread-asyncio", 101, 100, "fail"),
        ("flask-async", "loopshim-trio-process", "loop-thread-trio", 101, 100, "fail"),
        # 100 concurrent 10 ms sleeps in <= 20 ms
        ("fanout", "loopshim-trio-call", None, 19_900, 0, "pass"),
        ("fanout", "loopshim-trio-call", None, 20_100, 0, "fail"),
        # a re-entrant call: <= 2x awaiting the function directly + 5 µs
        ("reentrant", "loopshim-asyncio-thread-reentrant", FLOOR, 5.19, 0.1, "pass"),
        ("reentrant", "loopshim-asyncio-thread-reentrant", FLOOR, 5.21, 0.1, "fail"),
        ("reentrant", "loopshim-trio-call-reentrant", FLOOR, 6.99, 1.0, "pass"),
        ("reentrant", "loopshim-trio-call-reentrant", FLOOR, 7.01, 1.0, "fail"),
        # run_async: no slower than the recipe for the same pair of loops
        (
            "cross-loop",
            "loopshim-trio-process-from-asyncio",
            "by-hand-asyncio-to-trio",
            69.9,
            70,
            "pass",
        ),
        (
            "cross-loop",
            "loopshim-uvloop-process-from-trio",
            "by-hand-trio-to-uvloop",
            70.1,
            70,
            "fail",
        ),
    ],
)
def test_a_target_passes_or_fails_on_its_ratio(
    workload: str,
    ours: str,
    reference: str | None,
    ours_us: float,
    reference_us: float,
    status: str,
) -> None:
    cells = [_cell(workload, ours, ours_us)]
    if reference is not None:
        cells.append(_cell(workload, reference, reference_us))
    targets = [
        t for t in check_targets(_result(*cells)) if (t.contender, t.reference) == (ours, reference)
    ]
    assert [t.status for t in targets] == [status]
    expected = (
        ours_us / 1e6
        if reference is None
        else reference_us / ours_us
        if targets[0].kind == "speed-up"
        else ours_us / reference_us
    )
    assert targets[0].ratio == pytest.approx(expected)


def test_a_target_whose_reference_was_not_measured_is_not_checked() -> None:
    portal = _cell("noop", "anyio-portal-trio", 0)
    portal.fail("not installed", "needs anyio")
    result = _result(_cell("noop", "loopshim-trio-process", 100), portal)
    target = next(t for t in check_targets(result) if t.reference == "anyio-portal-trio")
    assert target.status == "not checked"
    assert target.ratio is None
    assert target.measured == "not checked (anyio portal, trio not measured)"
    assert exit_status(result, check_targets(result), check=True) == 0


def test_only_the_targets_of_the_rows_a_run_has_are_listed() -> None:
    result = _result(_cell("noop", "loopshim-asyncio-call", 100), _cell("noop", "asyncio.run", 100))
    assert [(t.contender, t.reference, t.status) for t in check_targets(result)] == [
        ("loopshim-asyncio-call", "asyncio.run", "pass")
    ]


def test_a_third_party_backend_has_no_targets() -> None:
    result = _result(
        _cell("noop", "loopshim-mine-thread", 1), _cell("noop", BASELINE, 400), backends=("mine",)
    )
    assert check_targets(result) == []


def _target(status: Any) -> Target:
    return Target("t", "noop", "loopshim-asyncio-call", "asyncio.run", "cost", 1.1, 1.0, status, "")


@pytest.mark.parametrize(
    ("statuses", "check", "row_failed", "expected"),
    [
        (["pass", "not checked"], True, False, 0),
        (["pass", "fail"], True, False, 1),
        (["pass", "fail"], False, False, 0),  # without --check a miss is only reported
        (["pass"], False, True, 1),  # a row that fails always does
    ],
)
def test_check_exits_1_only_for_a_missed_target(
    statuses: list[str], check: bool, row_failed: bool, expected: int
) -> None:
    cell = _cell("noop", "loopshim-asyncio-call", 100)
    if row_failed:
        cell.fail("error", "BenchError: expected None")
    targets = [_target(s) for s in statuses]
    assert exit_status(_result(cell), targets, check=check) == expected


# --- the plot -----------------------------------------------------------------------


@pytest.fixture
def figure() -> Any:
    pytest.importorskip("matplotlib")
    from loopshim.bench._plot import make_figure

    result = _result(
        _cell("noop", "loopshim-asyncio-thread", 5, p95=6),
        _cell("noop", "loopshim-trio-process", 80, p95=4000),  # a p95 far beyond the rest
        _cell("noop", "asyncio.run", 60, p95=90),
        _cell("noop", BASELINE, 400, p95=700),
        _cell("flask-sync", BASELINE, 116, p95=190),
        _cell("flask-sync", "loopshim-asyncio-thread", 119.5, p95=200),
        _cell("flask-sync", "loopshim-trio-call", 121, p95=220),
    )
    return make_figure(result)


def _time_axes(figure: Any) -> dict[str, Any]:
    return {
        ax.get_title(loc="left").split(":")[0]: ax for ax in figure.axes if ax.get_title(loc="left")
    }


def _columns(figure: Any, workload: str) -> dict[str, list[str]]:
    """The text columns beside *workload*'s panel: {heading: texts, top to bottom}."""
    row = list(_time_axes(figure)).index(workload)
    columns = [ax for ax in figure.axes if ax.get_title(loc="right")]
    return {
        ax.get_title(loc="right"): [t.get_text() for t in ax.texts]
        for ax in columns[2 * row : 2 * row + 2]
    }


def test_the_plot_has_a_log_time_axis_per_workload_that_shows_every_p95(figure: Any) -> None:
    axes = _time_axes(figure)
    assert list(axes) == ["noop", "flask-sync"]
    for ax, widest in ((axes["noop"], 4000e-6), (axes["flask-sync"], 220e-6)):
        assert ax.get_xscale() == "log"
        low, high = ax.get_xlim()
        assert high > widest  # the p95 mark is inside the axis
        assert low < min(line for line in ax.collections[-1].get_offsets()[:, 0])
    # Per-panel scales: the flask-sync panel spans its own 116-220 µs, not noop's range.
    assert axes["flask-sync"].get_xlim()[0] > axes["noop"].get_xlim()[1] / 100


def test_the_plot_labels_times_in_microseconds(figure: Any) -> None:
    figure.canvas.draw()  # tick labels are made when drawn
    labels = [t.get_text() for ax in _time_axes(figure).values() for t in ax.get_xticklabels()]
    assert any(label.endswith(" µs") for label in labels)
    texts = labels + [t for column in _columns(figure, "noop").values() for t in column]
    assert not [t for t in texts if re.search(r"\bus\b", t)]


def test_the_plot_puts_the_fastest_row_on_top_in_bold(figure: Any) -> None:
    noop = _time_axes(figure)["noop"]
    labels = noop.get_yticklabels()
    assert [t.get_text() for t in labels] == [
        "loopshim asyncio thread",
        "asyncio.run",
        "loopshim trio process",
        "Flask's default (asgiref)",
    ]
    bottom, top = noop.get_ylim()
    assert top < bottom  # row 0 on top
    assert labels[0].get_fontweight() == "bold"


def test_the_plot_columns_have_headings_and_say_what_rows_are_compared_with(figure: Any) -> None:
    noop = _columns(figure, "noop")
    assert noop == {
        "median": ["5.0 µs", "60.0 µs", "80.0 µs", "400.0 µs"],
        "speed-up vs\nFlask's default": ["80.0x", "6.67x", "5.00x", "1.00x"],
    }
    flask_sync = _columns(figure, "flask-sync")
    assert flask_sync["time vs a plain\nFlask app"] == ["+0.0%", "+3.0%", "+4.3%"]
    labels = [t.get_text() for t in _time_axes(figure)["flask-sync"].get_yticklabels()]
    assert labels[0] == PLAIN_FLASK


def test_the_plot_is_readable_at_its_size(figure: Any) -> None:
    width, height = figure.get_size_inches()
    assert width >= 10
    assert height >= 0.25 * 7  # a quarter of an inch per row at least
    fonts = [t.get_fontsize() for ax in figure.axes for t in [*ax.get_yticklabels(), *ax.texts]]
    assert min(fonts) >= 8


def test_the_plot_is_written_in_the_format_of_its_extension(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from loopshim.bench._plot import write_plot

    result = _result(_cell("noop", "loopshim-asyncio-thread", 5), _cell("noop", BASELINE, 400))
    for name, magic in (("a.png", b"\x89PNG"), ("a.svg", b"<?xml"), ("a.pdf", b"%PDF")):
        write_plot(result, tmp_path / name)
        assert (tmp_path / name).read_bytes().startswith(magic)


def test_time_ticks_are_round_and_inside_the_axis() -> None:
    pytest.importorskip("matplotlib")
    from loopshim.bench._plot import tick_text, time_ticks

    wide = time_ticks(4e-6, 1.2e-3)
    assert {1e-5, 1e-4, 1e-3} <= {round(t, 9) for t in wide}
    assert len(wide) <= 8
    narrow = time_ticks(0.0113, 0.0178)  # the fan-out: every row near 12 ms
    assert len(narrow) >= 2
    assert all(0.0113 <= t <= 0.0178 for t in narrow)
    assert [tick_text(t) for t in (1e-5, 2.5e-3, 2.0)] == ["10 µs", "2.5 ms", "2 s"]


# --- the time a run takes -----------------------------------------------------------


def _settings(**changes: Any) -> BenchSettings:
    return BenchSettings(("asyncio",), ("thread",), ("noop",), **changes)


def test_every_batch_holds_a_call_so_long_calls_get_fewer_rounds() -> None:
    settings = _settings(duration=0.2, rounds=50)
    assert batch_rounds(settings, call_s=5e-6) == list(range(50))
    fanout = batch_rounds(settings, call_s=0.012)  # 0.2 s holds 16 calls of 12 ms
    assert len(fanout) == 16
    assert max(b - a for a, b in itertools.pairwise([-1, *fanout])) <= 4  # spread over the run
    assert batch_rounds(settings, call_s=1.0) == [49]  # at least one batch


def test_short_durations_make_fewer_batches_not_tiny_ones() -> None:
    rounds = batch_rounds(_settings(duration=0.02, rounds=50), call_s=5e-6)
    assert len(rounds) == round(0.02 / MIN_BATCH_S)


def test_repeat_spreads_the_calls_over_the_rounds() -> None:
    assert batch_rounds(_settings(duration=None, repeat=3, rounds=2), call_s=1.0) == [0, 1]
    assert batch_rounds(_settings(duration=None, repeat=1, rounds=50), call_s=0.0) == [49]


@pytest.mark.parametrize("duration", [0.01, 0.2, 0.5, 5.0])
def test_the_expected_time_follows_the_duration(duration: float) -> None:
    settings = _settings(duration=duration)
    expected = expected_seconds(settings, rows=98)
    assert expected is not None
    assert 98 * duration < expected <= 98 * duration * 1.15 + 1
    assert warm_up_budget(settings) <= 0.1 * duration


def test_a_run_counted_in_calls_has_no_expected_time() -> None:
    assert expected_seconds(_settings(duration=None, repeat=10), rows=10) is None


# --- the progress line --------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "shown"), [(_Terminal(), True), (io.StringIO(), False)])
def test_progress_is_shown_on_a_terminal_only(stream: io.StringIO, shown: bool) -> None:
    progress = TerminalProgress(stream, interval=0)
    progress(0, 4, "warming up noop: loopshim asyncio thread")
    progress(2, 4, "round 1/1 noop: asyncio.run")
    if shown:
        assert "2/4" in stream.getvalue()
        assert "round 1/1 noop: asyncio.run" in stream.getvalue()
    else:
        assert stream.getvalue() == ""
    progress(4, 4, "done")
    assert stream.getvalue().endswith("\r\x1b[K") is shown  # the line is cleared at the end


# --- the boundaries of the bench subpackage -----------------------------------------


def _imports(path: Path) -> set[str]:
    """The modules *path* imports, relative ones resolved inside the loopshim package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_only_the_command_line_imports_the_bench() -> None:
    root = PACKAGE.parent
    importers = {
        str(path.relative_to(root))
        for path in [*PACKAGE.rglob("*.py"), *(root / "benchmarks").glob("*.py")]
        if "bench" not in path.relative_to(PACKAGE.parent).parts[1:-1]
        and any(m == "loopshim.bench" or m.startswith("loopshim.bench.") for m in _imports(path))
    }
    assert importers == {"loopshim/cli.py"}


def test_the_bench_reaches_loopshim_internals_through_one_module() -> None:
    allowed = {"loopshim._info", "loopshim._argtypes"}  # helpers, not the core
    reaching = {
        path.name: sorted(
            m for m in _imports(path) if re.match(r"loopshim\._\w+$", m) and m not in allowed
        )
        for path in (PACKAGE / "bench").glob("*.py")
    }
    assert {name for name, found in reaching.items() if found} == {"_internals.py"}


def test_loopshim_info_needs_nothing_from_the_bench() -> None:
    assert not any("bench" in m for m in _imports(PACKAGE / "_info.py"))


def _seconds_of(budget: Budget | None) -> float | None:
    return None if budget is None else budget.seconds


def test_a_row_that_used_its_time_gets_no_more_batches() -> None:
    settings = _settings(duration=0.2, rounds=50)
    cell = _cell("fanout", "loopshim-asyncio-thread", 12_000)
    cell.batches = []
    assert _seconds_of(next_budget(settings, cell, batches=16)) == pytest.approx(0.2 / 16)
    cell.batches = [(0, 1, 150_000_000)]  # one slow batch took 0.15 s of the 0.2 s
    assert _seconds_of(next_budget(settings, cell, batches=16)) == pytest.approx(0.05 / 15)
    cell.batches.append((1, 1, 60_000_000))
    assert next_budget(settings, cell, batches=16) is None


def test_repeat_gives_each_batch_its_share_of_the_calls() -> None:
    settings = _settings(duration=None, repeat=5, rounds=2)
    cell = _cell("noop", "loopshim-asyncio-thread", 5)
    cell.batches = []
    first = next_budget(settings, cell, batches=2)
    cell.batches = [(0, 3, 1)]
    assert (first, next_budget(settings, cell, batches=2)) == (Budget(calls=3), Budget(calls=2))
