"""The run directory: the single contract between the trainers, the CLI and the napari plugin.

Layout::

    RUN/config.yaml        resolved config (defaults included)
    RUN/metrics.jsonl      one JSON object per logged step, append-only
    RUN/status.json        state, pid, host, step/total, last checkpoint, error (atomic rewrites)
    RUN/run.log            the job's log (written by the trainer's logging only)
    RUN/console.log        raw stdout/stderr of a launched job (progress bars, tracebacks before logging starts)
    RUN/checkpoints/       step_XXXXXXXX.safetensors (see checkpoint.py)
    RUN/.run.lock          held (OS lock) by the one trainer writing this run; holds its host and pid
    RUN/config_history.jsonl  config changes a resume was explicitly allowed (--allow-config-change)

Readers never need the writer's process: a plugin on a laptop can watch a run written by a GPU server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dinocell_core.config import save_config
from dinocell_core.io.fsutil import WriteError, atomic_write_json
from dinocell_core.io.locks import FolderLock, FolderLockedError, exclusive
from dinocell_core.runs.records import effective_state

log = logging.getLogger(__name__)

STATES = ("running", "finished", "failed", "stopped")
LOCK_NAME = ".run.lock"


class RunLockedError(FolderLockedError):
    """Another process holds a run directory (the message names its host and pid)."""


class RunDir:
    """Paths and atomic writers of one run directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.status_path = self.path / "status.json"
        self.log_path = self.path / "run.log"
        self.console_path = self.path / "console.log"
        self.checkpoints_dir = self.path / "checkpoints"
        self.config_history_path = self.path / "config_history.jsonl"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def create(self) -> None:
        self.ensure()
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)

    def ensure(self) -> None:
        """Create the run folder; a file in its place or an unwritable parent is a one-line WriteError naming it
        (``--run-dir`` pointing at an existing file was a FileExistsError traceback)."""
        if self.path.exists() and not self.path.is_dir():
            raise WriteError(f"{self.path}: is a file, not a run directory; choose another --run-dir")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"{self.path}: cannot create the run directory ({exc.strerror or exc}); check the "
                             "write permission there") from None

    def resume_config(self, checkpoint: Path) -> tuple[dict[str, Any], Path]:
        """The config a resume must match, and where it came from: the one stored in ``checkpoint`` (what its
        weights were trained with — config.yaml is a copy anyone can edit), else config.yaml for a checkpoint
        that stores none."""
        from dinocell_core.config import read_yaml
        from dinocell_core.io.checkpoint import CheckpointError, read_state_config

        try:
            return read_state_config(checkpoint), checkpoint
        except CheckpointError:
            if not self.exists():
                raise
        return read_yaml(self.config_path), self.config_path

    def record_config_changes(self, changes: Mapping[str, list[Any]], checkpoint: Path) -> None:
        """A resume that the user let change the config (``--allow-config-change``): one line in
        config_history.jsonl (time, checkpoint, every key's old and new value) and the keys in status.json."""
        entry = {"time": time.time(), "checkpoint": str(checkpoint), "allowed_by": "--allow-config-change",
                 "changes": dict(changes)}
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.config_history_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=_json_default) + "\n")
        self.update_status(config_changes={"checkpoint": str(checkpoint), "keys": sorted(changes),
                                           "history": str(self.config_history_path)})

    def write_config(self, cfg: BaseModel) -> None:
        self.create()
        save_config(cfg, self.config_path)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one line; a single write() of a complete line keeps concurrent readers consistent."""
        line = json.dumps(record, default=_json_default, allow_nan=True) + "\n"
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()

    def truncate_metrics_after(self, step: int) -> None:
        """Drop records logged after ``step`` (a resumed run re-logs them, so the file has no duplicates)."""
        if not self.metrics_path.exists():
            return
        kept = [r for r in read_metrics(self.metrics_path) if int(r.get("step", -1)) <= step]
        from dinocell_core.io.fsutil import atomic_write_text

        atomic_write_text(self.metrics_path, "".join(json.dumps(r, default=_json_default) + "\n" for r in kept))

    def lock(self) -> "RunLock":
        """The run's writer lock (see :class:`RunLock`); ``with run.lock():`` around a whole training run."""
        return RunLock(self.path)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the writer lock now (host, pid, since), or None when nobody does (a killed holder's lock is
        released by the OS, so a stale lock file reads as free)."""
        return RunLock(self.path).probe()

    def remove_orphan_temp_files(self) -> list[Path]:
        """Delete temp files a killed writer left behind (a checkpoint's is as big as the checkpoint). Only the
        lock holder may call this: another writer's temp file could be in flight."""
        removed = []
        for folder, pattern in ((self.checkpoints_dir, ".*.tmp"), (self.path, ".metrics.jsonl.*.tmp"),
                                (self.path, ".config.yaml.*.tmp")):
            if folder.is_dir():
                for p in folder.glob(pattern):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                        removed.append(p)
        if removed:
            log.info("removed %d temp file(s) left by a killed writer: %s", len(removed),
                     ", ".join(p.name for p in removed[:5]))
        return removed

    def read_status(self) -> dict[str, Any]:
        if not self.status_path.exists():
            return {}
        try:
            return json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def update_status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into status.json atomically; ``host``/``pid`` default to this process."""
        status = self.update_status_if({}, **fields)
        assert status is not None
        return status

    def update_status_if(self, expected: Mapping[str, Any], **fields: Any) -> dict[str, Any] | None:
        """:meth:`update_status` only while status.json still holds ``expected`` (checked and written under the
        status lock, so no other writer comes in between); None, and nothing written, when it does not — e.g. a
        launcher recording how *its* process ended after the run was relaunched by someone else."""
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown run state {fields['state']!r}; expected one of {STATES}")
        self.path.mkdir(parents=True, exist_ok=True)
        with exclusive(self.path / ".status.lock"):  # the trainer and a Stop from napari may write at once
            status = self.read_status()
            if any(status.get(key) != value for key, value in expected.items()):
                return None
            status.update(fields)
            status["updated_at"] = time.time()
            status.setdefault("host", socket.gethostname())
            status.setdefault("pid", os.getpid())
            atomic_write_json(self.status_path, status)
        return status


class RunLock(FolderLock):
    """One writer per run directory: ``RUN/.run.lock`` held for the whole run (see :class:`FolderLock`). Re-entrant
    within one process (the CLI takes it before opening run.log, the trainer again inside)."""

    error = RunLockedError

    def __init__(self, run_path: str | os.PathLike[str]) -> None:
        super().__init__(run_path, LOCK_NAME)
        self.run_path = self.folder

    def busy_message(self, holder: dict[str, Any]) -> str:
        return (f"run {self.run_path} is in use by pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
                f"(lock {self.path}); stop that job first, or use another run directory")


def check_run_free(run_path: str | os.PathLike[str]) -> None:
    """Raise :class:`RunLockedError` naming the holder if a trainer holds ``run_path``."""
    RunLock(run_path).check_free()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read every complete record (a torn last line from a killed writer is ignored)."""
    return MetricsTail(path).read_new()


class MetricsTail:
    """Incremental reader of metrics.jsonl: each call returns only records appended since the last call."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0
        self._inode: int | None = None

    def read_new(self) -> list[dict[str, Any]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        if self._inode is not None and (st.st_ino != self._inode or st.st_size < self.offset):
            self.offset = 0  # file was rewritten (resume truncation): start over
        self._inode = st.st_ino
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(st.st_size - self.offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        records = []
        for raw in chunk[: end + 1].splitlines():
            if raw.strip():
                try:
                    records.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue
        return records


@dataclass
class RunInfo:
    """One run as a list shows it; ``state`` is the effective state (a dead local process reads "lost")."""

    path: Path
    kind: str | None
    state: str
    step: int | None
    total_steps: int | None
    samples_per_s: float | None
    eta_s: float | None
    last_checkpoint: str | None
    error: str | None
    updated_at: float | None
    pid: int | None
    host: str | None

    @property
    def name(self) -> str:
        return self.path.name


def run_info(path: str | os.PathLike[str]) -> RunInfo:
    status = RunDir(path).read_status()
    return RunInfo(
        path=Path(path),
        kind=status.get("kind"),
        state=effective_state(status),
        step=status.get("step"),
        total_steps=status.get("total_steps"),
        samples_per_s=status.get("samples_per_s"),
        eta_s=status.get("eta_s"),
        last_checkpoint=status.get("last_checkpoint"),
        error=status.get("error"),
        updated_at=status.get("updated_at"),
        pid=status.get("pid"),
        host=status.get("host"),
    )


def list_runs(folder: str | os.PathLike[str]) -> list[RunInfo]:
    """Runs directly inside ``folder`` (or ``folder`` itself if it is a run), newest first."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {root} does not exist")
    candidates = [root] if RunDir(root).exists() else sorted(p for p in root.iterdir() if p.is_dir())
    runs = [run_info(p) for p in candidates if RunDir(p).exists()]
    runs.sort(key=lambda r: r.updated_at or 0.0, reverse=True)
    return runs
