"""Atomic file writes: a crash or kill never leaves a half-written config, status or checkpoint behind.

Files get the permissions the user's umask gives a normal ``open()`` (``mkstemp`` alone makes them 0600, so a
colleague's napari on a shared cluster could not read a run, its models or the index cache).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dinocell_core.errors import DinocellError

_UMASK_LOCK = threading.Lock()


def default_file_mode() -> int:
    """0o666 minus the process umask (read without changing it for longer than two calls under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


class WriteError(DinocellError, OSError):
    """A file could not be written (disk full, read-only folder, quota): the message names the file."""


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed onto ``path``.

    Any OS error while writing (ENOSPC, EROFS, EACCES, EDQUOT...) becomes a :class:`WriteError` naming ``path``."""
    target = Path(path)
    tmp_path: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.chmod(tmp, default_file_mode())
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except WriteError:
        raise
    except OSError as exc:
        err = WriteError(f"{target}: cannot write ({exc.strerror or exc}); check the free space and write "
                         "permission there")
        err.errno = exc.errno
        raise err from exc
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
