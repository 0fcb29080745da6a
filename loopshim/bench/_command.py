"""The ``loopshim bench`` subcommand: its options, and what it does with them."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .. import _argtypes
from .._info import importable, pip_install_line
from ._internals import SCOPES, known_backends
from ._results import BenchResult, BenchSettings
from ._workloads import WORKLOADS

if TYPE_CHECKING:
    from ._targets import Target

__all__ = ["add_bench_command", "exit_status"]

MAX_THREADS: Final = 256
MAX_DURATION: Final = 3600.0
DEFAULT_DURATION: Final = 0.5
DEFAULT_ROUNDS: Final = 50


def _workload_names() -> list[str]:
    return list(WORKLOADS)


def _flatten(groups: list[list[str]] | None, default: Sequence[str]) -> tuple[str, ...]:
    if not groups:
        return tuple(default)
    return tuple(dict.fromkeys(name for group in groups for name in group))


def _check_output(parser: argparse.ArgumentParser, option: str, path: Path | None) -> None:
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        parser.error(f"{option} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        parser.error(f"{option} {path}: the directory {parent} is not writable")
    if path.is_dir():
        parser.error(f"{option} {path}: that is a directory; give a file name")


def _check_plot(parser: argparse.ArgumentParser, path: Path | None) -> None:
    if path is None:
        return
    from ._plot import PLOT_FORMATS

    if path.suffix.lower() not in PLOT_FORMATS:
        parser.error(
            f"--plot {path}: the file name must end in {', '.join(PLOT_FORMATS)} "
            "(the format follows the extension)"
        )
    if not importable("matplotlib"):
        parser.error(
            f"--plot needs matplotlib, which is not installed: {pip_install_line(['matplotlib'])}"
        )
    _check_output(parser, "--plot", path)


def _settings(args: argparse.Namespace) -> BenchSettings:
    return BenchSettings(
        backends=_flatten(args.backends, known_backends()),
        scopes=_flatten(args.scopes, SCOPES),
        workloads=_flatten(args.workloads, _workload_names()),
        peers=args.peers,
        duration=None if args.repeat is not None else args.duration,
        repeat=args.repeat,
        rounds=args.rounds,
        threads=args.threads,
    )


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    # Imported here: every loopshim command builds this parser, only bench runs.
    from ._json import to_json, write_json
    from ._measure import run_bench
    from ._plot import write_plot
    from ._progress import TerminalProgress
    from ._table import format_start, format_table
    from ._targets import check_targets

    _check_output(parser, "--json", args.json)
    _check_plot(parser, args.plot)
    settings = _settings(args)
    progress = TerminalProgress(sys.stderr)

    def announce(rows: int, expected_s: float | None) -> None:
        print(format_start(settings, rows, expected_s), flush=True)

    try:
        result = run_bench(settings, progress, announce)
    except KeyboardInterrupt:
        progress.clear()
        print("loopshim bench: interrupted", file=sys.stderr)
        return 130
    targets = check_targets(result)
    print(format_table(result, targets))
    if args.json is not None:
        write_json(args.json, to_json(result, targets, args.argv))
        print(f"wrote {args.json}")
    if args.plot is not None:
        write_plot(result, args.plot)
        print(f"wrote {args.plot}")
    failed = sum(c.status == "error" for c in result.cells)
    if failed:
        print(f"loopshim bench: {failed} row(s) failed; see the table", file=sys.stderr)
    return exit_status(result, targets, check=args.check)


def exit_status(result: BenchResult, targets: list[Target], *, check: bool) -> int:
    """1 if a row failed, or (with *check*) if a target was missed; else 0. A target
    that could not be checked (one side not measured) is not a miss."""
    if any(c.status == "error" for c in result.cells):
        return 1
    return 1 if check and any(t.status == "fail" for t in targets) else 0


def _selection_options(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "--backends",
        action="append",
        type=_argtypes.names_of("backend", known_backends),
        metavar="NAMES",
        help="loopshim backends to measure (default: every known one; those not "
        "installed are reported as such)",
    )
    bench.add_argument(
        "--scopes",
        action="append",
        type=_argtypes.names_of("scope", lambda: list(SCOPES)),
        metavar="NAMES",
        help=f"scopes to measure (default: {','.join(SCOPES)})",
    )
    bench.add_argument(
        "--workloads",
        action="append",
        type=_argtypes.names_of("workload", _workload_names),
        metavar="NAMES",
        help=f"workloads to run (default: all): {', '.join(WORKLOADS)}",
    )
    bench.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the peers (default); --no-peers keeps only Flask's default, "
        "which the speed-ups are relative to",
    )


def _budget_options(bench: argparse.ArgumentParser) -> None:
    budget = bench.add_mutually_exclusive_group()
    budget.add_argument(
        "--duration",
        type=_argtypes.seconds(MAX_DURATION),
        default=DEFAULT_DURATION,
        metavar="SECONDS",
        help=f"time per row, spread over the rounds (default {DEFAULT_DURATION:g}); the "
        "run takes about that times the number of rows, which it prints when it starts",
    )
    budget.add_argument(
        "--repeat",
        type=_argtypes.count(1),
        metavar="N",
        help="calls per row and caller thread, spread over the rounds (instead of --duration)",
    )
    bench.add_argument(
        "--rounds",
        type=_argtypes.count(1, 1000),
        default=DEFAULT_ROUNDS,
        metavar="N",
        help=f"interleaved rounds: each gives every row one batch (default {DEFAULT_ROUNDS}; "
        "many short batches spread every row over the whole run, so that busy phases hit "
        "all alike; a row whose calls are too long for that many batches gets fewer)",
    )
    bench.add_argument(
        "--threads",
        type=_argtypes.count(1, MAX_THREADS),
        default=1,
        metavar="N",
        help="caller threads calling each contender at once (default 1)",
    )


def _output_options(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE")
    bench.add_argument(
        "--plot", type=Path, metavar="FILE", help="draw the comparison (.png, .svg or .pdf)"
    )
    bench.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 if one of loopshim's performance targets is missed "
        "(each is a ratio to a peer or a hand-written recipe measured in the same run)",
    )


def add_bench_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` to the ``loopshim`` command's *commands*."""
    bench = commands.add_parser(
        "bench",
        help="compare backends, scopes and the alternatives, interleaved in one run",
        description=(
            "Measure workloads on loopshim's backends x scopes and on the peers a user "
            "would otherwise pick (Flask's default asgiref async_to_sync, asyncio.run, "
            "uvloop.run, trio.run, anyio.run, anyio's blocking portal, and the recipes "
            "written by hand), interleaved in rounds so that a noisy machine affects every "
            "row alike. Lists take names separated by commas, or the option repeated."
        ),
    )
    _selection_options(bench)
    _budget_options(bench)
    _output_options(bench)
    bench.set_defaults(handler=_bench, parser=bench)
