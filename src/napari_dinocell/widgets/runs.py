"""Runs widget: every run in a folder with its state and speed, and a live plot of the selected run's losses.

A 1 s timer starts one background poll at a time (folder scan + new metrics lines + log tail); the GUI thread
only redraws. Metrics are tailed with :class:`MetricsTail`, so each poll reads only the bytes appended since the
previous one, even for a 48 h run. Losses and validation metrics (decoder runs; a pretraining run's ``eval:``
mAP) are plotted on separate axes; only summary metrics are drawn, so the legend stays readable. A run that turns
failed raises a notification.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from dinocell_core.runs.launch import LaunchError, resume_run, stop_run
from dinocell_core.runs.records import effective_state
from dinocell_core.runs.rundir import MetricsTail, RunDir, RunInfo, list_runs
from napari_dinocell.jobs import start_job
from napari_dinocell.status import JobStatus
from napari_dinocell.widgets.common import remember, remembered, scroll_layout

if TYPE_CHECKING:
    import napari

COLUMNS = ("Run", "Kind", "State", "Step", "Throughput", "ETA", "Last checkpoint")
NON_PLOTTED = {"step", "time", "epoch", "elapsed_s", "timestamp", "wall_time"}
#: validation metrics drawn (as ``val_<name>``): the rest (ap at every IoU, counts) would crowd the legend
SHOWN_METRICS = ("ap@0.50", "ap_mean", "f1@0.50", "seg", "det")
EVAL_KEYS = ("eval_fraction_retrieved", "eval_mean_map")  # the pretraining eval: benchmark, also on the 0–1 axis
SETTINGS_KEY = "runs/folder"
LOG_TAIL_BYTES = 4096


@dataclass
class RunRow:
    info: RunInfo
    state: str


@dataclass
class PollResult:
    rows: list[RunRow]
    records: list[dict[str, Any]]
    log_tail: str
    error: str | None = None
    console_tail: str = ""


def read_tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    """The last ``size`` bytes of a text file ("" if it is not there)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - size))
        return fh.read().decode("utf-8", errors="replace")


