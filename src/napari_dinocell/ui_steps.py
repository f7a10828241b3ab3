"""GUI-thread steps run one per event-loop turn (shared by the views and the sample data)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from qtpy.QtCore import QObject, QTimer


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

    def _run_one(self) -> None:
        if self._steps:
            step = self._steps.popleft()
            try:
                step()
            finally:
                if self._steps:
                    self._timer.start()
