"""Heavy imports (matplotlib, pandas, torch…) done in a worker, so that opening a dock never waits for them: the
dock shows at once and builds the parts that need them when they are loaded."""

from __future__ import annotations

import importlib
from collections.abc import Sequence


def import_modules(names: Sequence[str]) -> None:
    """Import ``names`` (already imported ones cost nothing)."""
    for name in names:
        importlib.import_module(name)


def warm_first_labels_layer() -> None:
    """Do here, in the worker, the one-time work napari would do on the GUI thread when the session's first Labels
    layer is added: lazy imports (pandas alone takes ~0.2 s) and vispy's dash-pattern cache, which the first
    anti-aliased line (the layer's polygon-tool overlay) fills in ~80 ms of Python loops."""
    import napari._qt.layer_controls.qt_labels_controls  # noqa: F401
    import napari._vispy.layers.labels  # noqa: F401
    import pandas  # noqa: F401
    from vispy.visuals.line.dash_atlas import DashAtlas

    DashAtlas()
