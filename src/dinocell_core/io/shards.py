"""Sharded plate-scale jobs (``--shard I/N``): one Slurm array task (or torchrun rank) per shard, then one merge.

``jump label``, ``segment-plate`` and ``profile embed`` each split their work into N shards by a hash of each item's
identity (a field's key; ``profile embed``: a chunk's name, or a well), never its position in a listing, so every
task computes the same split from the same tree; each shard writes only its own parts and records itself, once
finished, as ``OUT.shards/shard-I-of-N.json`` holding a digest of the settings and inputs. The merge (``--merge``,
or automatically in whichever shard finishes last) refuses missing shards and parts of other settings, and writes
exactly the files a single run writes.

Shards are numbered **1 to N** (``--array=1-N`` in Slurm: ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``);
a torchrun rank R of W under shard I/N runs shard ``(I-1)·W + R + 1`` of ``N·W``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_write_json
from dinocell_core.io.locks import FolderLock, FolderLockedError

OPTION = "--shard"
_MARKER = re.compile(r"^shard-(\d+)-of-(\d+)\.json$")
_MERGE_LOCK = ".merge.lock"
T = TypeVar("T")


class ShardError(DinocellError, ValueError):
    """A bad ``--shard`` value, missing shards at a merge, or parts made with other settings (says which)."""


class AlreadyMerged(DinocellError):
    """``--merge`` with nothing left to merge and the output there: the last shard merged already. Not a failure
    (the CLI exits 0), so a Slurm merge step queued after the array succeeds whichever of them merged."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based: the first of four is 1/4)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise ShardError(f"{OPTION} {self.index}/{self.count}: shards are numbered 1 to N (1 ≤ I ≤ N); in "
                             "Slurm use --array=1-N and --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"3/4"`` → shard 3 of 4; anything else is a ShardError naming ``--shard``."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if m is None:
            raise ShardError(f"{OPTION} {text!r}: expected I/N, e.g. 3/4 (shard 3 of 4, numbered from 1)")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        """Whether the item named ``key`` (a field key, a well, a chunk) belongs to this shard: a hash of the key,
        so the split depends on nothing but the item itself."""
        return self.count == 1 or owner(key, self.count) == self.index

    def within(self, rank: int, world: int) -> Shard:
        """The shard that rank ``rank`` of ``world`` torchrun processes runs inside this one."""
        return Shard((self.index - 1) * world + rank + 1, self.count * world)


def owner(key: str, count: int) -> int:
    """The shard (1..count) that owns ``key``."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % count + 1


def torchrun_shard(shard: Shard | None, env: Mapping[str, str] = os.environ) -> Shard | None:
    """Under torchrun (``WORLD_SIZE`` > 1) each rank's own shard (within ``shard`` when given); else ``shard``."""
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return shard
    return (shard or Shard(1, 1)).within(int(env.get("RANK", "0")), world)


