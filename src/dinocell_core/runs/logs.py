"""One logging setup for every job: console on rank 0, a log file per run, rank-tagged lines under torchrun."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s [%(name)s]%(rank)s %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank_tag = f" [rank {rank}]" if rank else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank_tag
        return True


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream of the setup call: a job run
    in-process (a test's captured stderr, a redirect) must not leave a handler on a stream that is closed since."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ / setStream: the stream is always the current one
        pass


def setup_logging(log_path: str | Path | None = None, rank: int = 0, level: int = logging.INFO) -> None:
    """Log to stderr (rank 0 only, so torchrun output stays readable) and append to ``log_path`` if given."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_dinocell", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    handlers: list[logging.Handler] = []
    if rank == 0:
        handlers.append(_CurrentStderr())
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, encoding="utf-8"))
    for handler in handlers:
        handler._dinocell = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.addFilter(_RankFilter(rank))
        root.addHandler(handler)
