"""A small observable status per background job (the CAREamics plugin shape).

Jobs update it from the GUI thread (worker signals are delivered there); widgets connect to its events to
enable/disable buttons and show progress, so the job code never touches a widget.
"""

from __future__ import annotations

import math
import time
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
    started_at: float = 0.0  # time.monotonic() at start
    ended_at: float = 0.0  # time.monotonic() at the final state (0 while running)

    @property
    def busy(self) -> bool:
        return self.state == JobState.RUNNING

    @property
    def elapsed_s(self) -> float:
        if not self.started_at:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.started_at

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the average speed so far (None before the first progress count)."""
        if not self.busy or self.done <= 0 or self.total <= 0:
            return None
        return self.elapsed_s * (self.total - self.done) / self.done

    def start(self, message: str = "") -> None:
        self.done, self.total, self.message = 0, 0, message
        self.started_at, self.ended_at = time.monotonic(), 0.0
        self.state = JobState.RUNNING

    def progress(self, done: int, total: int, message: str | None = None) -> None:
        self.total, self.done = int(total), int(done)
        if message is not None:
            self.message = message

    def finish(self, message: str = "done") -> None:
        self.message = message
        self.ended_at = time.monotonic()
        self.state = JobState.DONE

    def fail(self, message: str) -> None:
        self.message = message
        self.ended_at = time.monotonic()
        self.state = JobState.FAILED

    def cancel(self, message: str = "cancelled") -> None:
        self.message = message
        self.ended_at = time.monotonic()
        self.state = JobState.CANCELLED


def format_duration(seconds: float | None) -> str:
    """``1:02:05`` / ``3:07``; "" for unknown."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = int(max(0, round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
