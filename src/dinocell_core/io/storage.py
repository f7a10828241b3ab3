"""Anonymous S3 reads (``s3://cellpainting-gallery/...``) with a bounded on-disk LRU cache.

The filesystem client is created lazily in each process and never pickled: DataLoader workers fork/spawn with
the settings only (an earlier loader pickled a boto3 client from the parent into its workers). Cached files are
written atomically (temp + rename) and evicted least-recently-used by bytes, so several workers can share one
cache folder; a file evicted by another worker between lookup and read is simply downloaded again.

Every request has a connect and a read timeout and a bounded number of attempts, so an endpoint that accepts
connections and never answers (or a wrong ``--endpoint-url``) ends in one :class:`StorageError` naming the URL and
endpoint within ``attempts × timeout`` seconds, instead of hanging for minutes and then reporting an empty bucket.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dinocell_core.errors import DinocellError

log = logging.getLogger(__name__)

ENDPOINT_ENV = "DINOCELL_S3_ENDPOINT_URL"
TIMEOUT_ENV = "DINOCELL_S3_TIMEOUT_S"  # seconds per connect / read (default 20)
ATTEMPTS_ENV = "DINOCELL_S3_ATTEMPTS"  # tries per request (default 4)


class StorageError(DinocellError, OSError):
    """Remote storage could not be reached or answered with an error (the message names URL and endpoint)."""


def _env_number(name: str, default: float, kind: type = float) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise StorageError(f"environment variable {name}={raw!r} is not a number") from None
    if value <= 0:
        raise StorageError(f"environment variable {name}={raw!r} must be > 0")
    return value


class S3Storage:
    """Reads objects by ``s3://bucket/key`` URL; ``endpoint_url`` points at a mirror or a test server."""

    def __init__(self, endpoint_url: str | None = None, anon: bool = True, cache_dir: str | os.PathLike[str] |
                 None = None, cache_bytes: int = 0, timeout_s: float | None = None,
                 attempts: int | None = None) -> None:
        self.endpoint_url = endpoint_url if endpoint_url is not None else os.environ.get(ENDPOINT_ENV) or None
        self.timeout_s = float(timeout_s) if timeout_s is not None else _env_number(TIMEOUT_ENV, 20.0)
        self.attempts = int(attempts) if attempts is not None else _env_number(ATTEMPTS_ENV, 4, int)
        self.anon = anon
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_bytes = int(cache_bytes)
        self._fs: Any = None
        self._pid: int | None = None
        self._added = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fs"] = None
        state["_pid"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def fs(self) -> Any:
        """The s3fs filesystem of this process (rebuilt after fork/spawn)."""
        if self._fs is None or self._pid != os.getpid():
            import s3fs

            kwargs: dict[str, Any] = {}
            if self.endpoint_url:
                kwargs["endpoint_url"] = self.endpoint_url
            # botocore tries once per call; s3fs retries timeouts/connection errors (with backoff) up to attempts
            config = {"connect_timeout": self.timeout_s, "read_timeout": self.timeout_s,
                      "retries": {"max_attempts": 1, "mode": "standard"}}
            self._fs = s3fs.S3FileSystem(anon=self.anon, client_kwargs=kwargs, config_kwargs=config,
                                         skip_instance_cache=True, use_listings_cache=False)
            self._fs.retries = self.attempts
            self._pid = os.getpid()
        return self._fs

    # ------------------------------------------------------------------------------------------------ reading
    def _cache_file(self, url: str) -> Path:
        assert self.cache_dir is not None
        digest = hashlib.sha1(url.encode()).hexdigest()
        return self.cache_dir / digest[:2] / (digest + os.path.splitext(url)[1])

    def read_bytes(self, url: str) -> bytes:
        """Object bytes, from the cache when present (its mtime is bumped so LRU eviction keeps it)."""
        if self.cache_dir is None or self.cache_bytes <= 0:
            return self._download(url)
        path = self._cache_file(url)
        try:
            data = path.read_bytes()
            try:
                os.utime(path)
            except OSError:
                pass
            return data
        except FileNotFoundError:
            pass
        data = self._download(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dl.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._added += len(data)
        if self._added > max(self.cache_bytes // 20, 1) or self._added == len(data):
            self.evict()
        return data

    def _download(self, url: str) -> bytes:
        try:
            with self.fs.open(_strip(url), "rb") as fh:
                return fh.read()
        except (FileNotFoundError, PermissionError):
            raise
        except Exception as exc:  # botocore/aiohttp/asyncio raise many types for network failures
            raise self._error("reading", url, exc) from None

    def _error(self, what: str, url: str, exc: BaseException) -> StorageError:
        where = self.endpoint_url or "the default AWS endpoint"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return StorageError(f"{url}: S3 {what} failed after {self.attempts} attempt(s) of {self.timeout_s:g} s at "
                            f"{where} ({type(exc).__name__}: {reason}); check the network and --endpoint-url")

    def evict(self) -> int:
        """Delete least-recently-used cache files until the cache fits ``cache_bytes``; returns bytes freed."""
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return 0
        self._added = 0
        entries: list[tuple[float, int, str]] = []
        for sub in os.scandir(self.cache_dir):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                if entry.name.startswith(".dl."):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, st.st_size, entry.path))
        total = sum(e[1] for e in entries)
        freed = 0
        if total <= self.cache_bytes:
            return 0
        for _mtime, size, path in sorted(entries):
            if total - freed <= self.cache_bytes:
                break
            try:
                os.unlink(path)
                freed += size
            except FileNotFoundError:
                continue
        log.debug("S3 cache %s: evicted %d bytes", self.cache_dir, freed)
        return freed

    def cache_size(self) -> int:
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return 0
        return sum(f.stat().st_size for f in self.cache_dir.rglob("*") if f.is_file())

    # ------------------------------------------------------------------------------------------------ listing
    def list_tree(self, url: str) -> Iterator[tuple[str, list[str]]]:
        """(folder relative to ``url``, file names) for every folder below ``url``, one folder listing at a time
        (so a progress bar moves while ~3 M CPJUMP1 keys are listed); hidden folders are skipped."""
        base = _strip(url).rstrip("/")
        walker = self.fs.walk(base, on_error="raise")  # fsspec's default omits failed listings: an "empty" bucket
        while True:
            try:
                dirpath, dirnames, filenames = next(walker)
            except StopIteration:
                return
            except FileNotFoundError:
                raise FileNotFoundError(f"{url}: no such S3 prefix at "
                                        f"{self.endpoint_url or 'the default AWS endpoint'}") from None
            except PermissionError:
                raise
            except Exception as exc:  # noqa: BLE001 - network errors of many types end in one clear message
                raise self._error("listing", url, exc) from None
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = dirpath[len(base):].strip("/")
            if filenames:
                yield rel, sorted(filenames)


def _strip(url: str) -> str:
    return url[len("s3://"):] if url.startswith("s3://") else url


_DEFAULT: dict[tuple[Any, ...], S3Storage] = {}


def get_storage(url: str | None = None, endpoint_url: str | None = None, cache_dir: str | os.PathLike[str] |
                None = None, cache_bytes: int = 0, anon: bool = True) -> S3Storage:
    """A shared S3Storage per settings (plain local paths need none: callers pass ``storage=None``)."""
    if url is not None and not url.startswith("s3://"):
        raise ValueError(f"{url}: only s3:// URLs are supported as remote data")
    key = (endpoint_url, str(cache_dir) if cache_dir else None, cache_bytes, anon)
    if key not in _DEFAULT:
        _DEFAULT[key] = S3Storage(endpoint_url=endpoint_url, anon=anon, cache_dir=cache_dir,
                                  cache_bytes=cache_bytes)
    return _DEFAULT[key]
