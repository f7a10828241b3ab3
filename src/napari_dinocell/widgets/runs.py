"""Runs widget: every run in a folder with its state and speed, and a live plot of the selected run's metrics.

The folder and the selected run are polled by the application's one
:class:`~napari_dinocell.jobs.run_watcher.RunWatcher` (off the GUI thread); the GUI thread only redraws. A run that
turns failed or lost raises a notification.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
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
from dinocell_core.runs.rundir import MetricsTail, RunDir, RunInfo
from napari_dinocell.jobs.gc_pauses import watch as watch_gc_pauses
from napari_dinocell.jobs.run_watcher import shared_watcher
from napari_dinocell.jobs.runs import RunDetails, RunPoll, run_ended
from napari_dinocell.notify import show_error, show_info
from napari_dinocell.widgets.common import remember, remembered, scroll_layout
from napari_dinocell.widgets.run_plot import RunPlot

if TYPE_CHECKING:
    import napari

COLUMNS = ("Run", "Kind", "State", "Step", "Throughput", "ETA", "Last checkpoint")
SETTINGS_KEY = "runs/folder"


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class RunsWidget(QWidget):
    """Table of runs + live plot; stop and resume act on the selected run through dinocell_core.runs.launch."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        watch_gc_pauses(napari_viewer, self)
        self.watcher = shared_watcher()
        self.folder: Path | None = None
        self.selected: Path | None = None
        self.tail: MetricsTail | None = None
        self.rows: list[RunInfo] = []
        self._states: dict[Path, str] = {}
        self._last_error: str | None = None

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

        self.plot = RunPlot()
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(200)
        self.log_view.setPlaceholderText("error / log of the selected run")

        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addWidget(self.plot, 3)
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
        self._watch()
        self.refresh()

    def select_run(self, path: Path | None) -> None:
        """Start tailing another run's metrics from the beginning (the plot is rebuilt once)."""
        if path == self.selected:
            return
        self.selected = path
        self.tail = MetricsTail(RunDir(path).metrics_path) if path is not None else None
        self.plot.clear()
        self.log_view.clear()
        self.summary.setText("")
        self._update_buttons()
        self._watch()
        for r, info in enumerate(self.rows):
            if info.path == path:
                self.table.selectRow(r)

    def _selection_changed(self) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if rows:
            row = min(rows)
            if row < len(self.rows):
                self.select_run(self.rows[row].path)

    def selected_row(self) -> RunInfo | None:
        return next((r for r in self.rows if r.path == self.selected), None)

    # ---------------------------------------------------------------- polling
    def _watch(self) -> None:
        if self.folder is None:
            self.watcher.unwatch(self)
        else:
            self.watcher.watch(self, self.folder, self.tail)

    def refresh(self) -> None:
        """Poll now (the watcher skips it while a poll is still running: slow disks never queue polls up)."""
        self.watcher.poll()

    def runs_polled(self, poll: RunPoll) -> None:
        if self.folder is None:
            return
        error = poll.errors.get(self.folder)
        if error != self._last_error:
            self._last_error = error
            if error:
                show_error(error)
        self._fill_table(poll.runs.get(self.folder, []))
        details = poll.details.get(self.tail) if self.tail is not None else None
        if details is not None:
            if details.records:
                self.plot.append(details.records)
            row = self.selected_row()
            if row is not None:
                self._show_details(row, details)
        self._update_buttons()

    def _notify_failures(self, rows: list[RunInfo]) -> None:
        """A notification when a run seen running turns failed or lost (not for old failures in the folder)."""
        for info in rows:
            before = self._states.get(info.path)
            if before is not None and before != info.state and info.state in ("failed", "lost"):
                show_error(f"run {info.name} {info.state}: {info.error or 'the job process is gone'}",
                           event=run_ended(info))
            self._states[info.path] = info.state

    def _fill_table(self, rows: list[RunInfo]) -> None:
        self._notify_failures(rows)
        self.rows = rows
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        for r, info in enumerate(rows):
            step = "" if info.step is None else f"{info.step}/{info.total_steps or '?'}"
            speed = "" if info.samples_per_s is None else f"{info.samples_per_s:.1f} img/s"
            ckpt = Path(info.last_checkpoint).name if info.last_checkpoint else ""
            for c, text in enumerate((info.name, info.kind or "", info.state, step, speed,
                                      format_eta(info.eta_s) if info.state == "running" else "", ckpt)):
                item = self.table.item(r, c)
                if item is None:
                    item = QTableWidgetItem()
                    self.table.setItem(r, c, item)
                item.setText(text)
            if info.path == self.selected:
                self.table.selectRow(r)
        self.table.blockSignals(False)

    def _show_details(self, info: RunInfo, details: RunDetails) -> None:
        """Summary line and log; a failed run shows its error and the job's raw output (a crash before logging
        started, e.g. a config error, is only in console.log)."""
        age = "" if info.updated_at is None else f", updated {time.time() - info.updated_at:.0f} s ago"
        self.summary.setText(f"{info.name}: {info.state} on {info.host or '?'} (pid {info.pid}){age}")
        if info.state in ("failed", "lost"):
            text = f"ERROR: {info.error or 'the job process is gone'}\n\n--- end of run.log ---\n{details.log_tail}"
            if details.console_tail:
                text += f"\n--- end of console.log ---\n{details.console_tail}"
        else:
            text = details.log_tail
        if text != self.log_view.toPlainText():
            self.log_view.setPlainText(text)
            self.log_view.verticalScrollBar().setValue(self.log_view.verticalScrollBar().maximum())

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
        self.watcher.unwatch(self)
        super().closeEvent(event)