def digest(obj: Any) -> str:
    """A short digest of JSON-able settings and inputs (what every part of one merge must share)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def shards_dir(out: str | os.PathLike[str]) -> Path:
    """``OUT.shards``, beside the output (the output itself holds only what a single run writes)."""
    return Path(f"{os.fspath(out).rstrip('/')}.shards")


def unfinished(out: str | os.PathLike[str], count: int) -> list[Shard]:
    """The shards of ``count`` that have no marker in ``OUT.shards`` (all of them once a merge cleared it)."""
    folder = shards_dir(out)
    return [s for s in (Shard(i, count) for i in range(1, count + 1))
            if not (folder / f"{s.name}.json").is_file()]


class ShardParts:
    """The finished-shard markers of one output (``OUT.shards/``) and the shards' own part folders in it."""

    def __init__(self, out: str | os.PathLike[str], settings_digest: str) -> None:
        self.out = Path(out)
        self.folder = shards_dir(out)
        self.digest = settings_digest

    def part(self, shard: Shard) -> Path:
        """A folder of the shard's own (for jobs whose parts are not per-field files of the output)."""
        return self.folder / shard.name

    def marker(self, shard: Shard) -> Path:
        return self.folder / f"{shard.name}.json"

    def found(self) -> dict[Shard, dict[str, Any]]:
        """Every marker in the folder, read."""
        out: dict[Shard, dict[str, Any]] = {}
        if not self.folder.is_dir():
            return out
        for p in sorted(self.folder.iterdir()):
            m = _MARKER.match(p.name)
            if m is None:
                continue
            try:
                out[Shard(int(m.group(1)), int(m.group(2)))] = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ShardError(f"{p}: unreadable shard marker ({exc}); run that shard again") from None
        return out

    def _check(self, found: dict[Shard, dict[str, Any]], count: int) -> None:
        for s, info in found.items():
            if s.count != count:
                raise ShardError(f"{self.marker(s)}: a shard of {s.count}, this run splits into {count}; finish "
                                 f"that run with {OPTION} I/{s.count}, or delete {self.folder} to start over")
            if info.get("digest") != self.digest:
                raise ShardError(f"{self.marker(s)}: shard {s} was made with other settings or inputs (digest "
                                 f"{info.get('digest')}, this run {self.digest}); run it again with the same "
                                 f"options, or delete {self.folder} to start over")

    def start(self, shard: Shard) -> None:
        """Before a shard works: refuse markers of another split or other settings, and withdraw this shard's own
        marker (it is running again, so it is not finished until it says so)."""
        with self._lock(required=True):
            self._check(self.found(), shard.count)
            self.marker(shard).unlink(missing_ok=True)

    def finish(self, shard: Shard, info: Mapping[str, Any]) -> None:
        """Record the shard as finished (atomically, after all its parts are written)."""
        atomic_write_json(self.marker(shard), {"shard": str(shard), "digest": self.digest, **info})

    def missing(self, count: int) -> list[Shard]:
        return unfinished(self.out, count)

    def complete(self, count: int | None = None) -> dict[Shard, dict[str, Any]]:
        """Every shard's marker, in order (``count``: the split; default: the markers'); a ShardError naming the
        missing shards or a part of other settings."""
        found = self.found()
        if not found:
            raise ShardError(f"nothing to merge: no finished shard in {self.folder} (run the shards with "
                             f"{OPTION} I/N first; a finished merge removes that folder)")
        count = count or next(iter(found)).count
        self._check(found, count)
        missing = self.missing(count)
        if missing:
            raise ShardError(f"cannot merge {self.out}: shard(s) {', '.join(map(str, missing))} not finished (no "
                             f"{self.marker(missing[0]).name} in {self.folder}); run them with {OPTION} I/{count}")
        return dict(sorted(found.items(), key=lambda kv: kv[0].index))

    def finish_and_merge(self, shard: Shard, info: Mapping[str, Any],
                         merge: Callable[[dict[Shard, dict[str, Any]]], T]) -> T | None:
        """Record ``shard`` as finished; when that makes every shard finished, run ``merge`` (with every marker,
        under the merge lock) and return what it returns; None while a shard is unfinished, another process
        merges, or the markers are gone (merged already). ``merge`` calls :meth:`clear` once it wrote the whole
        output."""
        self.finish(shard, info)
        try:
            with self._lock(required=False) as held:
                return merge(self.complete(shard.count)) if held and not self.missing(shard.count) else None
        finally:
            self._tidy()

    def merge(self, merge: Callable[[dict[Shard, dict[str, Any]]], T]) -> T:
        """``--merge``: ``merge`` under the merge lock; a ShardError while a shard is missing, was made with other
        settings, or another process merges; :class:`AlreadyMerged` when the output is there and no part is left."""
        if self.out.exists() and not self.folder.exists():
            raise AlreadyMerged(f"{self.out}: already merged, nothing left to merge (no shard parts in {self.folder})")
        try:
            with self._lock(required=True):
                return merge(self.complete())
        finally:
            self._tidy()

    def _tidy(self) -> None:
        """Remove the folder once a merge cleared it (only the merge lock's file is left)."""
        if self.folder.is_dir() and {p.name for p in self.folder.iterdir()} <= {_MERGE_LOCK}:
            shutil.rmtree(self.folder, ignore_errors=True)

    @contextmanager
    def _lock(self, required: bool) -> Iterator[bool]:
        lock = FolderLock(self.folder, _MERGE_LOCK)
        try:
            lock.acquire()
        except FolderLockedError:
            if required:
                raise ShardError(f"{self.folder} is being merged by another process ({lock.path}); wait for it "
                                 "to finish") from None
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def clear(self) -> None:
        """Remove the markers and the shards' part folders after a merge wrote the whole output."""
        for p in sorted(self.folder.iterdir()) if self.folder.is_dir() else []:
            if p.name != _MERGE_LOCK:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
