"""Clean stops for long jobs: SIGTERM/SIGINT (Ctrl-C, the napari Stop button, Slurm pre-emption) set a flag that
the training loop checks after each step, so it can checkpoint and end in state "stopped" instead of dying."""

from __future__ import annotations

import logging
import signal
from typing import Any

log = logging.getLogger(__name__)


class StopRequest:
    """Context manager installing the handlers; ``requested`` turns True on the first signal."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a napari worker): the caller stops the job another way
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("signal %d received: checkpointing after this step and stopping", signum)
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
