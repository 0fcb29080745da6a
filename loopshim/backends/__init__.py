"""One private module per event-loop library; each exposes a runner factory that the
registry imports lazily (``loopshim._registry``)."""

from __future__ import annotations
