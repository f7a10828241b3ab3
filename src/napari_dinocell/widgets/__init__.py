"""Dock widgets (views only): the work they trigger lives in dinocell_core and napari_dinocell.jobs."""
