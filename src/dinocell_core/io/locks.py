"""Inter-process folder locks (``flock``; ``msvcrt`` on Windows): one writer per run directory or labels store,
and short exclusive sections around read-modify-write updates. Written here because the standard library has only
the primitives, and the holder's host/pid must reach the refusal message."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import WriteError

log = logging.getLogger(__name__)


class FolderLockedError(DinocellError, RuntimeError):
    """Another process holds a folder (the message names its host and pid)."""


_HELD: dict[Path, list[Any]] = {}  # resolved lock file → [open lock file, depth]: one process may re-enter


class FolderLock:
    """One writer per folder: an exclusive, non-blocking ``flock`` on ``FOLDER/<name>`` held while writing (a
    trainer holds its run directory for the whole run, ``jump label`` its labels store). The OS drops it when the
    holder dies (kill -9 included), so there are no stale locks to clear by hand; the file's content (host, pid)
    only names the holder in the refusal message. Re-entrant within one process."""

    error: type[Exception] = FolderLockedError

    def __init__(self, folder: str | os.PathLike[str], name: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name

    def busy_message(self, holder: dict[str, Any]) -> str:
        return (f"{self.folder} is in use by pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
                f"(lock {self.path})")

    def holder_note(self) -> dict[str, Any]:
        """What the lock file says about the holder besides host/pid/since (e.g. which job), for refusals."""
        return {}

    def _key(self) -> Path:
        return self.path.resolve()

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        key = self._key()
        if key in _HELD:
            _HELD[key][1] += 1
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:  # a read-only folder, a file where the folder should be, a full disk
            raise WriteError(f"{self.path}: cannot create the lock file ({exc.strerror or exc}); check that "
                             f"{self.folder} is a folder you may write") from None
        try:
            if not _try_lock(fh, self.path):
                holder = _read_holder(fh)
                fh.close()
                raise self.error(self.busy_message(holder))
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                                 **self.holder_note()}))
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

    def check_free(self) -> None:
        """Raise ``self.error`` naming the holder if another writer (or this process) holds the folder."""
        holder = self.probe()
        if holder is not None:
            raise self.error(self.busy_message(holder))


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
def exclusive(lock_path: Path) -> Iterator[None]:
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
            "%s: file locks are not supported here (%s); a second writer on this folder (another trainer, a Stop "
            "request, another labelling job) is not detected", lock_path.parent, exc)
