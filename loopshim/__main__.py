"""``python -m loopshim``: the ``loopshim`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
