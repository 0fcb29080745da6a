"""One private module per event-loop library, each ending in ``backend_class`` (a
:class:`loopshim.abc.Backend` subclass), which the registry imports by name when the
backend is first used: ``_asyncio``, ``_uvloop``, ``_trio``. ``_libraries`` holds the
async libraries loopshim recognises running in a thread; ``_asyncio_direct`` and
``_trio_driver`` are the only places that touch private internals of asyncio and trio."""

from __future__ import annotations
