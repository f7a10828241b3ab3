"""DINOCell napari plugin: launch and watch training runs, browse JUMP fields, segment cells, view features.

A thin layer over ``dinocell_core``: every action calls the same code as the ``dinocell-core`` CLI, and the run
directory is the contract between the two.
"""

__all__: list[str] = []
