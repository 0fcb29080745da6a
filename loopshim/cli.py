"""The ``loopshim`` command (also ``python -m loopshim``).

``loopshim info``
    The interpreter, the installed backends and their library versions, which backend
    and scope are selected by default and why, and what to install for the others.

``loopshim bench``
    loopshim's backends x scopes side by side with the peers a user would otherwise pick
    (Flask's default, ``asyncio.run``, ``uvloop.run``, ``trio.run``, ``anyio.run``,
    anyio's blocking portal), on the same workloads, interleaved in one run
    (:mod:`loopshim.bench`).

Run ``loopshim bench --help`` for the options.

.. versionadded:: 0.1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._argtypes import one_name
from ._core import known_backends
from ._info import format_info
from ._options import SCOPES
from .bench import add_bench_command

__all__ = ["build_parser", "main"]


def _info(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    report, usable = format_info(args.backend, args.scope)
    print(report)
    return 0 if usable else 1


def _add_info_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    info = commands.add_parser(
        "info",
        help="installed backends, their versions, and which one is selected and why",
        description="Show the installed backends and their library versions, which backend "
        "and scope are selected by default and why, and what to install for the others. "
        "Exits with status 1 if the selected backend cannot be used.",
    )
    info.add_argument(
        "--backend",
        type=one_name("backend", known_backends),
        help="the backend a program would pass to get_runner()",
    )
    info.add_argument(
        "--scope",
        type=one_name("scope", lambda: list(SCOPES)),
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
    _add_info_command(commands)
    add_bench_command(commands)
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
