"""Choosing a backend: names, scopes, options, the cache, third-party backends, and
the errors for each kind of bad input."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import loopshim


def create_asyncio_runner(*, scope: str, **options: Any) -> loopshim.LoopRunner:
    """A fully custom runner factory (here: a private asyncio runner)."""
    return loopshim.get_runner("asyncio", scope=scope, cached=False, **options)


async def answer() -> int:
    await anyio.sleep(0)
    return 42


def test_builtin_backends_are_available() -> None:
    expected = ["asyncio"] + [
        name for name in ("uvloop", "trio") if importlib.util.find_spec(name) is not None
    ]
    assert loopshim.available_backends()[: len(expected)] == expected


def test_unknown_backend_lists_the_available_ones() -> None:
    with pytest.raises(loopshim.BackendNotFound) as info:
        loopshim.get_runner("tiro")
    message = str(info.value)
    assert "'tiro'" in message
    assert "available: asyncio" in message
    assert "Did you mean 'trio'?" in message
    assert isinstance(info.value, LookupError)


def test_backend_name_must_be_a_string() -> None:
    with pytest.raises(loopshim.BackendNotFound, match="string"):
        loopshim.get_runner(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "module", "extra"), [("trio", "trio", "trio"), ("uvloop", "uvloop", "uvloop")]
)
def test_missing_library_gives_the_install_line(
    monkeypatch: pytest.MonkeyPatch, name: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes "import <module>" fail
    with pytest.raises(loopshim.BackendUnavailable) as info:
        loopshim.get_runner(name, cached=False)
    assert f'pip install "loopshim[{extra}]"' in str(info.value)
    assert isinstance(info.value, ImportError)


def test_unknown_scope() -> None:
    with pytest.raises(
        loopshim.OptionError, match=r"unknown scope 'threads'.*Did you mean 'thread'"
    ):
        loopshim.get_runner("asyncio", scope="threads")


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"timout": 1}, r"unknown option 'timout' for backend 'asyncio'.*Did you mean 'timeout'"),
        ({"timeout": -1}, r"'timeout' must be a number of seconds greater than 0"),
        ({"timeout": 0}, r"'timeout' must be"),
        ({"timeout": float("inf")}, r"'timeout' must be"),
        ({"timeout": "5"}, r"'timeout' must be.*'5' \(str\)"),
        ({"timeout": True}, r"'timeout' must be"),
        (
            {"shutdown_timeout": -0.5},
            r"'shutdown_timeout' must be a number of seconds, 0 or more",
        ),
        ({"shutdown_timeout": float("nan")}, r"'shutdown_timeout' must be"),
        # Beyond what the platform can wait: accepted, it would fail inside close().
        ({"shutdown_timeout": 1e10}, r"'shutdown_timeout' must be .* at most"),
        ({"timeout": 10**400}, r"'timeout' must be .* at most"),
        ({"block_warning": 1e10}, r"'block_warning' must be .* at most"),
        ({"reentrant": "yes"}, r"'reentrant' must be True or False"),
        ({"debug": "yes"}, r"'debug' must be True or False"),
        ({"debug": 1}, r"'debug' must be True or False"),
        ({"loop_factory": 3}, r"'loop_factory' must be a callable"),
    ],
)
def test_bad_options_are_rejected_clearly(options: dict[str, Any], pattern: str) -> None:
    with pytest.raises(loopshim.OptionError, match=pattern):
        loopshim.get_runner("asyncio", cached=False, **options)


def test_backend_specific_options_are_checked_per_backend() -> None:
    pytest.importorskip("trio")
    with pytest.raises(
        loopshim.OptionError, match="unknown option 'loop_factory' for backend 'trio'"
    ):
        loopshim.get_runner("trio", cached=False, loop_factory=object)
    with pytest.raises(loopshim.OptionError, match="'driver' must be one of"):
        loopshim.get_runner("trio", cached=False, driver="fast")


class UnhashableFactory:
    __hash__ = None  # type: ignore[assignment]

    def __call__(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()


def test_unhashable_options_explain_cached_false() -> None:
    with pytest.raises(loopshim.OptionError, match="cached=False"):
        loopshim.get_runner("asyncio", loop_factory=UnhashableFactory(), timeout=1)


def test_an_option_given_its_default_value_shares_the_same_runner() -> None:
    assert loopshim.get_runner("asyncio", shutdown_timeout=5) is loopshim.get_runner("asyncio")
    assert loopshim.get_runner("asyncio", scope="thread", debug=False) is loopshim.get_runner(
        "asyncio", scope="thread"
    )


def test_not_an_async_function() -> None:
    runner = loopshim.get_runner("asyncio", scope="call", cached=False)

    def plain() -> int:
        return 1

    with pytest.raises(TypeError, match=r"plain is a regular callable.*call it directly"):
        runner.run(plain)  # type: ignore[arg-type]
    # A lambda around an async call returns a coroutine: calling it directly is no answer.
    with pytest.raises(TypeError, match=r"returns a coroutine .* run\(async_fn, \*args\)"):
        runner.run(lambda: answer())  # type: ignore[arg-type,return-value]

    async def numbers() -> Any:
        yield 1

    with pytest.raises(TypeError, match=r"async generator function: iterate it inside one"):
        runner.run(numbers)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"not a coroutine object: got answer\(\.\.\.\).*run\(fn, \*args\)"
    ):
        runner.run(answer())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"wrap\(\) takes an async function"):
        runner.wrap(plain)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"spawn\(\) takes an async function, got 3"):
        runner.spawn(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("scope", ["process", "thread", "call"])
def test_close_from_the_runners_own_loop_says_it_would_wait_for_itself(scope: str) -> None:
    runner = loopshim.get_runner("asyncio", scope=scope, cached=False)

    async def closes() -> None:
        runner.close()

    with pytest.raises(loopshim.ReentrantCallError, match="it would wait for itself"):
        runner.run(closes)
    runner.close()


def test_runners_are_shared() -> None:
    a = loopshim.get_runner("asyncio", scope="thread", timeout=5)
    b = loopshim.get_runner("asyncio", scope="thread", timeout=5)
    c = loopshim.get_runner("asyncio", scope="thread", timeout=6)
    private = loopshim.get_runner("asyncio", scope="thread", timeout=5, cached=False)
    assert a is b
    assert c is not a
    assert private is not a
    private.close()


@pytest.mark.parametrize("scope", ["process", "thread", "call"])
def test_closing_a_shared_runner_closes_its_loops_for_every_holder(scope: str) -> None:
    # One rule for every holder: close() drains and closes the shared runner's loops,
    # and the next call — through get_runner(), an earlier wrap(), or an app holding
    # the runner — starts a fresh loop on the same runner.
    # The loops themselves, not their ids: a closed loop's id may be reused.
    async def running_loop() -> asyncio.AbstractEventLoop:
        await anyio.sleep(0)
        return asyncio.get_running_loop()

    shared = loopshim.get_runner("asyncio", scope=scope, shutdown_timeout=1.5)
    wrapped = shared.wrap(running_loop)
    before = wrapped()
    with shared as runner:
        assert runner.run(running_loop) is before or scope == "call"
    assert not shared.closed
    assert loopshim.get_runner("asyncio", scope=scope, shutdown_timeout=1.5) is shared
    assert wrapped() is not before
    assert isinstance(shared.run(running_loop), asyncio.AbstractEventLoop)


def test_closing_a_private_runner_is_for_good() -> None:
    private = loopshim.get_runner("asyncio", scope="thread", cached=False)
    private.close()
    assert private.closed
    with pytest.raises(loopshim.RunnerClosed, match=r"closed by close\(\) at .*test_registry"):
        private.run(answer)


def test_a_second_close_returns_only_once_the_runner_is_closed() -> None:
    runner = loopshim.get_runner("asyncio", cached=False, shutdown_timeout=5)
    future = runner.spawn(anyio.sleep, 0.5)
    import threading

    first = threading.Thread(target=runner.close)
    first.start()
    time.sleep(0.05)
    runner.close()
    assert future.done()
    first.join(10)


def test_environment_variable_selects_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trio")
    monkeypatch.setenv("LOOPSHIM_BACKEND", "trio")
    assert loopshim.get_runner(scope="call").name == "trio"
    monkeypatch.setenv("LOOPSHIM_BACKEND", "asyncoi")
    with pytest.raises(
        loopshim.BackendNotFound,
        match=r"\$LOOPSHIM_BACKEND names backend 'asyncoi'.*Did you mean 'asyncio'",
    ):
        loopshim.get_runner()
    monkeypatch.delenv("LOOPSHIM_BACKEND")
    assert loopshim.get_runner(scope="call").name == "asyncio"


def test_run_helper() -> None:
    assert loopshim.run(answer) == 42
    assert loopshim.run(answer, backend="asyncio") == 42


def test_register_backend() -> None:
    calls: list[str] = []

    def factory(*, scope: str, **options: Any) -> loopshim.LoopRunner:
        calls.append(scope)
        return create_asyncio_runner(scope=scope, **options)

    loopshim.register_backend("custom_loop", factory)
    try:
        assert "custom_loop" in loopshim.available_backends()
        with loopshim.get_runner("custom_loop", scope="call", cached=False) as runner:
            assert runner.run(answer) == 42
        assert calls == ["call"]
        with pytest.raises(ValueError, match="already defined"):
            loopshim.register_backend("custom_loop", factory)
        loopshim.register_backend("custom_loop", factory, replace=True)
    finally:
        from loopshim._core import _registry

        _registry._registered.pop("custom_loop", None)


@pytest.mark.parametrize("name", ["", "has space", "1abc", None])
def test_register_backend_rejects_bad_names(name: Any) -> None:
    with pytest.raises(ValueError, match="identifiers"):
        loopshim.register_backend(name, create_asyncio_runner)


def test_register_backend_rejects_builtin_names_and_non_callables() -> None:
    with pytest.raises(ValueError, match="already defined"):
        loopshim.register_backend("asyncio", create_asyncio_runner)
    with pytest.raises(TypeError, match="Backend subclass or a runner factory"):
        loopshim.register_backend("other_loop", 3)  # type: ignore[arg-type]


def test_factory_must_return_a_loop_runner() -> None:
    loopshim.register_backend("not_a_runner", lambda **kw: object())
    try:
        with pytest.raises(TypeError, match="not a LoopRunner"):
            loopshim.get_runner("not_a_runner", cached=False)
    finally:
        from loopshim._core import _registry

        _registry._registered.pop("not_a_runner", None)


def _fake_distribution(root: Path, dist: str, entry: str, module_source: str | None) -> None:
    info = root / f"{dist}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[loopshim.backends]\n{entry}\n")
    if module_source is not None:
        module, _, _ = entry.split("=", 1)[1].strip().partition(":")
        (root / f"{module}.py").write_text(textwrap.dedent(module_source))


def test_entry_point_backend_is_discovered_and_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_distribution(
        tmp_path,
        "loopshim_fancy",
        "fancy = loopshim_fancy_backend:create",
        """
        import loopshim

        def create(*, scope, **options):
            return loopshim.get_runner("asyncio", scope=scope, cached=False, **options)
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "fancy" in loopshim.available_backends()
    with loopshim.get_runner("fancy", scope="call", cached=False) as runner:
        assert runner.run(answer) == 42


