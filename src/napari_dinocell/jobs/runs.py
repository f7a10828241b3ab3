"""One background read of run directories: every watched folder's runs, and what is new in each followed run.

Metrics are tailed with :class:`~dinocell_core.runs.rundir.MetricsTail`, so a poll reads only the bytes appended
since the previous one, even for a 48 h run. Each run's status.json is read once per poll, by
:func:`~dinocell_core.runs.rundir.list_runs`, whose ``RunInfo.state`` is already the state to show.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinocell_core.runs.rundir import MetricsTail, RunDir, RunInfo, list_runs

LOG_TAIL_BYTES = 4096


@dataclass
class RunDetails:
    """What is new in one followed run: metrics records appended since the last poll, and the ends of its logs."""

    records: list[dict[str, Any]]
    log_tail: str
    console_tail: str


@dataclass
class RunPoll:
    """One poll: each watched folder's runs (newest first) or why it could not be read, and each followed run's
    details (keyed by its metrics tail)."""

    runs: dict[Path, list[RunInfo]] = field(default_factory=dict)
    errors: dict[Path, str] = field(default_factory=dict)
    details: dict[MetricsTail, RunDetails] = field(default_factory=dict)

    def run(self, path: Path) -> RunInfo | None:
        """The run at ``path`` as a watched folder listed it (None if none did)."""
        return next((info for infos in self.runs.values() for info in infos if info.path == path), None)


def run_ended(info: RunInfo) -> tuple[str, str, str, float]:
    """The key of one run's end as a poll read it: every dock that sees the same end reports it once
    (:mod:`napari_dinocell.notify`)."""
    return ("run ended", str(info.path), info.state, float(info.updated_at or 0.0))


def read_tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    """The last ``size`` bytes of a text file ("" if it is not there)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - size))
        return fh.read().decode("utf-8", errors="replace")


def poll_runs(folders: Iterable[Path], tails: Iterable[MetricsTail]) -> RunPoll:
    """List each folder's runs (a folder that is a run an outer folder listed already is not read again), then read
    each tail's new metrics records and the end of its run's logs."""
    poll = RunPoll()
    for folder in sorted(set(folders), key=lambda p: len(p.parts)):
        known = poll.run(folder)
        if known is not None:
            poll.runs[folder] = [known]
            continue
        try:
            poll.runs[folder] = list_runs(folder)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            poll.errors[folder] = f"cannot read runs folder: {exc}"
    for tail in tails:
        run = RunDir(tail.path.parent)
        poll.details[tail] = RunDetails(tail.read_new(), read_tail(run.log_path), read_tail(run.console_path))
    return poll
