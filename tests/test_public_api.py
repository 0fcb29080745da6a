"""The public surface: what `import loopshim` offers, and what it does not import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import loopshim

PUBLIC = {
    "BackendNotFound",
    "BackendUnavailable",
    "LoopLocal",
    "LoopRunner",
    "LoopshimError",
    "OptionError",
    "ReentrantCallError",
    "RunnerClosed",
    "ScopeError",
    "__version__",
    "available_backends",
    "ensure_sync",
    "get_runner",
    "loop_local",
    "register_backend",
    "run",
}


def test_all_is_the_public_surface() -> None:
    assert set(loopshim.__all__) == PUBLIC
    public_names = {
        n
        for n, value in vars(loopshim).items()
        if not n.startswith("_") and not inspect.ismodule(value) and n != "annotations"
    }
    assert public_names <= PUBLIC


def test_every_public_name_is_documented_with_a_version() -> None:
    for name in PUBLIC - {"__version__"}:
        doc = inspect.getdoc(getattr(loopshim, name)) or ""
        assert doc, f"{name} has no docstring"
        assert ".. versionadded::" in doc, f"{name} lacks a versionadded note"


def test_errors_derive_from_the_base_and_the_natural_builtin() -> None:
    assert issubclass(loopshim.BackendNotFound, LookupError)
    assert issubclass(loopshim.BackendUnavailable, ImportError)
    assert issubclass(loopshim.OptionError, ValueError)
    for name in (
        "BackendNotFound",
        "BackendUnavailable",
        "OptionError",
        "ReentrantCallError",
        "RunnerClosed",
        "ScopeError",
    ):
        assert issubclass(getattr(loopshim, name), loopshim.LoopshimError)


def test_runners_satisfy_the_protocol() -> None:
    for scope in ("process", "thread", "call"):
        runner = loopshim.get_runner("asyncio", scope=scope, cached=False)
        assert isinstance(runner, loopshim.LoopRunner)
        assert (runner.name, runner.scope) == ("asyncio", scope)
        runner.close()


def test_import_pulls_in_no_optional_dependency() -> None:
    optional = ("trio", "uvloop", "flask", "anyio", "sniffio", "asgiref")
    code = f"import sys, loopshim; print(sorted(m for m in {optional!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("loopshim").joinpath("py.typed").is_file()
