"""The ``loopshim`` logger, the one every module logs to."""

from __future__ import annotations

import logging

logger = logging.getLogger("loopshim")
