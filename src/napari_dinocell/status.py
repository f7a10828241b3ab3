"""A small observable status per background job (the CAREamics plugin shape).

Jobs update it from the GUI thread (worker signals are delivered there); widgets connect to its events to
enable/disable buttons and show progress, so the job code never touches a widget.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from psygnal import evented


class JobState(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@evented
@dataclass
class JobStatus:
    """State, progress and last message of one job; ``events.<field>`` fire on every change."""

    state: JobState = JobState.IDLE
    done: int = 0
    total: int = 0
    message: str = ""

    @property
    def busy(self) -> bool:
        return self.state == JobState.RUNNING

    def start(self, message: str = "") -> None:
        self.done, self.total, self.message = 0, 0, message
        self.state = JobState.RUNNING

    def progress(self, done: int, total: int, message: str | None = None) -> None:
        self.total, self.done = int(total), int(done)
        if message is not None:
            self.message = message

    def finish(self, message: str = "done") -> None:
        self.message = message
        self.state = JobState.DONE

    def fail(self, message: str) -> None:
        self.message = message
        self.state = JobState.FAILED

    def cancel(self, message: str = "cancelled") -> None:
        self.message = message
        self.state = JobState.CANCELLED
