"""Plugin tests share one process with shown viewers (Mesa's LLVM loaded once a viewer draws), and fixtures such as
``models_dir`` import timm, which reaches triton, on its main thread: triton's library is isolated first, as the
plugin's job workers do (``napari_dinocell._triton``; the subprocess test in test_job_startup.py checks the plugin's
own path without this)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _triton_isolated() -> None:
    from napari_dinocell._triton import isolate_triton

    isolate_triton()


@pytest.fixture(autouse=True)
def _thawed_after_each_test():
    """A DINOCell dock makes the process freeze live objects after full collections (napari_dinocell.jobs.gc_pauses);
    a viewer without one that a test closed would stay frozen and fail napari's leak check in the next test."""
    yield
    import gc

    gc.unfreeze()
