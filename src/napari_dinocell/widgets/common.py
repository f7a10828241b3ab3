"""Small Qt helpers shared by the widgets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QSettings, QSize, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

#: a dock's minimum height: several DINOCell docks stacked must fit a 1000-px-high screen (content scrolls)
DOCK_MIN_HEIGHT = 100
DOCK_MAX_MIN_WIDTH = 480


def settings() -> QSettings:
    """The plugin's persistent settings (last folders), an INI file in the user's config folder."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "DINOCell", "napari-dinocell")


def remembered(key: str) -> str:
    value = settings().value(key, "")
    return value if isinstance(value, str) else ""


def remember(key: str, value: str) -> None:
    store = settings()
    store.setValue(key, value)
    store.sync()


class _VerticalScroll(QScrollArea):
    """Scrolls vertically; as short as :data:`DOCK_MIN_HEIGHT`, and at least as wide as its content needs (up to
    :data:`DOCK_MAX_MIN_WIDTH`; beyond that a horizontal scroll bar rather than clipped buttons)."""

    def _content_width(self) -> int:
        content = self.widget()
        width = content.minimumSizeHint().width() if content is not None else 0
        return min(width + self.verticalScrollBar().sizeHint().width() + 4, DOCK_MAX_MIN_WIDTH)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(self._content_width(), DOCK_MIN_HEIGHT)

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        self.setMinimumWidth(self._content_width())  # a dock sized before its content was filled in grows now
        super().showEvent(event)


def scroll_layout(dock: QWidget) -> QVBoxLayout:
    """Give ``dock`` a scroll area and return the layout to fill: the dock then asks for little height, so docks
    stacked in one napari window never push their buttons off a small screen."""
    content = QWidget()
    inner = QVBoxLayout(content)
    area = _VerticalScroll()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(content)
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return inner


def fit_narrow(combo: QComboBox) -> None:
    """A combo that does not widen its dock to its longest entry; the full text is its tooltip."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(12)
    combo.currentTextChanged.connect(combo.setToolTip)


class LayerCombo(QComboBox):
    """Image layers of the viewer, kept in sync with additions, removals and renames; ``accept(layer)`` False
    leaves a layer out (e.g. result layers, which are never an input)."""

    def __init__(self, viewer: Any, layer_type: str = "Image", accept: Callable[[Any], bool] | None = None) -> None:
        super().__init__()
        self.viewer = viewer
        self.layer_type = layer_type
        self.accept = accept
        fit_narrow(self)
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
            if self.offers(layer):
                self.addItem(layer.name, id(layer))
        self.blockSignals(False)
        if current is not None:
            idx = self.findData(id(current))
            if idx >= 0:
                self.setCurrentIndex(idx)
                return
        self.currentIndexChanged.emit(self.currentIndex())

    def offers(self, layer: Any) -> bool:
        """Whether ``layer`` can be chosen here."""
        return layer.__class__.__name__ == self.layer_type and (self.accept is None or self.accept(layer))

    def current_layer(self) -> Any:
        key = self.currentData()
        return next((layer for layer in self.viewer.layers if id(layer) == key), None)

    def set_layer(self, layer: Any) -> None:
        idx = self.findData(id(layer))
        if idx >= 0:
            self.setCurrentIndex(idx)


class PathEdit(QWidget):
    """A line edit with a Browse button (folder or file); with ``settings_key`` it remembers its last value
    between sessions. The full path is also the tooltip (narrow docks cut the text). ``changed(text)`` when a new
    value is set: typed and confirmed (Enter, focus out), browsed, or :meth:`setText` (not per keystroke)."""

    changed = Signal(str)

    def __init__(self, placeholder: str = "", mode: str = "dir", settings_key: str = "") -> None:
        super().__init__()
        self.mode = mode
        self.settings_key = settings_key
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.textChanged.connect(self.edit.setToolTip)
        if settings_key:
            self.edit.setText(remembered(settings_key))
            self.edit.editingFinished.connect(self._remember)
        self._committed = self.text()
        self.edit.editingFinished.connect(self._commit)
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
        self._remember()
        self._commit()

    def _commit(self) -> None:
        if self.text() != self._committed:
            self._committed = self.text()
            self.changed.emit(self._committed)

    def _remember(self) -> None:
        if self.settings_key and self.text():
            remember(self.settings_key, self.text())
