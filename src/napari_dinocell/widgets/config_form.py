"""Shared form for training jobs: the main config keys as widgets, every other key as collapsible YAML.

The form never knows a default or a rule of its own: defaults come from the packaged recipes through the config
model, and "Validate"/"Launch" run the same pydantic validation as the CLI, so the widget and ``dinocell-core``
cannot disagree. The pieces live apart: dotted-key dict helpers in :mod:`napari_dinocell.config_dict`, value
editors in :mod:`.value_editor`, the pre-launch checks in :mod:`napari_dinocell.preflight`, and launch / stop /
resume in :mod:`.run_controls` (which calls :mod:`dinocell_core.runs.launch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QWidget,
)
from superqt import QCollapsible

from dinocell_core.config import (
    RECIPES,
    ConfigError,
    apply_overrides,
    config_to_dict,
    load_config,
    validate_config,
)
from napari_dinocell.config_dict import (
    field_annotation,
    get_nested,
    pop_nested,
    prune_empty,
    set_nested,
)
from napari_dinocell.jobs.gc_pauses import watch as watch_gc_pauses
from napari_dinocell.widgets.common import scroll_layout
from napari_dinocell.widgets.run_controls import RunControls
from napari_dinocell.widgets.value_editor import FormKey, ValueEditor


class ConfigLaunchForm(QWidget):
    """Config form + launch controls for one job kind ("pretrain" or "decoder")."""

    #: filled by subclasses
    kind: str = ""
    config_glob: str = ""
    main_keys: Sequence[FormKey] = ()

    def __init__(self, napari_viewer: Any, config_cls: type[BaseModel]) -> None:
        super().__init__()
        self.viewer = napari_viewer
        watch_gc_pauses(napari_viewer, self)
        self.config_cls = config_cls

        self.defaults_combo = QComboBox()
        self.defaults_combo.addItem("built-in defaults", None)
        for path in sorted(RECIPES.glob(self.config_glob)):
            self.defaults_combo.addItem(path.name, str(path))
        self.defaults_combo.currentIndexChanged.connect(lambda _: self.load_defaults(self.defaults_combo.currentData()))
        load_btn = QPushButton("Load…")
        load_btn.clicked.connect(self._load_file)
        top = QHBoxLayout()
        top.addWidget(QLabel("Defaults"))
        top.addWidget(self.defaults_combo, 1)
        top.addWidget(load_btn)

        self.form = QFormLayout()
        self.editors: dict[str, ValueEditor] = {}
        for fk in self.main_keys:
            editor = ValueEditor(field_annotation(config_cls, fk.key), fk.path, fk.suggestions)
            self.editors[fk.key] = editor
            self.form.addRow(fk.label, editor.container)
        self._add_extra_rows(self.form)

        self.advanced = QPlainTextEdit()
        self.advanced.setMinimumHeight(160)
        self.collapsible = QCollapsible("Advanced keys (YAML)")
        self.collapsible.addWidget(self.advanced)

        self.run_controls = RunControls(self.kind, self.build_config)

        layout = scroll_layout(self)
        layout.addLayout(top)
        layout.addLayout(self.form)
        layout.addWidget(self.collapsible)
        layout.addWidget(self.run_controls)
        layout.addStretch(1)

        first_recipe = self.defaults_combo.findText(self.preferred_defaults())
        if first_recipe > 0:
            self.defaults_combo.setCurrentIndex(first_recipe)
        else:
            self.load_defaults(None)

    # ------------------------------------------------------------------ the run controls, as the form's own
    @property
    def out_dir(self) -> ValueEditor:
        return self.run_controls.out_dir

    @property
    def run_name(self) -> Any:
        return self.run_controls.run_name

    @property
    def gpus(self) -> Any:
        return self.run_controls.gpus

    @property
    def message(self) -> QLabel:
        return self.run_controls.message

    @property
    def launch_btn(self) -> QPushButton:
        return self.run_controls.launch_btn

    @property
    def last_run(self) -> Path | None:
        return self.run_controls.last_run

    def validate(self) -> BaseModel | None:
        return self.run_controls.validate()

    def launch(self, overrides: Sequence[str] = ()) -> Path | None:
        return self.run_controls.launch(overrides)

    # ------------------------------------------------------------------ hooks for subclasses
    def preferred_defaults(self) -> str:
        return ""

    def _add_extra_rows(self, form: QFormLayout) -> None:
        """Subclasses add rows for keys that need a special editor (e.g. a channel list)."""

    def extra_values(self) -> dict[str, Any]:
        return {}

    def set_extra_values(self, data: dict[str, Any]) -> None:
        """Fill the subclass's special editors from a config dict."""

    def extra_keys(self) -> Sequence[str]:
        return ()

    def preflight(self, cfg: Any) -> list[str]:
        """Problems the schema cannot see (missing folders/files, empty data…); subclasses add their own checks."""
        return []

    # ------------------------------------------------------------------ config <-> form
    def _load_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Config", str(RECIPES), "YAML (*.yaml *.yml)")
        if path:
            self.load_defaults(path)

    def load_defaults(self, path: str | None) -> None:
        try:
            cfg = load_config(self.config_cls, path)
        except ConfigError as exc:
            self.run_controls.error(str(exc))
            return
        self.set_config(config_to_dict(cfg))
        self.run_controls.info(f"defaults from {Path(path).name if path else 'the built-in defaults'}")

    def set_config(self, data: dict[str, Any]) -> None:
        for key, editor in self.editors.items():
            editor.set(get_nested(data, key))
        self.set_extra_values(data)
        rest = yaml.safe_load(yaml.safe_dump(data))
        for key in [*self.editors, *self.extra_keys()]:
            pop_nested(rest, key)
        self.advanced.setPlainText(yaml.safe_dump(prune_empty(rest), sort_keys=False))

    def form_data(self) -> dict[str, Any]:
        """The config as a dict: the advanced YAML with the main fields written over it."""
        try:
            data = yaml.safe_load(self.advanced.toPlainText()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"advanced keys: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("advanced keys: must be a YAML mapping")
        for key, editor in self.editors.items():
            value = editor.get()
            if value is not None:
                set_nested(data, key, value)
        for key, value in self.extra_values().items():
            set_nested(data, key, value)
        return data

    def build_config(self, overrides: Sequence[str] = ()) -> BaseModel:
        """The form as a validated config: schema errors (pydantic, as in the CLI) first, then the preflight
        checks of paths, data and the output folder, all reported together."""
        data = apply_overrides(self.form_data(), overrides)
        cfg = validate_config(self.config_cls, data, source="form")
        problems = self.preflight(cfg) + self.run_controls.output_problems()
        if problems:
            raise ConfigError("cannot launch:\n- " + "\n- ".join(problems))
        return cfg
