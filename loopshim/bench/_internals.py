"""Everything the bench takes from loopshim's private modules, in one place: their paths
change when the core does. The rest of the bench uses the public API (``loopshim``,
``loopshim.flask``) or this module."""

from __future__ import annotations

from .._core import BUILTIN_BACKENDS, known_backends
from .._options import SCOPES

__all__ = ["SCOPES", "backend_library", "known_backends"]


def backend_library(backend: str) -> str | None:
    """The library that built-in *backend* needs (``None`` for asyncio, which needs
    none, and for third-party backends)."""
    builtin = BUILTIN_BACKENDS.get(backend)
    return None if builtin is None else builtin.requires
