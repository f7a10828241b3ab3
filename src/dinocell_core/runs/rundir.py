"""The run directory: the single contract between the trainers, the CLI and the napari plugin.

Layout::

    RUN/config.yaml        resolved config (defaults included)
    RUN/metrics.jsonl      one JSON object per logged step, append-only
    RUN/status.json        state, pid, host, step/total, last checkpoint, error (atomic rewrites)
    RUN/run.log            the job's log (written by the trainer's logging only)
    RUN/console.log        raw stdout/stderr of a launched job (progress bars, tracebacks before logging starts)
    RUN/checkpoints/       step_XXXXXXXX.safetensors (see checkpoint.py)
    RUN/.run.lock          held (OS lock) by the one trainer writing this run; holds its host and pid

Readers never need the writer's process: a plugin on a laptop can watch a run written by a GPU server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dinocell_core.config import save_config
from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_write_json

log = logging.getLogger(__name__)

STATES = ("running", "finished", "failed", "stopped")
LOCK_NAME = ".run.lock"


class RunLockedError(DinocellError, RuntimeError):
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

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def create(self) -> None:
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)

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
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown run state {fields['state']!r}; expected one of {STATES}")
        self.path.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.path / ".status.lock"):  # the trainer and a Stop from napari may write at once
            status = self.read_status()
            status.update(fields)
            status["updated_at"] = time.time()
            status.setdefault("host", socket.gethostname())
            status.setdefault("pid", os.getpid())
            atomic_write_json(self.status_path, status)
        return status


_HELD: dict[Path, list[Any]] = {}  # resolved run path → [open lock file, depth]: one process may re-enter


class RunLock:
    """One writer per run directory: an exclusive, non-blocking ``flock`` on ``RUN/.run.lock`` held for the whole
    run. The OS drops it when the holder dies (kill -9 included), so there are no stale locks to clear by hand; the
    file's content (host, pid) only names the holder in the refusal message. Re-entrant within one process (the
    CLI takes it before opening run.log, the trainer again inside)."""

    def __init__(self, run_path: str | os.PathLike[str]) -> None:
        self.run_path = Path(run_path)
        self.path = self.run_path / LOCK_NAME

    def _key(self) -> Path:
        return self.run_path.resolve()

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        key = self._key()
        if key in _HELD:
            _HELD[key][1] += 1
            return
        self.run_path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            if not _try_lock(fh, self.path):
                holder = _read_holder(fh)
                fh.close()
                raise RunLockedError(_busy_message(self.run_path, holder))
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}))
            fh.flush()
        except BaseException:
            if not fh.closed:
                fh.close()
            raise
        _HELD[key] = [fh, 1]

    def release(self) -> None:
        key = self._key()
        entry = _HELD.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[key]
            entry[0].close()  # closing the descriptor releases the flock

    def probe(self) -> dict[str, Any] | None:
        """The holder's host/pid if the lock is held (by anyone, this process included), else None."""
        if self._key() in _HELD:
            return {"host": socket.gethostname(), "pid": os.getpid()}
        if not self.path.is_file():
            return None
        with open(self.path, "a+", encoding="utf-8") as fh:
            if _try_lock(fh, self.path):
                _unlock(fh)
                return None
            return _read_holder(fh)


def _busy_message(run_path: Path, holder: dict[str, Any]) -> str:
    return (f"run {run_path} is in use by pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(lock {run_path / LOCK_NAME}); stop that job first, or use another run directory")


def check_run_free(run_path: str | os.PathLike[str]) -> None:
    """Raise :class:`RunLockedError` naming the holder if a trainer holds ``run_path``."""
    holder = RunLock(run_path).probe()
    if holder is not None:
        raise RunLockedError(_busy_message(Path(run_path), holder))


def _read_holder(fh: Any) -> dict[str, Any]:
    try:
        fh.seek(0)
        data = json.loads(fh.read() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _try_lock(fh: Any, path: Path) -> bool:
    """Non-blocking exclusive lock; True if taken. A file system without locks (Lustre without -o flock) warns
    once and counts as taken: refusing every run there would be worse than the old behaviour."""
    if os.name == "nt":
        import msvcrt

        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import errno
    import fcntl

    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        _warn_no_lock(path, exc)
        return True


def _unlock(fh: Any) -> None:
    if os.name == "nt":
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Inter-process lock around a read-modify-write; the OS drops it if the holder dies (no stale locks)."""
    with open(lock_path, "a+b") as fh:
        if os.name == "nt":
            import msvcrt

            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            try:
                fcntl.flock(fh, fcntl.LOCK_EX)
                locked = True
            except OSError as exc:  # e.g. Lustre mounted without -o flock: do not kill a long run over it
                _warn_no_lock(lock_path, exc)
                locked = False
            try:
                yield
            finally:
                if locked:
                    fcntl.flock(fh, fcntl.LOCK_UN)


_WARNED_NO_LOCK: set[Path] = set()


def _warn_no_lock(lock_path: Path, exc: OSError) -> None:
    if lock_path.parent not in _WARNED_NO_LOCK:
        _WARNED_NO_LOCK.add(lock_path.parent)
        log.warning(
            "%s: file locks are not supported here (%s); a second writer on this run directory (another trainer, "
            "a Stop request) is not detected", lock_path.parent, exc)


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
    path: Path
    kind: str | None
    state: str | None
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
        state=status.get("state"),
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
