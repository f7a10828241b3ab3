"""Dock widgets (views only): the work they trigger lives in dinocell_core and napari_dinocell.jobs."""

from napari_dinocell._triton import isolate_triton

isolate_triton()  # before any widget module imports torch/timm (napari's GL may already have loaded Mesa's LLVM)