def test_broken_entry_point_names_distribution_and_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_distribution(tmp_path, "loopshim_broken", "broken = no_such_module_here:create", None)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(loopshim.BackendUnavailable) as info:
        loopshim.get_runner("broken", cached=False)
    message = str(info.value)
    assert "loopshim_broken 1.2.3" in message
    assert "broken = no_such_module_here:create" in message
    assert "loopshim.backends" in message
    assert isinstance(info.value.__cause__, ImportError)


def test_internal_trio_driver_rejects_untested_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trio")
    from loopshim.backends import _trio_driver

    monkeypatch.setattr(_trio_driver.trio, "__version__", "9.0.0")
    assert not _trio_driver.supported()
    runner = loopshim.get_runner("trio", scope="thread", cached=False)
    assert "driver=public" in repr(runner)
    assert runner.run(answer) == 42
    runner.close()
    with pytest.raises(loopshim.OptionError, match=r"this is trio 9\.0\.0"):
        loopshim.get_runner("trio", scope="thread", cached=False, driver="internal")


def test_replacing_a_backend_closes_the_runners_it_evicts() -> None:
    def factory(*, scope: str, **options: Any) -> loopshim.LoopRunner:
        return create_asyncio_runner(scope=scope, **options)

    loopshim.register_backend("evicted_loop", factory)
    try:
        old = loopshim.get_runner("evicted_loop")
        assert old.run(answer) == 42
        loopshim.register_backend("evicted_loop", factory, replace=True)
        assert old.closed  # type: ignore[attr-defined]
        new = loopshim.get_runner("evicted_loop")
        assert new is not old
        new.close()
    finally:
        from loopshim._core import _registry

        _registry._registered.pop("evicted_loop", None)
