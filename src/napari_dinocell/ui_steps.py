"""GUI-thread steps run one per event-loop turn (shared by the views and the sample data)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from qtpy.QtCore import QObject, QTimer

#: napari's Labels editing overlays (``Layer._overlays`` keys), whose vispy visuals are the costly part of adding one
EDITING_OVERLAYS = ("polygon", "brush_stroke")


class UiSteps(QObject):
    """GUI-thread steps run one per event-loop turn.

    Adding a layer costs napari ~0.1 s of GUI-thread work (vispy visuals, editing overlays, layer controls) and its
    first draw tens of ms more; run back to back, several of them freeze the viewer for their sum. Here the viewer
    repaints and handles input between two steps, so the longest freeze is the longest single step.
    """

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._steps: deque[Callable[[], None]] = deque()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._run_one)

    @property
    def pending(self) -> bool:
        return bool(self._steps)

    def push(self, step: Callable[[], None]) -> None:
        """Run ``step`` after the steps already queued."""
        self._steps.append(step)
        self._timer.start()

    def push_next(self, step: Callable[[], None]) -> None:
        """Run ``step`` on the next turn, before the steps already queued (the second half of the current step)."""
        self._steps.appendleft(step)
        self._timer.start()

    def show_next(self, layer: Any) -> None:
        """Make a layer that was added hidden visible on the next turn: its first draw (texture upload) then does
        not add to the cost of adding it."""
        self.push_next(partial(setattr, layer, "visible", True))

    def add_layer(self, viewer: Any, layer: Any, show: bool = True) -> None:
        """Add ``layer`` now, hidden, and finish it over the next turns: a Labels layer's editing overlays (polygon,
        brush outline: vispy lines, markers and a polygon, ~40 % of napari's ~0.2–0.5 s per Labels layer) are
        attached one per turn, then the layer is shown (its first texture upload). Nothing uses the overlays before
        they are back: the layer is hidden and in pan/zoom mode, the one mode that never touches them. (A napari
        without ``Layer._overlays`` gets the plain add.)"""
        overlays = getattr(layer, "_overlays", None)
        keys = [key for key in EDITING_OVERLAYS if overlays is not None and key in overlays]
        detached = [(key, overlays.pop(key)) for key in keys]
        layer.visible = False
        viewer.add_layer(layer)
        steps = [partial(overlays.__setitem__, key, overlay) for key, overlay in detached]
        if show:
            steps.append(partial(setattr, layer, "visible", True))
        for step in reversed(steps):
            self.push_next(step)

    def _run_one(self) -> None:
        if self._steps:
            step = self._steps.popleft()
            try:
                step()
            finally:
                if self._steps:
                    self._timer.start()
