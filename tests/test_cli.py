"""The ``loopshim`` command, through its real entry points: the installed console script
and ``python -m loopshim``, each in a subprocess."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import loopshim
from loopshim._core import BUILTIN_BACKENDS
from loopshim._info import extras, pip_install_line
from loopshim.bench._async_peers import ASYNC_PEERS
from loopshim.bench._peers import PEERS
from loopshim.bench._results import PLAIN_FLASK
from loopshim.bench._workloads import WORKLOADS

SCRIPT = Path(sys.executable).parent / ("loopshim.exe" if os.name == "nt" else "loopshim")
ENTRY_POINTS = {"script": [str(SCRIPT)], "module": [sys.executable, "-m", "loopshim"]}
OPTIONAL = ("flask", "asgiref", "anyio", "matplotlib", "trio", "uvloop")

#: The fields README.md documents for `loopshim bench --json`.
TOP_FIELDS = {
    "schema",
    "command",
    "started",
    "wall_s",
    "machine",
    "versions",
    "settings",
    "baseline",
    "workloads",
    "results",
    "targets",
}
TARGET_FIELDS = {
    "text",
    "workload",
    "contender",
    "reference",
    "kind",
    "limit",
    "ratio",
    "status",
    "measured",
    "allowance_s",
}
RESULT_FIELDS = {
    "workload",
    "contender",
    "label",
    "kind",
    "backend",
    "scope",
    "reentrant",
    "pair",
    "status",
    "detail",
    "calls",
    "elapsed_s",
    "median_s",
    "p95_s",
    "calls_per_s",
    "speedup_vs_flask_default",
    "batches",
    "times_ns",
}


def loopshim_cmd(
    *args: str, entry: str = "script", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "LOOPSHIM_BACKEND"}
    environ.update(env or {})
    return subprocess.run(
        [*ENTRY_POINTS[entry], *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def with_hidden_modules(
    hidden: tuple[str, ...], *args: str, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the command in an interpreter where *hidden* cannot be found (as if not
    installed); with *pythonpath*, a directory put first on the import path."""
    code = (
        "import sys\n"
        f"for name in {hidden!r}: sys.modules[name] = None\n"
        "from loopshim.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "LOOPSHIM_BACKEND"}
    if pythonpath is not None:
        environ["PYTHONPATH"] = os.pathsep.join([str(pythonpath), environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


# --- info -------------------------------------------------------------------------


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_info_lists_backends_versions_and_the_default(entry: str) -> None:
    done = loopshim_cmd("info", entry=entry)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"loopshim {loopshim.__version__}" in out
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in out
    for name in loopshim.available_backends():
        assert any(line.split()[:2] == [name, "installed"] for line in out.splitlines())
    if "trio" in loopshim.available_backends():
        import trio

        assert f"trio {trio.__version__}" in out
    assert "backend  asyncio  (fallback: $LOOPSHIM_BACKEND is not set)" in out
    assert "scope    process  (fallback" in out


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({"LOOPSHIM_BACKEND": "asyncio"}, [], "backend  asyncio  (from $LOOPSHIM_BACKEND)"),
        ({"LOOPSHIM_BACKEND": "asyncio"}, ["--backend", "asyncio"], "(from --backend)"),
        ({}, ["--scope", "thread"], "scope    thread  (from --scope)"),
    ],
)
def test_info_says_why_a_backend_and_scope_are_selected(
    env: dict[str, str], args: list[str], expected: str
) -> None:
    done = loopshim_cmd("info", *args, env=env)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout


def test_info_fails_for_an_unknown_backend_in_the_environment() -> None:
    done = loopshim_cmd("info", env={"LOOPSHIM_BACKEND": "nosuchloop"})
    assert done.returncode == 1
    assert "backend  nosuchloop  (from $LOOPSHIM_BACKEND)" in done.stdout
    assert "cannot be used: unknown backend; the backends are asyncio, uvloop, trio" in done.stdout


def test_info_tells_what_to_install_for_a_missing_backend() -> None:
    done = with_hidden_modules(("trio",), "info", "--backend", "trio")
    assert done.returncode == 1
    assert any(
        line.split()[:3] == ["trio", "not", "installed"] for line in done.stdout.splitlines()
    )
    assert 'trio     pip install "loopshim[trio]"' in done.stdout
    assert "cannot be used: not installed" in done.stdout


@pytest.mark.parametrize(
    ("hidden", "line"),
    [
        # One extra brings both, the one that installs least (asgi: Flask, greenlet, anyio).
        (("flask", "anyio"), 'missing anyio, flask: pip install "loopshim[asgi]"'),
        (("flask", "asgiref"), 'missing asgiref, flask: pip install "loopshim[bench]"'),
        (("matplotlib",), 'missing matplotlib: pip install "loopshim[bench]"'),
        (("flask",), 'missing flask: pip install "loopshim[flask]"'),
        # A distribution whose module is named otherwise (nest-asyncio: nest_asyncio).
        (("nest_asyncio",), 'missing nest-asyncio: pip install "loopshim[bench]"'),
    ],
)
def test_info_suggests_the_fewest_extras_for_the_bench(hidden: tuple[str, ...], line: str) -> None:
    done = with_hidden_modules(hidden, "info")
    assert done.returncode == 0, done.stderr
    bench_section = done.stdout.split("For loopshim bench:")[1]
    assert line in bench_section.splitlines()[2]
    assert bench_section.count("pip install") == 1  # one line, never [flask] beside [bench]


OFFERED = {
    "trio": frozenset({"trio"}),
    "uvloop": frozenset({"uvloop"}),
    "flask": frozenset({"flask"}),
    "bench": frozenset({"asgiref", "anyio", "flask", "matplotlib"}),
}


@pytest.mark.parametrize(
    ("modules", "line"),
    [
        (["flask"], 'pip install "loopshim[flask]"'),  # the extra that installs least
        (["flask", "anyio"], 'pip install "loopshim[bench]"'),  # not [flask] beside [bench]
        (["anyio", "trio"], 'pip install "loopshim[bench,trio]"'),
        (["Flask", "matplotlib", "asgiref"], 'pip install "loopshim[bench]"'),
        (["anyio", "gunicorn"], 'pip install "loopshim[bench]" gunicorn'),
        (["gunicorn"], "pip install gunicorn"),
    ],
)
def test_an_install_line_names_the_fewest_extras(modules: list[str], line: str) -> None:
    assert pip_install_line(modules, OFFERED) == line


def test_the_extras_come_from_the_installed_metadata() -> None:
    found = extras()
    assert found["bench"] == {
        "asgiref",
        "anyio",
        "flask",
        "matplotlib",
        "greenlet",
        "greenback",
        "nest-asyncio",
    }
    assert found["trio"] == {"trio"}
    assert "test" not in found  # for loopshim's own development
    assert "all" not in found  # made of the others


# --- bench: output ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """One short run with every peer, two scopes, a coroutine and the Flask workloads."""
    pytest.importorskip("flask")
    pytest.importorskip("matplotlib")
    tmp = tmp_path_factory.mktemp("bench")
    report, plot = tmp / "bench.json", tmp / "bench.png"
    done = loopshim_cmd(
        "bench",
        "--backends=asyncio",
        "--scopes=thread,process",
        "--workloads",
        "noop",
        "--workloads",
        "flask-sync,flask-async",
        "--duration=0.02",
        "--rounds=2",
        f"--json={report}",
        f"--plot={plot}",
        entry="module",
    )
    return done, report, plot


def test_bench_prints_a_table_per_workload(
    bench_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    done, report, _ = bench_run
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress display when stderr is not a terminal
    out = done.stdout
    announced = re.fullmatch(
        r"loopshim bench: (\d+) rows x 0.02 s, in 2 rounds: about \d+ s", out.splitlines()[0]
    )
    assert announced is not None
    results = json.loads(report.read_text())["results"]
    assert int(announced[1]) == sum(r["status"] == "ok" for r in results)
    sections = {line.split(":")[0]: line for line in out.splitlines() if line and line[0] != " "}
    assert {"noop", "flask-sync", "flask-async"} <= set(sections)
    assert "checkpoints" not in sections
    headers = [line.split() for line in out.splitlines() if line.strip().startswith("contender")]
    speedup = ["contender", "median", "p95", "calls/s", "speed-up"]
    assert headers == [speedup, [*speedup[:-1], "vs", "plain"], speedup]
    # flask-sync runs no async code: only loopshim's rows and a plain app take part.
    for label in ["loopshim asyncio thread", "loopshim asyncio process"]:
        assert out.count(f"  {label} ") == 3, label
        assert out.count(f"  {label}, reentrant=True ") == 1, label  # in noop only
    assert out.count(f"  {PEERS[0].label} ") == 2
    assert out.count(f"  {PLAIN_FLASK} ") == 1
    for label in [p.label for p in PEERS[1:]]:
        assert out.count(f"  {label} ") == 2, label
    baseline_rows = [line for line in out.splitlines() if PEERS[0].label in line]
    assert all(line.rstrip().endswith("1.00x") for line in baseline_rows[:2])
    assert next(line for line in out.splitlines() if PLAIN_FLASK in line).endswith("+0.0%")
    assert " µs " in out
    assert " us " not in out


def test_bench_json_has_every_documented_field(
    bench_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    done, report, _ = bench_run
    assert done.returncode == 0, done.stderr
    document = json.loads(report.read_text())
    assert set(document) == TOP_FIELDS
    assert document["schema"] == 1
    assert document["baseline"] == "flask-default"
    assert document["command"][:2] == ["loopshim", "bench"]
    assert document["machine"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert document["versions"]["loopshim"] == loopshim.__version__
    assert document["settings"]["workloads"] == ["noop", "flask-sync", "flask-async"]
    assert document["settings"]["scopes"] == ["thread", "process"]
    assert document["settings"]["duration"] == 0.02
    results = document["results"]
    keys = {(r["workload"], r["contender"]) for r in results}
    contenders = ["loopshim-asyncio-thread", "loopshim-asyncio-process"] + [p.key for p in PEERS]
    # Runners made with reentrant=True: in noop only (what the option costs a plain call).
    reentrant = ["loopshim-asyncio-thread-reentrant", "loopshim-asyncio-process-reentrant"]
    assert keys == {(w, c) for w in ("noop", "flask-async") for c in contenders} | {
        ("flask-sync", c) for c in contenders[:3]
    } | {("noop", c) for c in reentrant}
    for result in results:
        assert set(result) == RESULT_FIELDS
        if result["status"] != "ok":
            assert result["status"] == "not installed", result
            continue
        times = result["times_ns"]
        assert result["calls"] == len(times) > 0
        assert all(isinstance(t, int) and t > 0 for t in times)
        # Two rounds, one batch each; a row whose calls are too slow for two batches
        # gets one (spread evenly over the run: in the second round), and a row whose
        # first batch used its time gets no second.
        assert [b["round"] for b in result["batches"]] in ([0, 1], [0], [1])
        assert sum(b["calls"] for b in result["batches"]) == len(times)
        assert min(times) / 1e9 <= result["median_s"] <= result["p95_s"] <= max(times) / 1e9
    by_key = {(r["workload"], r["contender"]): r for r in results}
    for workload in ("noop", "flask-async"):
        base = by_key[workload, "flask-default"]
        shim = by_key[workload, "loopshim-asyncio-thread"]
        assert base["speedup_vs_flask_default"] == 1.0
        assert shim["speedup_vs_flask_default"] == pytest.approx(
            base["median_s"] / shim["median_s"]
        )
    assert document["targets"]
    assert all(set(t) == TARGET_FIELDS for t in document["targets"])


def test_bench_json_start_time_reads_back_with_fromisoformat(
    bench_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    done, report, _ = bench_run
    assert done.returncode == 0, done.stderr
    started = json.loads(report.read_text())["started"]
    parsed = datetime.datetime.fromisoformat(started)
    assert parsed.tzinfo is not None
    assert abs(time.time() - parsed.timestamp()) < 3600
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", started)


def _python310() -> str:
    """A Python 3.10: on the path, or one of pyenv's (which tox would also find)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which("python3.10"), *sorted(pyenv.glob("versions/3.10*/bin/python3.10"))]
    for candidate in candidates:
        if (
            candidate is not None
            and not subprocess.run(
                [candidate, "-c", "pass"], capture_output=True, timeout=60
            ).returncode
        ):
            return str(candidate)
    pytest.skip("python3.10 is not installed")


def test_bench_json_start_time_reads_back_on_python_3_10(
    bench_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    done, report, _ = bench_run
    assert done.returncode == 0, done.stderr
    started = json.loads(report.read_text())["started"]
    code = "import datetime, sys; print(datetime.datetime.fromisoformat(sys.argv[1]).timestamp())"
    parsed = subprocess.run(
        [_python310(), "-c", code, started], capture_output=True, text=True, timeout=60
    )
    assert parsed.returncode == 0, parsed.stderr
    assert float(parsed.stdout) == datetime.datetime.fromisoformat(started).timestamp()


def test_bench_checks_the_flask_targets_against_the_recipes(
    bench_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    done, report, _ = bench_run
    assert done.returncode == 0, done.stderr
    document = json.loads(report.read_text())
    by_key = {(r["workload"], r["contender"]): r for r in document["results"]}
    flask = [t for t in document["targets"] if t["workload"].startswith("flask")]
    pairs = {(t["contender"], t["reference"]) for t in flask}
    assert pairs == {
        ("loopshim-asyncio-thread", "loop-per-thread-asyncio"),
        ("loopshim-asyncio-process", "loop-thread-asyncio"),
    }
    for target in flask:
        ours = by_key["flask-async", target["contender"]]["median_s"]
        recipe = by_key["flask-async", target["reference"]]
        assert target["ratio"] == pytest.approx(ours / recipe["median_s"])
        assert target["limit"] == 1
        assert f"no slower than {recipe['label']}: {target['measured']}" in done.stdout
    assert "sync view:" not in done.stdout  # the retired targets, relative to a sync view


def test_bench_plot_is_a_png_drawn_by_matplotlib(
    bench_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    done, _, plot = bench_run
    assert done.returncode == 0, done.stderr
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # dots, labels and text: far more than an empty canvas
    assert f"wrote {plot}" in done.stdout


def test_the_expected_time_is_printed_when_the_run_starts() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "LOOPSHIM_BACKEND"}
    args = ["bench", "--backends=asyncio", "--workloads=noop", "--no-peers", "--duration=0.5"]
    with subprocess.Popen(
        [str(SCRIPT), *args], stdout=subprocess.PIPE, text=True, env=environ
    ) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        still_running = process.poll() is None
        rest = process.stdout.read()
    # 3 scopes, each also with reentrant=True, and Flask's default
    assert re.fullmatch(r"loopshim bench: 7 rows x 0.5 s, in 50 rounds: about [45] s\n", first)
    assert still_running  # 7 rows of 0.5 s each are still to come
    assert process.returncode == 0, rest


def _short_run(report: Path, workloads: str) -> tuple[int, int, float]:
    """A 0.2 s run of *workloads* on asyncio: the rows and the seconds it announced,
    and the seconds it took."""
    begin = time.monotonic()
    done = loopshim_cmd(
        "bench",
        f"--workloads={workloads}",
        "--backends=asyncio",
        "--duration=0.2",
        f"--json={report}",
    )
    wall = time.monotonic() - begin
    assert done.returncode == 0, done.stderr
    announced = re.match(
        r"loopshim bench: (\d+) rows x 0.2 s, in 50 rounds: about (\d+) s", done.stdout
    )
    assert announced is not None, done.stdout[:200]
    return int(announced[1]), int(announced[2]), wall


def test_a_short_run_is_short_and_says_how_long_it_takes(tmp_path: Path) -> None:
    """The fan-out's calls (about 12 ms) are longer than a batch of 0.2 s / 50 rounds:
    they get fewer batches, so that a row still takes about its 0.2 s."""
    pytest.importorskip("anyio")
    report = tmp_path / "bench.json"
    rows, expected, wall = _short_run(report, "fanout")
    assert rows <= 3 + len(PEERS)  # 3 scopes and the peers that are installed
    assert expected <= rows * 0.2 * 1.5  # the announcement is about the asked-for time
    assert wall < 2 * expected + 5  # generous: interpreter start-up, a busy machine
    for result in json.loads(report.read_text())["results"]:
        if result["status"] == "ok":
            assert result["elapsed_s"] < 2 * 0.2, result["contender"]


def test_a_short_run_of_the_async_workloads_is_short(tmp_path: Path) -> None:
    """Their batches run inside a coroutine (and nest_asyncio's in a process of its own,
    started once): a row still takes about its 0.2 s."""
    report = tmp_path / "bench.json"
    rows, expected, wall = _short_run(report, "reentrant,cross-loop")
    assert rows <= 3 + 2 + len(ASYNC_PEERS)  # 3 scopes re-entering, 2 host loops, the peers
    assert expected <= rows * 0.2 * 1.5
    assert wall < 2 * expected + 5  # generous: interpreter start-ups, a busy machine
    # Together, not row by row: a call between threads can stall for a moment on a busy
    # machine, and a batch ends only after its call returns.
    elapsed = [r["elapsed_s"] for r in json.loads(report.read_text())["results"] if r["calls"]]
    assert len(elapsed) == rows
    assert sum(elapsed) < 1.5 * 0.2 * rows


def test_bench_repeat_and_threads_make_that_many_calls(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    done = loopshim_cmd(
        "bench",
        "--backends",
        "asyncio",
        "--workloads",
        "noop",
        "--no-peers",
        "--repeat",
        "3",
        "--rounds",
        "2",
        "--threads",
        "2",
        "--json",
        str(report),
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(report.read_text())["results"]
    assert {r["contender"] for r in results} == {
        "loopshim-asyncio-process",
        "loopshim-asyncio-thread",
        "loopshim-asyncio-call",
        "loopshim-asyncio-process-reentrant",
        "loopshim-asyncio-thread-reentrant",
        "loopshim-asyncio-call-reentrant",
        "flask-default",  # kept by --no-peers: the speed-ups are relative to it
    }
    for result in results:
        assert result["calls"] == 2 * 3, result["contender"]  # 2 threads x 3 calls
        assert [b["calls"] for b in result["batches"]] == [2 * 2, 2 * 1]


# --- bench: calls from async code ---------------------------------------------------

#: The async workloads' rows on asyncio and trio in thread and process scope.
ASYNC_ROWS = {
    "reentrant": {
        *(
            f"loopshim-{b}-{s}-reentrant"
            for b in ("asyncio", "trio")
            for s in ("thread", "process")
        ),
        "await-directly",
        "greenback-asyncio",
        "greenback-trio",
        "nest-asyncio",
    },
    "cross-loop": {
        *(
            f"loopshim-{b}-process-from-{h}"
            for b in ("asyncio", "trio")
            for h in ("asyncio", "trio")
        ),
        *(
            f"by-hand-{h}-to-{t}"
            for h in ("asyncio", "trio")
            for t in ("asyncio", "uvloop", "trio")
        ),
    },
}


@pytest.fixture(scope="module")
def async_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One short run of the workloads whose calls are made inside a coroutine, with
    --check."""
    for module in ("greenlet", "greenback", "nest_asyncio", "trio", "uvloop"):
        pytest.importorskip(module)
    report = tmp_path_factory.mktemp("bench") / "async.json"
    done = loopshim_cmd(
        "bench",
        "--backends=asyncio,trio",
        "--scopes=thread,process",
        "--workloads=reentrant,cross-loop",
        "--duration=0.02",
        "--rounds=2",
        "--check",
        f"--json={report}",
    )
    return done, json.loads(report.read_text())


def test_the_async_workloads_print_their_rows(
    async_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    done, document = async_run
    assert done.stderr == ""  # no row failed; no progress display off a terminal
    out = done.stdout
    sections = {line.split(":")[0] for line in out.splitlines() if line and line[0] != " "}
    assert {"reentrant", "cross-loop"} <= sections
    assert "noop" not in sections
    labels = {r["contender"]: r["label"] for r in document["results"]}
    for key in set().union(*ASYNC_ROWS.values()):
        row = next(line for line in out.splitlines() if line.startswith(f"  {labels[key]} "))
        assert row.split()[-1].endswith("x"), row  # compared with the floor or the recipe
    floor = next(line for line in out.splitlines() if line.startswith("  awaiting the function"))
    assert floor.endswith("1.00x")
    assert all(
        line.endswith("1.00x") for line in out.splitlines() if line.startswith("  by hand: ")
    )


def test_the_async_workloads_json_rows_and_fields(
    async_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, document = async_run
    assert document["settings"]["workloads"] == ["reentrant", "cross-loop"]
    for name in ASYNC_ROWS:
        rows = {r["contender"]: r for r in document["results"] if r["workload"] == name}
        assert set(rows) == ASYNC_ROWS[name]
        for key, row in rows.items():
            assert set(row) == RESULT_FIELDS
            assert row["status"] == "ok", row
            assert row["calls"] == len(row["times_ns"]) > 0
            assert row["speedup_vs_flask_default"] is None  # Flask's default takes no part
            if key.startswith("loopshim-"):
                assert row["kind"] == "loopshim"
                assert row["reentrant"] is (name == "reentrant")
            else:
                assert (row["kind"], row["reentrant"]) == ("peer", None)
            if name == "cross-loop":
                host, target = row["pair"]
                assert key.endswith(f"-from-{host}") or key == f"by-hand-{host}-to-{target}"
            else:
                assert row["pair"] is None


def test_the_async_workloads_targets_and_check(
    async_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    done, document = async_run
    medians = {(r["workload"], r["contender"]): r["median_s"] for r in document["results"]}
    targets = document["targets"]
    assert {(t["workload"], t["contender"], t["reference"]) for t in targets} == {
        *(
            ("reentrant", f"loopshim-{b}-{s}-reentrant", "await-directly")
            for b in ("asyncio", "trio")
            for s in ("thread", "process")
        ),
        *(
            ("cross-loop", f"loopshim-{b}-process-from-{h}", f"by-hand-{h}-to-{b}")
            for b in ("asyncio", "trio")
            for h in ("asyncio", "trio")
        ),
    }
    for target in targets:
        assert set(target) == TARGET_FIELDS
        ours = medians[target["workload"], target["contender"]]
        reference = medians[target["workload"], target["reference"]]
        assert target["ratio"] == pytest.approx(ours / reference)
        bound = target["limit"] * reference + target["allowance_s"]
        assert target["status"] == ("pass" if ours <= bound else "fail")
        assert f"{target['text']}: {target['measured']}" in done.stdout
    assert {t["allowance_s"] for t in targets if t["workload"] == "reentrant"} == {5e-6}
    # --check: status 1 exactly when a target is missed (the run is too short to say which).
    missed = any(t["status"] == "fail" for t in targets)
    assert done.returncode == (1 if missed else 0), done.stderr


# --- bench: what is not installed ---------------------------------------------------


def _hidden_bench(
    hidden: tuple[str, ...], tmp_path: Path, *args: str, pythonpath: Path | None = None
) -> tuple[str, dict[str, Any]]:
    report = tmp_path / "bench.json"
    done = with_hidden_modules(
        hidden,
        "bench",
        "--duration=0.01",
        "--rounds=1",
        f"--json={report}",
        *args,
        pythonpath=pythonpath,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(report.read_text())


def _broken_trio(tmp_path: Path) -> Path:
    """A directory with a 'trio' package that is found but fails to import."""
    package = tmp_path / "fake" / "trio"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('this trio is broken')\n")
    return package.parent


@pytest.mark.parametrize("how", ["absent", "broken"])
def test_bench_reports_a_missing_backend_as_not_installed(tmp_path: Path, how: str) -> None:
    hidden = ("trio",) if how == "absent" else ()
    pythonpath = _broken_trio(tmp_path) if how == "broken" else None
    out, document = _hidden_bench(
        hidden,
        tmp_path,
        "--backends=asyncio,trio",
        "--scopes=thread",
        "--workloads=noop",
        pythonpath=pythonpath,
    )
    by_key = {r["contender"]: r for r in document["results"]}
    for key in (
        "loopshim-trio-thread",
        "loopshim-trio-thread-reentrant",
        "trio.run",
        "anyio-portal-trio",
    ):
        assert by_key[key]["status"] == "not installed", by_key[key]
        assert by_key[key]["calls"] == 0
    assert by_key["loopshim-asyncio-thread"]["status"] == "ok"
    trio_row = next(line for line in out.splitlines() if "loopshim trio thread" in line)
    assert "not installed" in trio_row
    if how == "absent":
        assert 'pip install "loopshim[trio]"' in trio_row
    else:
        assert "this trio is broken" in trio_row


def test_bench_skips_a_workload_whose_library_is_missing(tmp_path: Path) -> None:
    out, document = _hidden_bench(
        ("flask",), tmp_path, "--backends=asyncio", "--scopes=call", "--workloads=noop,flask-sync"
    )
    assert document["workloads"]["flask-sync"]["skipped"] == (
        'needs flask: pip install "loopshim[flask]"'
    )
    assert document["workloads"]["noop"]["skipped"] is None
    assert {r["workload"] for r in document["results"]} == {"noop"}
    assert 'not run: needs flask: pip install "loopshim[flask]"' in out


# --- bench: usage errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "asyncio,nosuchloop"], "unknown backend 'nosuchloop'; the backends are: "),
        (["--scopes", "proces"], "the scopes are: process, thread, call. Did you mean 'process'?"),
        (["--workloads", "nop"], "the workloads are: " + ", ".join(WORKLOADS)),
        (["--backends", ","], "give at least one backend"),
        (["--duration", "0"], "--duration: must be greater than 0"),
        (["--duration", "-1"], "--duration: must be greater than 0"),
        (["--duration", "nan"], "--duration: must be greater than 0"),
        (["--duration", "soon"], "--duration: expected a number of seconds, got 'soon'"),
        (["--repeat", "0"], "--repeat: must be at least 1, got 0"),
        (["--rounds", "0"], "--rounds: must be at least 1 and at most 1000, got 0"),
        (["--threads", "0"], "--threads: must be at least 1 and at most 256, got 0"),
        (["--threads", "2.5"], "--threads: expected a whole number, got '2.5'"),
        (["--duration", "1", "--repeat", "3"], "not allowed with argument --duration"),
        (["--plot", "bench.txt"], "the file name must end in .png, .svg, .pdf"),
        (
            ["--json", "/nonexistent-dir/bench.json"],
            "the directory /nonexistent-dir does not exist",
        ),
    ],
)
def test_bench_usage_errors_exit_2_with_the_valid_values(args: list[str], message: str) -> None:
    done = loopshim_cmd("bench", *args)
    assert done.returncode == 2, done.stdout
    assert message in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("args", [["bench", "--backends"], ["info", "--backend"]])
def test_an_unknown_backend_error_lists_every_backend(args: list[str]) -> None:
    done = loopshim_cmd(*args, "nosuchloop")
    assert done.returncode == 2
    assert f"the backends are: {', '.join(BUILTIN_BACKENDS)}." in done.stderr


def test_the_plot_needs_matplotlib(tmp_path: Path) -> None:
    done = with_hidden_modules(("matplotlib",), "bench", f"--plot={tmp_path / 'bench.png'}")
    assert done.returncode == 2
    assert 'needs matplotlib, which is not installed: pip install "loopshim[bench]"' in done.stderr


# --- the rest ---------------------------------------------------------------------


def test_the_command_imports_no_optional_library() -> None:
    code = (
        "import sys\n"
        "import loopshim.cli, loopshim.bench, loopshim._info\n"
        "loopshim.cli.build_parser()\n"
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
