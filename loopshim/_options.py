"""Validation of the scope and of the options a runner accepts."""

from __future__ import annotations

import difflib
import importlib.util
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard, get_args

from ._errors import OptionError

Scope = Literal["process", "thread", "call"]
SCOPES: Final[tuple[str, ...]] = get_args(Scope)
#: The scope used when none is named.
DEFAULT_SCOPE: Final = "process"

#: Grace period, in seconds, that ``close()`` gives background tasks by default.
DEFAULT_SHUTDOWN_TIMEOUT: Final = 5.0
#: Seconds a ``process``-scope loop may stay blocked before loopshim logs a warning.
DEFAULT_BLOCK_WARNING: Final = 0.5

Validator = Callable[[str, object], object]


@dataclass(frozen=True)
class CommonOptions:
    """The options every backend accepts, validated."""

    timeout: float | None = None
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    debug: bool = False
    block_warning: float | None = DEFAULT_BLOCK_WARNING
    #: Run every call through the greenlet bridge, so that sync code called from its
    #: coroutine may call the runner again.
    reentrant: bool = False
    #: The names the caller passed (the others have their default).
    given: frozenset[str] = frozenset()


def _describe(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


#: The longest wait the platform can do (``threading.TIMEOUT_MAX``): a longer one would
#: fail with OverflowError when it happens — in close(), at interpreter exit.
MAX_SECONDS: Final = float(threading.TIMEOUT_MAX)


def is_seconds(value: object, *, zero_ok: bool) -> TypeGuard[float]:
    """Whether *value* is a number of seconds the platform can wait (a real number, not
    a bool, at most :data:`MAX_SECONDS`), greater than zero — or also zero with
    *zero_ok*."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float
        return False
    in_range = seconds >= 0 if zero_ok else seconds > 0
    return math.isfinite(seconds) and in_range and seconds <= MAX_SECONDS


def positive_seconds_or_none(name: str, value: object) -> float | None:
    """Accept ``None`` or a finite number of seconds greater than zero."""
    if value is None:
        return None
    if not is_seconds(value, zero_ok=False):
        raise OptionError(
            f"option {name!r} must be a number of seconds greater than 0 and at most "
            f"{MAX_SECONDS:g} (the longest wait the platform can do), or None for no "
            f"limit; got {_describe(value)}"
        )
    return float(value)


def non_negative_seconds(name: str, value: object) -> float:
    """Accept a finite number of seconds, zero included."""
    if not is_seconds(value, zero_ok=True):
        raise OptionError(
            f"option {name!r} must be a number of seconds, 0 or more and at most "
            f"{MAX_SECONDS:g} (the longest wait the platform can do); got {_describe(value)}"
        )
    return float(value)


def boolean(name: str, value: object) -> bool:
    """Accept ``True`` or ``False`` only (not 0/1 or strings)."""
    if not isinstance(value, bool):
        raise OptionError(f"option {name!r} must be True or False; got {_describe(value)}")
    return value


def callable_or_none(name: str, value: object) -> object:
    """Accept ``None`` or any callable."""
    if value is not None and not callable(value):
        raise OptionError(f"option {name!r} must be a callable or None; got {_describe(value)}")
    return value


def reentrant_flag(name: str, value: object) -> bool:
    """Accept ``True`` or ``False``; ``True`` needs the ``greenlet`` package."""
    flag = boolean(name, value)
    if flag and importlib.util.find_spec("greenlet") is None:
        raise OptionError(
            f"option {name!r}: re-entrant calls run through a greenlet bridge, and the "
            'greenlet package is not installed: pip install "loopshim[greenlet]"'
        )
    return flag


COMMON_VALIDATORS: Final[Mapping[str, Validator]] = {
    "timeout": positive_seconds_or_none,
    "shutdown_timeout": non_negative_seconds,
    "debug": boolean,
    "block_warning": positive_seconds_or_none,
    "reentrant": reentrant_flag,
}


def did_you_mean(word: str, choices: list[str]) -> str:
    """A ``" Did you mean 'x'?"`` suffix, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_scope(scope: object) -> Scope:
    """Return *scope* if it names a scope, else raise :class:`OptionError`."""
    if scope in SCOPES:
        return scope  # type: ignore[return-value]
    hint = did_you_mean(scope, list(SCOPES)) if isinstance(scope, str) else ""
    raise OptionError(
        f"unknown scope {scope!r}; the scopes are {', '.join(map(repr, SCOPES))}.{hint}"
    )


def parse_options(
    backend: str,
    options: Mapping[str, Any],
    extra: Mapping[str, Validator] | None = None,
) -> tuple[CommonOptions, dict[str, Any]]:
    """Validate *options* for *backend*: the common ones and the backend's *extra* ones.

    Returns the common options and a dict of the validated extra ones. Unknown names
    and bad values raise :class:`OptionError`.
    """
    validators = {**COMMON_VALIDATORS, **(extra or {})}
    common: dict[str, Any] = {}
    specific: dict[str, Any] = {}
    for name, value in options.items():
        validator = validators.get(name)
        if validator is None:
            allowed = sorted(validators)
            raise OptionError(
                f"unknown option {name!r} for backend {backend!r}; it accepts "
                f"{', '.join(allowed)}.{did_you_mean(name, allowed)}"
            )
        target = common if name in COMMON_VALIDATORS else specific
        target[name] = validator(name, value)
    return CommonOptions(**common, given=frozenset(options)), specific
