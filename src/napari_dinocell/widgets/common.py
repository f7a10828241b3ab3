"""Small Qt helpers shared by the widgets."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget


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


class LayerCombo(QComboBox):
    """Image layers of the viewer, kept in sync with additions, removals and renames."""

    def __init__(self, viewer: Any, layer_type: str = "Image") -> None:
        super().__init__()
        self.viewer = viewer
        self.layer_type = layer_type
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        viewer.layers.events.moved.connect(self._on_layers_changed)
        self.refresh()

    def _on_layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        current = self.current_layer()
        self.blockSignals(True)
        self.clear()
        for layer in self.viewer.layers:
            if layer.__class__.__name__ == self.layer_type:
                self.addItem(layer.name, id(layer))
        self.blockSignals(False)
        if current is not None:
            idx = self.findData(id(current))
            if idx >= 0:
                self.setCurrentIndex(idx)
                return
        self.currentIndexChanged.emit(self.currentIndex())

    def current_layer(self) -> Any:
        key = self.currentData()
        return next((layer for layer in self.viewer.layers if id(layer) == key), None)

    def set_layer(self, layer: Any) -> None:
        idx = self.findData(id(layer))
        if idx >= 0:
            self.setCurrentIndex(idx)


class PathEdit(QWidget):
    """A line edit with a Browse button (folder or file)."""

    def __init__(self, placeholder: str = "", mode: str = "dir") -> None:
        super().__init__()
        self.mode = mode
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(browse)

    def _browse(self) -> None:
        if self.mode == "dir":
            chosen = QFileDialog.getExistingDirectory(self, "Choose a folder", self.edit.text())
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, "Choose a file", self.edit.text())
        if chosen:
            self.edit.setText(chosen)
            self.edit.editingFinished.emit()

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt naming)
        self.edit.setText(text)
