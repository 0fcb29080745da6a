"""argparse value types shared by the ``loopshim`` command's subcommands: each turns
the text of an option into a value, or raises :class:`argparse.ArgumentTypeError` with a
message that names the valid values."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ._options import did_you_mean, is_seconds

__all__ = ["count", "names_of", "one_name", "seconds"]


def names_of(kind: str, valid: Callable[[], list[str]]) -> Callable[[str], list[str]]:
    """A comma-separated list of names, each one of *valid()*."""

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


def one_name(kind: str, valid: Callable[[], list[str]]) -> Callable[[str], str]:
    """One name of *valid()*."""
    parse_names = names_of(kind, valid)

    def parse(text: str) -> str:
        names = parse_names(text)
        if len(names) != 1:
            raise argparse.ArgumentTypeError(f"give one {kind}, not {len(names)}")
        return names[0]

    return parse


def seconds(most: float) -> Callable[[str], float]:
    """A number of seconds, greater than 0 and at most *most*."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
        if not is_seconds(value, zero_ok=False) or value > most:
            raise argparse.ArgumentTypeError(
                f"must be greater than 0 and at most {most:g} seconds, got {text}"
            )
        return value

    return parse


def count(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number, at least *low* (and at most *high*)."""

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
