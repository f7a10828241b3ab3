"""``dinocell-core``: every DINOCell job, headless (``python -m dinocell_core.cli`` for torchrun).

The subcommands and their error handling live in :mod:`dinocell_core.commands`.
"""

from __future__ import annotations

import sys

from dinocell_core.commands import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
