"""The public surface: what `import loopshim` offers, and what it does not import."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import loopshim
import loopshim.abc

PUBLIC = {
    "ArgumentError",
    "BackendNotFound",
    "BackendUnavailable",
    "LoopError",
    "LoopLocal",
    "LoopRunner",
    "LoopshimError",
    "MissingExtra",
    "OptionError",
    "ReentrantCallError",
    "RunnerClosed",
    "ScopeError",
    "UsageError",
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


ERRORS = {
    "BackendNotFound": LookupError,
    "BackendUnavailable": ImportError,
    "MissingExtra": ImportError,
    "OptionError": ValueError,
    "ArgumentError": TypeError,
    "ReentrantCallError": RuntimeError,
    "RunnerClosed": RuntimeError,
    "ScopeError": RuntimeError,
    "UsageError": RuntimeError,
    "LoopError": RuntimeError,
}


@pytest.mark.parametrize(("name", "builtin"), ERRORS.items())
def test_errors_derive_from_the_base_and_the_natural_builtin(name: str, builtin: type) -> None:
    error = getattr(loopshim, name)
    assert issubclass(error, loopshim.LoopshimError)
    assert issubclass(error, builtin)


def test_every_error_class_is_listed() -> None:
    errors = {
        n
        for n in loopshim.__all__
        if isinstance(getattr(loopshim, n), type) and issubclass(getattr(loopshim, n), Exception)
    }
    assert errors == set(ERRORS) | {"LoopshimError"}


#: Builtins raised on purpose because a protocol of Python's requires exactly them:
#: (file, function) -> exception.
PROTOCOL_RAISES = {
    ("_core/_sync_call.py", "__getattr__"): "AttributeError",  # getattr() with a default
    ("flask.py", "__get__"): "AttributeError",  # hasattr(app, "loop_backend")
    ("flask.py", "__delete__"): "AttributeError",
    ("flask.py", "_state"): "AttributeError",  # read through __get__
    ("__main__.py", "<module>"): "SystemExit",  # the exit status of python -m loopshim
    # loopshim_timeout, like the runners' timeout option: the builtin (DESIGN.md).
    ("pytest_plugin.py", "_call"): "TimeoutError",
}


#: Functions that make a loopshim error for the caller to raise.
ERROR_FACTORIES = {"close_in_loop_error", "own_loop_error", "foreign_loop_error", "_explained"}


def test_error_factories_make_loopshim_errors() -> None:
    from loopshim import _core, flask

    closing = _core.close_in_loop_error("asyncio", "asyncio", own_loop=True)
    assert isinstance(closing, loopshim.LoopshimError)
    assert isinstance(_core.own_loop_error("asyncio", "asyncio"), loopshim.LoopshimError)
    assert isinstance(_core.foreign_loop_error("trio", "thread"), loopshim.LoopshimError)
    explained = flask._explained(loopshim.OptionError("unknown option 'x'"), "asyncio", {"x": 1})
    assert isinstance(explained, loopshim.LoopshimError)


def _raises(tree: ast.AST) -> list[tuple[str, str]]:
    """(enclosing function, exception class name) for every ``raise Name(...)``."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = child.name
            if (
                isinstance(child, ast.Raise)
                and isinstance(child.exc, ast.Call)
                and isinstance(child.exc.func, ast.Name)
            ):
                found.append((name, child.exc.func.id))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_every_error_raised_on_purpose_is_a_loopshim_error() -> None:
    root = Path(loopshim.__file__).parent
    wrong = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(("_bench", "bench/")) or relative == "cli.py":
            continue  # the command line reports usage errors itself (exit status 2)
        for function, name in _raises(ast.parse(path.read_text())):
            error = getattr(loopshim, name, None)
            if isinstance(error, type) and issubclass(error, loopshim.LoopshimError):
                continue
            if PROTOCOL_RAISES.get((relative, function)) == name:
                continue
            if name in ERROR_FACTORIES:
                continue
            wrong.append(f"{relative}: {function}() raises {name}")
    assert not wrong, "\n".join(wrong)


def _modules() -> list[str]:
    names = ["loopshim"]
    for info in pkgutil.walk_packages(loopshim.__path__, "loopshim."):
        if ".bench" in info.name or "_bench" in info.name or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _modules())
def test_all_is_right_in_every_module(module_name: str) -> None:
    if module_name == "loopshim.backends._uvloop":
        pytest.importorskip("uvloop")
    if module_name.startswith(("loopshim.backends._trio", "loopshim.pytest_plugin")):
        pytest.importorskip("trio")
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return
    assert len(exported) == len(set(exported)), f"{module_name}.__all__ has duplicates"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{module_name}.__all__ names what it lacks: {missing}"
    defined_here = {
        n
        for n, v in vars(module).items()
        if not n.startswith(("_", "pytest_"))
        and (inspect.isfunction(v) or inspect.isclass(v))
        and getattr(v, "__module__", None) in (module_name, "loopshim", "loopshim.abc")
        and module_name != "loopshim"
        and inspect.getsourcefile(v) == module.__file__
    }
    unlisted = sorted(defined_here - set(exported))
    assert not unlisted, f"{module_name} defines public names left out of __all__: {unlisted}"


@pytest.mark.parametrize("name", sorted(PUBLIC - {"__version__"}))
def test_public_names_print_as_loopshim_names(name: str) -> None:
    assert getattr(loopshim, name).__module__ == "loopshim"


@pytest.mark.parametrize("name", loopshim.abc.__all__)
def test_the_backend_interface_prints_as_loopshim_abc(name: str) -> None:
    assert getattr(loopshim.abc, name).__module__ == "loopshim.abc"


def test_a_traceback_names_the_public_class() -> None:
    code = "import loopshim; loopshim.get_runner('no_such_loop')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "loopshim.BackendNotFound: unknown loop backend 'no_such_loop'" in done.stderr


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
