"""Property-based: whatever names, scopes and options users pass, loopshim accepts them
or rejects them with a LoopshimError that says what was wrong — never an unrelated
exception, a hang, or a silently ignored option."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loopshim
from loopshim._core import default_backend

OPTION_NAMES = ["timeout", "shutdown_timeout", "debug", "block_warning", "driver", "loop_factory"]

names = st.one_of(
    st.sampled_from(["asyncio", "uvloop", "trio"]),
    st.text(max_size=12),
    st.none(),
    st.integers(),
    st.binary(max_size=4),
)
scopes = st.one_of(
    st.sampled_from(["process", "thread", "call"]), st.text(max_size=8), st.integers(), st.none()
)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["auto", "internal", "public"]),
    st.lists(st.integers(), max_size=2),
)
options = st.dictionaries(
    st.one_of(st.sampled_from(OPTION_NAMES), st.text(min_size=1, max_size=10)).filter(
        lambda key: key not in ("scope", "cached", "name")
    ),
    values,
    max_size=4,
)


def seconds(value: Any, *, zero_ok: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and (value >= 0 if zero_ok else value > 0)


def attempt(fn: Any, /, *args: Any, **kwargs: Any) -> tuple[Any, loopshim.LoopshimError | None]:
    """``fn(*args, **kwargs)``, and the LoopshimError it raised, if any (others propagate)."""
    try:
        return fn(*args, **kwargs), None
    except loopshim.LoopshimError as exc:
        return None, exc


def check_accepted(scope: Any, opts: dict[str, Any]) -> None:
    """What an accepted call promises about the options it took."""
    assert scope in ("process", "thread", "call")
    for key, value in opts.items():
        if key == "timeout":
            assert value is None or seconds(value, zero_ok=False)
        elif key == "block_warning":
            assert scope == "process"
            assert value is None or seconds(value, zero_ok=False)
        elif key == "shutdown_timeout":
            assert seconds(value, zero_ok=True)
        elif key == "debug":
            assert isinstance(value, bool)
        elif key == "driver":
            assert value in ("auto", "internal", "public")
        elif key == "loop_factory":
            assert value is None or callable(value)
        else:
            raise AssertionError(f"unknown option {key!r} was accepted")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, scope=scopes, opts=options)
def test_get_runner_accepts_or_explains(name: Any, scope: Any, opts: dict[str, Any]) -> None:
    runner, error = attempt(loopshim.get_runner, name, scope=scope, cached=False, **opts)
    if error is not None:
        assert str(error), "an error without a message"
        return
    try:
        assert isinstance(runner, loopshim.LoopRunner)
        check_accepted(scope, opts)
    finally:
        runner.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=names,
    scope=scopes,
    opts=st.one_of(options, st.lists(st.integers(), max_size=2), st.text(max_size=4), st.none()),
)
def test_loopshim_config_accepts_or_explains(name: Any, scope: Any, opts: Any) -> None:
    flask = pytest.importorskip("flask")
    from loopshim.flask import LoopShim

    app = flask.Flask(__name__)
    app.config.update(LOOPSHIM_BACKEND=name, LOOPSHIM_SCOPE=scope, LOOPSHIM_OPTIONS=opts)
    _, error = attempt(LoopShim, app)
    if error is not None:
        assert str(error), "an error without a message"
        return
    assert isinstance(opts, dict)
    check_accepted(scope, opts)
    expected = name if name is not None else default_backend()[0]
    assert LoopShim.runner(app).name == expected


cli_words = st.one_of(
    st.sampled_from(["asyncio", "uvloop", "trio", "process", "thread", "call", "noop", "fanout"]),
    st.text(max_size=10),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-5, max_value=10**4).map(str),
)
bench_options = st.sampled_from(
    ["--backends", "--scopes", "--workloads", "--duration", "--repeat", "--threads", "--rounds"]
)


def call_cli(fn: Any, argv: list[str]) -> tuple[Any, int | None, str, str]:
    """``fn(argv)`` with output captured: (result, SystemExit code or None, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return fn(argv), None, out.getvalue(), err.getvalue()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else -1
    return None, code, out.getvalue(), err.getvalue()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(bench_options, cli_words), max_size=4))
def test_bench_arguments_are_accepted_or_a_usage_error(pairs: list[tuple[str, str]]) -> None:
    """Parsing only: whatever is accepted is valid, the rest exits 2 with a message."""
    from loopshim.cli import build_parser

    argv = ["bench"] + [f"{option}={value}" for option, value in pairs]
    args, code, _, err = call_cli(build_parser().parse_args, argv)
    if code is not None:
        assert code == 2
        assert "error:" in err
        return
    backends = [name for group in args.backends or [] for name in group]
    assert set(backends) <= {"asyncio", "uvloop", "trio", *loopshim.available_backends()}
    scopes = [name for group in args.scopes or [] for name in group]
    assert set(scopes) <= {"process", "thread", "call"}
    if args.duration is not None:
        assert 0 < args.duration <= 3600
    if args.threads is not None:
        assert args.threads >= 1


@settings(max_examples=40, deadline=None)
@given(backend=cli_words)
def test_info_with_any_backend_answers(backend: str) -> None:
    from loopshim.cli import main

    result, code, out, err = call_cli(main, ["info", f"--backend={backend}"])
    if code is not None:
        assert code == 2
        assert "error:" in err
        return
    assert result in (0, 1)
    assert backend.strip() in out
