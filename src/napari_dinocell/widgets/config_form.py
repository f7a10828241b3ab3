"""Shared form for training jobs: the main config keys as widgets, every other key as collapsible YAML.

The form never knows a default or a rule of its own: defaults come from ``configs/*.yaml`` through the config
model, and "Validate"/"Launch" run the same pydantic validation as the CLI, so the widget and ``dinocell-core``
cannot disagree. Launching goes through :mod:`dinocell_core.runs.launch` (detached process, torchrun or Slurm).
"""

from __future__ import annotations

import enum
import time
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from napari.utils.notifications import show_error, show_info
from pydantic import BaseModel
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
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
from dinocell_core.runs.launch import (
    LaunchError,
    SlurmOptions,
    launch_local,
    slurm_available,
    stop_run,
    submit_slurm,
)
from dinocell_core.runs.rundir import RunDir


def missing_paths(paths: Sequence[tuple[str, str | None]]) -> list[str]:
    """A message for each labelled local path that does not exist (``s3://`` and other URLs, and empty values,
    are left to the job itself)."""
    return [f"{label} {Path(str(path)).expanduser().resolve()} does not exist" for label, path in paths
            if path and "://" not in str(path) and not Path(str(path)).expanduser().exists()]


@dataclass(frozen=True)
class FormKey:
    """One main form entry: a dotted config key, its label, and whether it is a path (gets a Browse button)."""

    key: str
    label: str
    path: str = ""  # "", "dir" or "file"
    suggestions: tuple[str, ...] = ()  # offered in an editable drop-down (free text stays allowed)


def field_annotation(model: type[BaseModel], dotted: str) -> Any:
    """The (Optional-stripped) annotation of ``dotted`` in a nested pydantic model."""
    node: Any = model
    ann: Any = None
    for part in dotted.split("."):
        if not (isinstance(node, type) and issubclass(node, BaseModel)) or part not in node.model_fields:
            raise KeyError(f"{model.__name__} has no key {dotted!r}")
        ann = _strip_optional(node.model_fields[part].annotation)
        node = ann
    return ann


