"""The ``loopshim`` command (also ``python -m loopshim``).

``loopshim info``
    The interpreter, the installed backends and their library versions, which backend
    and scope are selected by default and why, and what to install for the others.

``loopshim bench``
    loopshim's backends x scopes side by side with the peers a user would otherwise pick
    (Flask's default, ``asyncio.run``, ``uvloop.run``, ``trio.run``, ``anyio.run``,
    anyio's blocking portal), on the same workloads, interleaved in one run.

Run ``loopshim bench --help`` for the options.

.. versionadded:: 0.1
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from ._core import install_hint, known_backends
from ._options import SCOPES, did_you_mean, is_seconds

__all__ = ["build_parser", "main"]

MAX_THREADS: Final = 256
MAX_DURATION: Final = 3600.0


def _names_of(kind: str, valid: Callable[[], list[str]]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names, each one of *valid()*."""

    def parse(text: str) -> list[str]:
        choices = valid()
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"give at least one {kind}: {', '.join(choices)}")
        for name in names:
            if name not in choices:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {name!r}; the {kind}s are: {', '.join(choices)}."
                    f"{did_you_mean(name, choices)}"
                )
        return names

    return parse


def _workload_names() -> list[str]:
    from ._bench import WORKLOADS

    return list(WORKLOADS)


def _one_name(kind: str, valid: Callable[[], list[str]]) -> Callable[[str], str]:
    names_of = _names_of(kind, valid)

    def parse(text: str) -> str:
        names = names_of(text)
        if len(names) != 1:
            raise argparse.ArgumentTypeError(f"give one {kind}, not {len(names)}")
        return names[0]

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    if not is_seconds(value, zero_ok=False) or value > MAX_DURATION:
        raise argparse.ArgumentTypeError(
            f"must be greater than 0 and at most {MAX_DURATION:g} seconds, got {text}"
        )
    return value


def _count(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" + (f" and at most {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def _flatten(groups: list[list[str]] | None, default: Sequence[str]) -> tuple[str, ...]:
    if not groups:
        return tuple(default)
    return tuple(dict.fromkeys(name for group in groups for name in group))


# --- info -------------------------------------------------------------------------


def _info(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ._info import format_info

    report, usable = format_info(args.backend, args.scope)
    print(report)
    return 0 if usable else 1


# --- bench ------------------------------------------------------------------------


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
    from ._bench_report import PLOT_FORMATS

    if path.suffix.lower() not in PLOT_FORMATS:
        parser.error(
            f"--plot {path}: the file name must end in {', '.join(PLOT_FORMATS)} "
            "(the format follows the extension)"
        )
    if importlib.util.find_spec("matplotlib") is None:
        parser.error(f"--plot needs matplotlib, which is not installed: {install_hint('bench')}")
    _check_output(parser, "--plot", path)


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ._bench import Settings, run_bench
    from ._bench_report import (
        TerminalProgress,
        check_targets,
        format_table,
        to_json,
        write_json,
        write_plot,
    )

    _check_output(parser, "--json", args.json)
    _check_plot(parser, args.plot)
    settings = Settings(
        backends=_flatten(args.backends, known_backends()),
        scopes=_flatten(args.scopes, SCOPES),
        workloads=_flatten(args.workloads, _workload_names()),
        peers=args.peers,
        duration=None if args.repeat is not None else args.duration,
        repeat=args.repeat,
        rounds=args.rounds,
        threads=args.threads,
    )
    progress = TerminalProgress(sys.stderr)
    try:
        result = run_bench(settings, progress)
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
    failed = [c for c in result.cells if c.status == "error"]
    if failed:
        print(f"loopshim bench: {len(failed)} row(s) failed; see the table", file=sys.stderr)
        return 1
    if args.check and not all(t.ok for t in targets):
        return 1
    return 0


# --- the parser -------------------------------------------------------------------


def _bench_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="compare backends, scopes and the alternatives, interleaved in one run",
        description=(
            "Measure workloads on loopshim's backends x scopes and on the peers a user "
            "would otherwise pick (Flask's default asgiref async_to_sync, asyncio.run, "
            "uvloop.run, trio.run, anyio.run, anyio's blocking portal), interleaved in "
            "rounds so that a noisy machine affects every row alike. Lists take names "
            "separated by commas, or the option repeated."
        ),
    )
    bench.add_argument(
        "--backends",
        action="append",
        type=_names_of("backend", known_backends),
        metavar="NAMES",
        help="loopshim backends to measure (default: every known one; those not "
        "installed are reported as such)",
    )
    bench.add_argument(
        "--scopes",
        action="append",
        type=_names_of("scope", lambda: list(SCOPES)),
        metavar="NAMES",
        help=f"scopes to measure (default: {','.join(SCOPES)})",
    )
    bench.add_argument(
        "--workloads",
        action="append",
        type=_names_of("workload", _workload_names),
        metavar="NAMES",
        help="workloads to run (default: all): noop, checkpoints, fanout, flask-sync, flask-async",
    )
    bench.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the peers (default); --no-peers keeps only Flask's default, "
        "which the speed-ups are relative to",
    )
    budget = bench.add_mutually_exclusive_group()
    budget.add_argument(
        "--duration",
        type=_seconds,
        default=0.5,
        metavar="SECONDS",
        help="time per row, spread over the rounds (default 0.5)",
    )
    budget.add_argument(
        "--repeat",
        type=_count(1),
        metavar="N",
        help="calls per row and caller thread, spread over the rounds (instead of --duration)",
    )
    bench.add_argument(
        "--rounds",
        type=_count(1, 1000),
        default=50,
        metavar="N",
        help="interleaved rounds: each gives every row one batch (default 50; many short "
        "batches spread every row over the whole run, so that busy phases hit all alike)",
    )
    bench.add_argument(
        "--threads",
        type=_count(1, MAX_THREADS),
        default=1,
        metavar="N",
        help="caller threads calling each contender at once (default 1)",
    )
    bench.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE")
    bench.add_argument(
        "--plot", type=Path, metavar="FILE", help="draw the comparison (.png, .svg or .pdf)"
    )
    bench.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 if one of loopshim's performance targets is missed",
    )
    bench.set_defaults(handler=_bench, parser=bench)


def _info_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    info = commands.add_parser(
        "info",
        help="installed backends, their versions, and which one is selected and why",
        description="Show the installed backends and their library versions, which backend "
        "and scope are selected by default and why, and what to install for the others. "
        "Exits with status 1 if the selected backend cannot be used.",
    )
    info.add_argument(
        "--backend",
        type=_one_name("backend", known_backends),
        help="the backend a program would pass to get_runner()",
    )
    info.add_argument(
        "--scope",
        type=_one_name("scope", lambda: list(SCOPES)),
        help="the scope a program would pass to get_runner()",
    )
    info.set_defaults(handler=_info, parser=info)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``loopshim`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="loopshim",
        description="Run async code from sync code on the event loop you choose.",
    )
    parser.add_argument("--version", action="version", version=f"loopshim {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    _info_parser(commands)
    _bench_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``loopshim`` command with *argv* (default: ``sys.argv[1:]``) and return
    its exit status: 0 on success, 1 when something measured or selected is broken,
    2 for a usage error.

    .. versionadded:: 0.1
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(arguments)
    args.argv = arguments
    status: int = args.handler(args.parser, args)
    return status
