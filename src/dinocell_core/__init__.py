"""DINOCell core: JUMP Cell Painting data, DINOv3 ViT-S/8 pretraining and distance-map segmentation (no Qt)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a subpackage that exports its main names without importing them.

    Why lazy: ``import dinocell_core.ssl.config`` runs ``ssl/__init__`` first, and the config schemas must stay
    torch-free; each name is imported from its module (``exports``: name → module) on first use."""

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def dir_() -> list[str]:
        return sorted(exports)

    return getattr_, dir_