def poll_runs(folder: Path, tail: MetricsTail | None) -> PollResult:
    """Background part of one refresh: scan the folder, read new metrics, read the end of the selected log."""
    try:
        infos = list_runs(folder)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        return PollResult([], [], "", error=f"cannot read runs folder: {exc}")
    rows = [RunRow(info, effective_state(RunDir(info.path).read_status())) for info in infos]
    if tail is None:
        return PollResult(rows, [], "")
    run = RunDir(tail.path.parent)
    return PollResult(rows, tail.read_new(), read_tail(run.log_path), console_tail=read_tail(run.console_path))


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _numeric(record: dict[str, Any]) -> list[str]:
    return [k for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def plotted_keys(record: dict[str, Any]) -> list[str]:
    """The loss-axis keys of a metrics record: every loss term (keys containing "loss"), else every other numeric
    value that is not a validation metric."""
    numeric = [k for k in _numeric(record) if not k.startswith("val_") and k not in EVAL_KEYS]
    losses = [k for k in numeric if "loss" in k.lower()]
    return losses or [k for k in numeric if k not in NON_PLOTTED]


def metric_keys(record: dict[str, Any]) -> list[str]:
    """The 0–1-axis keys of a metrics record: decoder validation summaries (:data:`SHOWN_METRICS`) and the
    pretraining ``eval:`` retrieval figures (:data:`EVAL_KEYS`)."""
    return [k for k in _numeric(record) if (k.startswith("val_") and k[4:] in SHOWN_METRICS) or k in EVAL_KEYS]


def series_name(record: dict[str, Any], key: str) -> str:
    """A decoder run trains one model per channel: its series are told apart by the record's channel."""
    channel = record.get("channel")
    return f"{channel} {key}" if isinstance(channel, str) and channel else key


@dataclass
class Series:
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


class RunsWidget(QWidget):
    """Table of runs + live loss plot; stop and resume act on the selected run through dinocell_core.runs.launch."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, poll_ms: int = 1000) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.status = JobStatus()
        self.folder: Path | None = None
        self.selected: Path | None = None
        self.tail: MetricsTail | None = None
        self.series: dict[str, Series] = {}
        self.rows: list[RunRow] = []
        self._states: dict[Path, str] = {}
        self._polling = False
        self._last_error: str | None = None
        self._lines: dict[str, Any] = {}

        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("runs folder (each sub-folder a run)")
        self.folder_edit.editingFinished.connect(lambda: self.set_folder(self.folder_edit.text()))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        top = QHBoxLayout()
        top.addWidget(self.folder_edit)
        top.addWidget(browse)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._selection_changed)

        self.stop_btn = QPushButton("Stop (checkpoint)")
        self.stop_btn.clicked.connect(self.stop_selected)
        self.resume_btn = QPushButton("Resume")
        self.resume_btn.clicked.connect(self.resume_selected)
        buttons = QHBoxLayout()
        buttons.addWidget(self.stop_btn)
        buttons.addWidget(self.resume_btn)

        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.ax = self.figure.add_subplot(111)
        self.ax_val = self.ax.twinx()  # validation metrics (0–1) on their own axis, never on the loss scale
        self._style_axes()
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(200)
        self.log_view.setPlaceholderText("error / log of the selected run")

        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addWidget(self.canvas, 3)
        lower_layout.addWidget(self.summary)
        lower_layout.addWidget(self.log_view, 1)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(lower)

        layout = scroll_layout(self)
        layout.addLayout(top)
        layout.addWidget(splitter)
        layout.addLayout(buttons)
        self._update_buttons()

        self.timer = QTimer(self)
        self.timer.setInterval(poll_ms)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        if remembered(SETTINGS_KEY) and Path(remembered(SETTINGS_KEY)).is_dir():
            self.set_folder(remembered(SETTINGS_KEY))

    # ---------------------------------------------------------------- folder and selection
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Runs folder", self.folder_edit.text())
        if folder:
            self.set_folder(folder)

    def set_folder(self, folder: str | Path) -> None:
        text = str(folder).strip()
        self.folder_edit.setText(text)
        new = Path(text).expanduser() if text else None
        if text:
            remember(SETTINGS_KEY, text)
        if new != self.folder:
            self.folder = new
            self.select_run(None)
        self.refresh()

    def select_run(self, path: Path | None) -> None:
        """Start tailing another run's metrics from the beginning (the plot is rebuilt once)."""
        if path == self.selected:
            return
        self.selected = path
        self.tail = MetricsTail(RunDir(path).metrics_path) if path is not None else None
        self.series.clear()
        self._lines.clear()
        self.ax.clear()
        self.ax_val.clear()
        self._style_axes()
        self.canvas.draw_idle()
        self.log_view.clear()
        self.summary.setText("")
        self._update_buttons()
        for r, row in enumerate(self.rows):
            if row.info.path == path:
                self.table.selectRow(r)

    def _selection_changed(self) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if rows:
            row = min(rows)
            if row < len(self.rows):
                self.select_run(self.rows[row].info.path)

    def selected_row(self) -> RunRow | None:
        return next((r for r in self.rows if r.info.path == self.selected), None)

    # ---------------------------------------------------------------- polling
    def refresh(self) -> None:
        """Start one background poll unless one is still running (slow disks never queue up polls)."""
        if self._polling or self.folder is None:
            return
        self._polling = True
        tail = self.tail

        def done(result: PollResult) -> None:
            if tail is self.tail:  # ignore a poll that belongs to a previously selected run
                self._apply(result)

        def finished() -> None:
            self._polling = False

        start_job(poll_runs, self.folder, tail, status=self.status, title="Runs refresh",
                  on_returned=done, on_finished=finished, show_progress=False)

    def _apply(self, result: PollResult) -> None:
        if result.error != self._last_error:
            self._last_error = result.error
            if result.error:
                show_error(result.error)
        self._fill_table(result.rows)
        if result.records:
            self._append_metrics(result.records)
        row = self.selected_row()
        if row is not None:
            self._show_details(row, result.log_tail, result.console_tail)
        self._update_buttons()

    def _notify_failures(self, rows: list[RunRow]) -> None:
        """A notification when a run seen running turns failed or lost (not for old failures in the folder)."""
        for row in rows:
            before = self._states.get(row.info.path)
            if before is not None and before != row.state and row.state in ("failed", "lost"):
                show_error(f"run {row.info.name} {row.state}: {row.info.error or 'the job process is gone'}")
            self._states[row.info.path] = row.state

    def _fill_table(self, rows: list[RunRow]) -> None:
        self._notify_failures(rows)
        self.rows = rows
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            info = row.info
            step = "" if info.step is None else f"{info.step}/{info.total_steps or '?'}"
            speed = "" if info.samples_per_s is None else f"{info.samples_per_s:.1f} img/s"
            ckpt = Path(info.last_checkpoint).name if info.last_checkpoint else ""
            for c, text in enumerate((info.name, info.kind or "", row.state, step, speed,
                                      format_eta(info.eta_s) if row.state == "running" else "", ckpt)):
                item = self.table.item(r, c)
                if item is None:
                    item = QTableWidgetItem()
                    self.table.setItem(r, c, item)
                item.setText(text)
            if info.path == self.selected:
                self.table.selectRow(r)
        self.table.blockSignals(False)

    def _append_metrics(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            step = rec.get("step")
            if not isinstance(step, (int, float)):
                continue
            on_val = metric_keys(rec)
            for key in plotted_keys(rec) + on_val:
                value = float(rec[key])
                if math.isfinite(value):
                    s = self.series.setdefault(series_name(rec, key), Series())
                    s.steps.append(float(step))
                    s.values.append(value)
                    self._axis_of.setdefault(series_name(rec, key), "val" if key in on_val else "loss")
        new_on: set[str] = set()
        for key, s in self.series.items():
            line = self._lines.get(key)
            if line is None:
                axis = self._axis_of.get(key, "loss")
                ax = self.ax_val if axis == "val" else self.ax
                style = {"marker": "o", "markersize": 3, "linestyle": "--"} if axis == "val" else {}
                (line,) = ax.plot(s.steps, s.values, label=key.replace("val_", ""), linewidth=1.2, **style)
                self._lines[key] = line
                new_on.add(axis)
            else:
                line.set_data(s.steps, s.values)
        for axis in new_on:
            ax = self.ax_val if axis == "val" else self.ax
            n = len(ax.get_lines())
            ax.legend(loc="center right" if axis == "val" else "upper right", fontsize=6, ncol=1 if n <= 4 else 2,
                      framealpha=0.6, facecolor="#262930", labelcolor="white",
                      title="validation" if axis == "val" else None, title_fontsize=6)
        self.ax_val.set_visible(bool(self.ax_val.get_lines()))
        self.ax.relim()
        self.ax.autoscale_view()
        self.canvas.draw_idle()

    def _show_details(self, row: RunRow, log_tail: str, console_tail: str = "") -> None:
        """Summary line and log; a failed run shows its error and the job's raw output (a crash before logging
        started, e.g. a config error, is only in console.log)."""
        info = row.info
        age = "" if info.updated_at is None else f", updated {time.time() - info.updated_at:.0f} s ago"
        self.summary.setText(f"{info.name}: {row.state} on {info.host or '?'} (pid {info.pid}){age}")
        if row.state in ("failed", "lost"):
            text = f"ERROR: {info.error or 'the job process is gone'}\n\n--- end of run.log ---\n{log_tail}"
            if console_tail:
                text += f"\n--- end of console.log ---\n{console_tail}"
        else:
            text = log_tail
        if text != self.log_view.toPlainText():
            self.log_view.setPlainText(text)
            self.log_view.verticalScrollBar().setValue(self.log_view.verticalScrollBar().maximum())

    def _style_axes(self) -> None:
        self._axis_of: dict[str, str] = {}
        self.ax.set_xlabel("step")
        self.ax.set_ylabel("loss")
        self.ax.grid(alpha=0.3)
        self.ax_val.yaxis.tick_right()  # clear() puts a twin axis's ticks and label back on the left
        self.ax_val.yaxis.set_label_position("right")
        self.ax_val.patch.set_visible(False)
        self.ax_val.set_ylabel("validation (0–1)")
        self.ax_val.set_ylim(0.0, 1.0)
        self.ax_val.set_visible(False)

    def _update_buttons(self) -> None:
        row = self.selected_row()
        state = row.state if row else None
        self.stop_btn.setEnabled(state in ("running", "queued"))
        self.resume_btn.setEnabled(state in ("stopped", "failed", "lost"))

    # ---------------------------------------------------------------- actions
    def stop_selected(self) -> None:
        if self.selected is None:
            return
        try:
            show_info(stop_run(self.selected))
        except LaunchError as exc:
            show_error(str(exc))

    def resume_selected(self) -> None:
        if self.selected is None:
            return
        try:
            launched = resume_run(self.selected)
            show_info(f"resumed {launched.run_dir.name}")
        except LaunchError as exc:
            show_error(str(exc))
        self.refresh()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        self.timer.stop()
        super().closeEvent(event)
