"""Embedders that count or fail, to check what profile embed does around them."""

from __future__ import annotations

import numpy as np

from dinocell_core.profiling.baseline import BaselineEmbedder  # noqa: E402


class EmbedCrash(RuntimeError):
    pass


class CountingEmbedder(BaselineEmbedder):
    """The baseline embedder, counting its batches and raising :class:`EmbedCrash` after ``crash_after`` of them (a
    killed embed, for the resume tests here and in test_profile_cells)."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.calls = 0
        self.crash_after = crash_after

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise EmbedCrash("killed")
        self.calls += 1
        return super().__call__(tiles)
