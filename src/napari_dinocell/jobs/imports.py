"""Heavy imports (matplotlib, pandas, torch…) done in a worker, so that opening a dock never waits for them: the
dock shows at once and builds the parts that need them when they are loaded."""

from __future__ import annotations

import importlib
from collections.abc import Sequence


def import_modules(names: Sequence[str]) -> None:
    """Import ``names`` (already imported ones cost nothing)."""
    for name in names:
        importlib.import_module(name)