def _strip_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def get_nested(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def pop_nested(data: dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    node: Any = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def _prune_empty(data: dict[str, Any]) -> dict[str, Any]:
    """Drop sections left empty once the main keys are taken out (keeps the YAML short)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _prune_empty(value)
            if not value:
                continue
        out[key] = value
    return out


def set_nested(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


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
            w.setText(str(value))

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


class ConfigLaunchForm(QWidget):
    """Config form + launch controls for one job kind ("pretrain" or "decoder")."""

    #: filled by subclasses
    kind: str = ""
    config_glob: str = ""
    main_keys: Sequence[FormKey] = ()

    def __init__(self, napari_viewer: Any, config_cls: type[BaseModel]) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.config_cls = config_cls
        self.last_run: Path | None = None

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

        self.out_dir = ValueEditor(str, "dir")
        self.run_name = QLineEdit()
        self.run_name.setPlaceholderText("run name (default: <kind>_<date>_<time>)")
        self.gpus = QSpinBox()
        self.gpus.setRange(0, 64)
        self.gpus.setToolTip("0 = one process on the default device; 2+ = torchrun, one process per GPU")
        self.slurm = QCheckBox("submit to Slurm (sbatch)")
        self.slurm.setEnabled(slurm_available())
        if not slurm_available():
            self.slurm.setToolTip("no 'sbatch' on PATH")
        self.partition = QLineEdit()
        self.partition.setPlaceholderText("partition (optional)")
        self.time_limit = QLineEdit()
        self.time_limit.setPlaceholderText("time limit, e.g. 48:00:00")
        run_form = QFormLayout()
        run_form.addRow("Output folder", self.out_dir.container)
        run_form.addRow("Run name", self.run_name)
        run_form.addRow("GPUs", self.gpus)
        run_form.addRow(self.slurm)
        slurm_row = QHBoxLayout()
        slurm_row.addWidget(self.partition)
        slurm_row.addWidget(self.time_limit)
        run_form.addRow(slurm_row)

        self.validate_btn = QPushButton("Validate")
        self.validate_btn.clicked.connect(self.validate)
        self.launch_btn = QPushButton("Launch")
        self.launch_btn.clicked.connect(lambda: self.launch())  # not clicked(bool) → overrides
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.clicked.connect(self.stop)
        self.resume_btn = QPushButton("Resume")
        self.resume_btn.clicked.connect(self.resume)
        buttons = QHBoxLayout()
        for b in (self.validate_btn, self.launch_btn, self.stop_btn, self.resume_btn):
            buttons.addWidget(b)
        self.message = QLabel("")
        self.message.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(self.form)
        layout.addWidget(self.collapsible)
        layout.addLayout(run_form)
        layout.addLayout(buttons)
        layout.addWidget(self.message)
        layout.addStretch(1)

        first_recipe = self.defaults_combo.findText(self.preferred_defaults())
        if first_recipe > 0:
            self.defaults_combo.setCurrentIndex(first_recipe)
        else:
            self.load_defaults(None)

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
        """Problems the schema cannot see (missing folders/files); subclasses add their own checks."""
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
            self._error(str(exc))
            return
        self.set_config(config_to_dict(cfg))
        self._info(f"defaults from {Path(path).name if path else 'the built-in defaults'}")

    def set_config(self, data: dict[str, Any]) -> None:
        for key, editor in self.editors.items():
            editor.set(get_nested(data, key))
        self.set_extra_values(data)
        rest = yaml.safe_load(yaml.safe_dump(data))
        for key in [*self.editors, *self.extra_keys()]:
            pop_nested(rest, key)
        rest = _prune_empty(rest)
        self.advanced.setPlainText(yaml.safe_dump(rest, sort_keys=False))

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
        checks of paths and the output folder, all reported together."""
        data = apply_overrides(self.form_data(), overrides)
        cfg = validate_config(self.config_cls, data, source="form")
        problems = self.preflight(cfg)
        try:
            run = RunDir(self.run_dir())
            if run.checkpoints_dir.is_dir() and any(run.checkpoints_dir.iterdir()):
                problems.append(f"run folder {run.path} already has checkpoints: press Resume to continue it, "
                                f"or choose another run name")
        except LaunchError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigError("cannot launch:\n- " + "\n- ".join(problems))
        return cfg

    def validate(self) -> BaseModel | None:
        try:
            cfg = self.build_config()
        except ConfigError as exc:
            self._error(str(exc))
            return None
        self._info("configuration is valid")
        return cfg

    # ------------------------------------------------------------------ launch / stop / resume
    def run_dir(self) -> Path:
        out = self.out_dir.get()
        if not out:
            raise LaunchError("choose an output folder for the run")
        name = self.run_name.text().strip() or f"{self.kind}_{time.strftime('%Y%m%d_%H%M%S')}"
        return Path(out).expanduser().resolve() / name

    def gpu_ids(self) -> list[int]:
        return list(range(self.gpus.value())) if self.gpus.value() > 1 else []

    def launch(self, overrides: Sequence[str] = ()) -> Path | None:
        """Validate, then start the job detached (or submit it); returns the run directory."""
        try:
            cfg = self.build_config(overrides)
        except ConfigError as exc:
            self._error(str(exc))
            return None
        try:
            run_dir = self.run_dir()
            if self.slurm.isChecked():
                opts = SlurmOptions(partition=self.partition.text().strip(), time=self.time_limit.text().strip())
                launched = submit_slurm(self.kind, run_dir, cfg, gpus=self.gpus.value(), options=opts)
                msg = f"submitted Slurm job {launched.slurm_job_id} → {run_dir}"
            else:
                launched = launch_local(self.kind, run_dir, cfg, gpus=self.gpu_ids())
                msg = f"started pid {launched.pid} → {run_dir}"
        except (LaunchError, OSError) as exc:
            self._error(str(exc))
            return None
        self.last_run = launched.run_dir
        self._info(msg)
        return launched.run_dir

    def _target_run(self) -> Path | None:
        if self.last_run is not None:
            return self.last_run
        try:
            candidate = self.run_dir()
        except LaunchError as exc:
            self._error(str(exc))
            return None
        return candidate if RunDir(candidate).exists() else None

    def stop(self) -> None:
        run = self._target_run()
        if run is None:
            self._error("no run to stop: launch one, or enter the output folder and run name of an existing run")
            return
        try:
            self._info(f"{stop_run(run)} ({run.name} will checkpoint and stop)")
        except LaunchError as exc:
            self._error(str(exc))

    def resume(self) -> None:
        run = self._target_run()
        if run is None:
            self._error("no run to resume: enter the output folder and run name of an existing run")
            return
        try:
            kind = str(RunDir(run).read_status().get("kind") or self.kind)
            if self.slurm.isChecked():
                opts = SlurmOptions(partition=self.partition.text().strip(), time=self.time_limit.text().strip())
                launched = submit_slurm(kind, run, None, gpus=self.gpus.value(), options=opts)
            else:
                launched = launch_local(kind, run, None, gpus=self.gpu_ids())
        except LaunchError as exc:
            self._error(str(exc))
            return
        self.last_run = launched.run_dir
        self._info(f"resumed {run.name} from its last checkpoint")

    # ------------------------------------------------------------------ messages
    def _error(self, text: str) -> None:
        self.message.setStyleSheet("color: #ff6b6b;")
        self.message.setText(text)
        show_error(text)

    def _info(self, text: str) -> None:
        self.message.setStyleSheet("")
        self.message.setText(text)
        show_info(text)

