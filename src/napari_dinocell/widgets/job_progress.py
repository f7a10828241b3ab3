"""A job's progress inside its own dock: bar, "done/total · elapsed · ETA" and a Cancel button.

napari's own progress bars sit in the collapsed activity panel and cost a repaint of the whole window per update;
this view redraws one small bar, at most :data:`REPAINT_MS` apart whatever the rate of the (already throttled, see
:mod:`napari_dinocell.jobs.runner`) status updates, and never animates: an indeterminate ("busy") bar repaints
itself continuously, and with napari's OpenGL canvas in the same window every repaint recomposes the whole window
(on software OpenGL that GUI-thread work slowed a segmentation several-fold).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_dinocell.status import JobState, JobStatus, format_duration

#: least time between two repaints of the bar and its text while a job runs
REPAINT_MS = 400


class JobProgress(QWidget):
    """Shows one :class:`JobStatus`; Cancel calls ``on_cancel`` (hidden when the job cannot be cancelled)."""

    def __init__(self, status: JobStatus, on_cancel: Callable[[], None] | None = None, unit: str = "") -> None:
        super().__init__()
        self.status = status
        self.unit = unit
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.detail = QLabel("")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setVisible(on_cancel is not None)
        if on_cancel is not None:
            self.cancel_btn.clicked.connect(on_cancel)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.detail)
        self._timer = QTimer(self)  # coalesces progress counts into one repaint per REPAINT_MS
        self._timer.setSingleShot(True)
        self._timer.setInterval(REPAINT_MS)
        self._timer.timeout.connect(self._update)
        status.events.done.connect(self._counted)
        status.events.total.connect(self._counted)
        status.events.state.connect(self._update)  # start and end: at once
        self._update()

    def _counted(self, *_: Any) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _update(self, *_: Any) -> None:
        self._timer.stop()
        s = self.status
        busy = s.busy
        self.cancel_btn.setEnabled(busy)
        if s.total > 0:
            self.bar.setRange(0, s.total)
            self.bar.setValue(min(s.done, s.total))
        else:
            self.bar.setRange(0, 1)  # busy without a count yet: an empty bar (an indeterminate one animates)
            self.bar.setValue(0)
        if busy and s.total > 0:
            eta = format_duration(s.eta_s)
            unit = f" {self.unit}" if self.unit else ""
            self.detail.setText(f"{s.done}/{s.total}{unit} · {format_duration(s.elapsed_s)} elapsed"
                                + (f" · {eta} left" if eta else ""))
        elif not busy and s.state != JobState.IDLE:
            self.detail.setText(f"{s.state.value} after {format_duration(s.elapsed_s)}")
            if s.state == JobState.DONE:
                self.bar.setRange(0, 1)
                self.bar.setValue(1)
        else:
            self.detail.setText("")

    @property
    def detail_text(self) -> str:
        if self._timer.isActive():  # a count not shown yet
            self._update()
        return self.detail.text()
