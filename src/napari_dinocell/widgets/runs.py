"""Runs widget: every run in a folder with its state and speed, and a live plot of the selected run's losses.

A 1 s timer starts one background poll at a time (folder scan + new metrics lines + log tail); the GUI thread
only redraws. Metrics are tailed with :class:`MetricsTail`, so each poll reads only the bytes appended since the
previous one, even for a 48 h run.
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

from dinocell_core.runs.launch import LaunchError, effective_state, resume_run, stop_run
from dinocell_core.runs.rundir import MetricsTail, RunDir, RunInfo, list_runs
from napari_dinocell.jobs import start_job
from napari_dinocell.status import JobStatus

if TYPE_CHECKING:
    import napari

COLUMNS = ("Run", "Kind", "State", "Step", "Throughput", "ETA", "Last checkpoint")
NON_PLOTTED = {"step", "time", "epoch", "elapsed_s", "timestamp", "wall_time"}
EVAL_KEYS = ("eval_fraction_retrieved", "eval_mean_map")  # the pretraining eval: benchmark, on a 0–1 right axis
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


def plotted_keys(record: dict[str, Any]) -> list[str]:
    """Every loss term of a metrics record (keys containing "loss"), else every other numeric value; plus the
    ``eval:`` benchmark values when the record has them."""
    numeric = [k for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    losses = [k for k in numeric if "loss" in k.lower()]
    evals = [k for k in EVAL_KEYS if k in numeric]
    return (losses + evals) if losses else [k for k in numeric if k not in NON_PLOTTED]


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
        self.ax_eval: Any = None
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

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(splitter)
        layout.addLayout(buttons)
        self._update_buttons()

        self.timer = QTimer(self)
        self.timer.setInterval(poll_ms)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()

    # ---------------------------------------------------------------- folder and selection
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Runs folder", self.folder_edit.text())
        if folder:
            self.set_folder(folder)

    def set_folder(self, folder: str | Path) -> None:
        text = str(folder).strip()
        self.folder_edit.setText(text)
        new = Path(text).expanduser() if text else None
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
        if self.ax_eval is not None:
            self.ax_eval.remove()
            self.ax_eval = None
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

    def _fill_table(self, rows: list[RunRow]) -> None:
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
            for key in plotted_keys(rec):
                value = float(rec[key])
                if math.isfinite(value):
                    s = self.series.setdefault(key, Series())
                    s.steps.append(float(step))
                    s.values.append(value)
        for key, s in self.series.items():
            line = self._lines.get(key)
            if line is None:
                ax = self._eval_axes() if key in EVAL_KEYS else self.ax
                (line,) = ax.plot(s.steps, s.values, label=key, linewidth=1.2,
                                  marker="o" if key in EVAL_KEYS else None, markersize=3)
                self._lines[key] = line
                ax.legend(loc="upper left" if key in EVAL_KEYS else "upper right", fontsize=7,
                          facecolor="#262930", labelcolor="white")
            else:
                line.set_data(s.steps, s.values)
        self.ax.relim()
        self.ax.autoscale_view()
        if self.ax_eval is not None:
            self.ax_eval.relim()
            self.ax_eval.autoscale_view(scaley=False)
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

    def _eval_axes(self) -> Any:
        """Right-hand axis for the eval: mAP and fraction retrieved (0–1), created with the first eval point."""
        if self.ax_eval is None:
            self.ax_eval = self.ax.twinx()
            self.ax_eval.set_ylim(0, 1)
            self.ax_eval.set_ylabel("eval mAP / fraction retrieved")
        return self.ax_eval

    def _style_axes(self) -> None:
        self.ax.set_xlabel("step")
        self.ax.set_ylabel("loss")
        self.ax.grid(alpha=0.3)

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
