"""The uvloop backend: the asyncio backend with ``uvloop.new_event_loop`` as its loop
factory (never the deprecated event-loop policy)."""

from __future__ import annotations

from typing import ClassVar

import uvloop

from .._options import Validator
from ._asyncio import AsyncioBackend, LoopFactory

__all__ = ["UvloopBackend", "backend_class"]


class UvloopBackend(AsyncioBackend):
    """asyncio on uvloop's loop."""

    extra_options: ClassVar[dict[str, Validator]] = {}

    def default_loop_factory(self) -> LoopFactory:
        return uvloop.new_event_loop


backend_class = UvloopBackend
