"""A job's progress inside its own dock: bar, "done/total · elapsed · ETA" and a Cancel button.

napari's own progress bars sit in the collapsed activity panel and cost a repaint of the whole window per update;
this view redraws one small bar, only on the (throttled, see :mod:`napari_dinocell.jobs.runner`) status updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_dinocell.status import JobState, JobStatus, format_duration


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
        status.events.done.connect(self._update)
        status.events.total.connect(self._update)
        status.events.state.connect(self._update)
        self._update()

    def _update(self, *_: Any) -> None:
        s = self.status
        busy = s.busy
        self.cancel_btn.setEnabled(busy)
        if s.total > 0:
            self.bar.setRange(0, s.total)
            self.bar.setValue(min(s.done, s.total))
        else:
            self.bar.setRange(0, 0 if busy else 1)  # busy without a count: an indeterminate bar
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
        return self.detail.text()
