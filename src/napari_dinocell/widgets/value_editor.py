"""One config value as a Qt editor, chosen from the key's type annotation (choice, number, flag, path, YAML)."""

from __future__ import annotations

import enum
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_dinocell.widgets.common import remember, remembered


@dataclass(frozen=True)
class FormKey:
    """One main form entry: a dotted config key, its label, and whether it is a path (gets a Browse button)."""

    key: str
    label: str
    path: str = ""  # "", "dir" or "file"
    suggestions: tuple[str, ...] = ()  # offered in an editable drop-down (free text stays allowed)


def format_value(value: Any) -> str:
    """A value as the form shows it: a whole float without its ".0" (Epochs 80, not 80.0; read back as 80, which
    the float field takes); other floats in full precision (1e-06 stays 1e-06)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


class ValueEditor:
    """A Qt editor for one config value, chosen from its type annotation."""

    def __init__(self, annotation: Any, path_mode: str = "", suggestions: Sequence[str] = ()) -> None:
        self.annotation = annotation
        origin = typing.get_origin(annotation)
        self.choices: list[Any] | None = None
        if origin is typing.Literal:
            self.choices = list(typing.get_args(annotation))
        elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            self.choices = [m.value for m in annotation]
        if self.choices is not None:
            self.widget: QWidget = QComboBox()
            self.widget.addItems([str(c) for c in self.choices])
        elif suggestions:
            self.widget = QComboBox()
            self.widget.setEditable(True)
            self.widget.addItems(list(suggestions))
        elif annotation is bool:
            self.widget = QCheckBox()
        elif annotation is int:
            self.widget = QSpinBox()
            self.widget.setRange(0, 2_000_000_000)
        else:  # float (learning rates need 1e-6 precision), str, Path, lists…: text parsed as YAML
            self.widget = QLineEdit()
            self.widget.textChanged.connect(self.widget.setToolTip)  # narrow docks cut long paths
        self.container: QWidget = self.widget
        if path_mode:
            self.container = QWidget()
            row = QHBoxLayout(self.container)
            row.setContentsMargins(0, 0, 0, 0)
            row.addWidget(self.widget)
            browse = QPushButton("…")
            browse.setMaximumWidth(30)
            browse.clicked.connect(lambda: self._browse(path_mode))
            row.addWidget(browse)

    def _browse(self, mode: str) -> None:
        if mode == "dir":
            chosen = QFileDialog.getExistingDirectory(self.widget, "Choose a folder", self.widget.text())
        else:
            chosen, _ = QFileDialog.getOpenFileName(self.widget, "Choose a file", self.widget.text())
        if chosen:
            self.widget.setText(chosen)

    def remember_as(self, key: str) -> None:
        """Keep the text between sessions (QSettings): restored now, saved on every edit."""
        if isinstance(self.widget, QLineEdit):
            if remembered(key) and not self.widget.text():
                self.widget.setText(remembered(key))
            self.widget.textChanged.connect(lambda text: remember(key, text.strip()) if text.strip() else None)

    def set(self, value: Any) -> None:
        w = self.widget
        if isinstance(w, QComboBox) and w.isEditable():
            w.setCurrentText("" if value is None else str(value))
        elif isinstance(w, QComboBox):
            idx = w.findText(str(value.value if isinstance(value, enum.Enum) else value))
            if idx >= 0:
                w.setCurrentIndex(idx)
        elif isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, QSpinBox):
            w.setValue(int(value or 0))
        elif value is None:
            w.setText("")
        elif isinstance(value, (list, dict)):
            w.setText(yaml.safe_dump(value, default_flow_style=True).strip())
        else:
            w.setText(format_value(value))

    def get(self) -> Any:
        w = self.widget
        if isinstance(w, QComboBox) and w.isEditable():
            return w.currentText().strip() or None
        if isinstance(w, QComboBox):
            return self.choices[w.currentIndex()] if self.choices else w.currentText()
        if isinstance(w, QCheckBox):
            return w.isChecked()
        if isinstance(w, QSpinBox):
            return w.value()
        text = w.text().strip()
        if not text:
            return None
        if self.annotation in (str, Path):
            return text
        return yaml.safe_load(text)
