"""CPJUMP1 (cpg0000-jump-pilot/source_4) file-name grammar and the field index.

File names are the source of truth: a field is every ``r{RR}c{CC}f{FF}p01-ch{N}sk{K}...tiff`` in one plate folder
sharing row, column, site and ``sk``. The field key includes the plate folder and ``sk`` because ``rRRcCCfFF``
repeats on every plate (an earlier loader merged ~51 plates into one entry that way). load_data CSVs (``URL_*`` or
``PathName_*``/``FileName_*`` columns) are an alternative input that avoids scanning millions of files.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import os
import re
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_path, atomic_write_json
from dinocell_core.jump.channels import (
    ALL_CHANNELS,
    CHANNELS,
    NAME_TO_CHANNEL,
    channel_number,
)

log = logging.getLogger(__name__)

#: the field part of an image name, ``r01c01f01p01`` (row, column, site, plane): also the stem of its masks
FIELD_STEM = r"r(\d{2})c(\d{2})f(\d{2})p(\d{2})"
FILE_RE = re.compile(rf"^{FIELD_STEM}-ch(\d+)sk(\d+)fk(\d+)fl(\d+)\.tiff$")
S3_GALLERY = "s3://cellpainting-gallery/"
SOURCE_PREFIX = Path("cpg0000-jump-pilot") / "source_4"  # CPJUMP1 inside the gallery (and the fixture)
INDEX_COLUMNS: tuple[str, ...] = ("plate", "well", "site", *(f"ch{c}" for c in ALL_CHANNELS),
                                  "batch", "plate_folder", "sk")


def well_name(row: int, col: int) -> str:
    """``(1, 1)`` → ``"A01"`` (plate rows are letters, columns zero-padded as in Metadata_Well)."""
    return f"{chr(ord('A') + row - 1)}{col:02d}"


def well_row_col(well: str) -> tuple[int, int]:
    return ord(well[0].upper()) - ord("A") + 1, int(well[1:])


WELL_RE = re.compile(r"^[A-Za-z][0-9]{1,3}$")


def check_folder_name(name: str, what: str = "plate folder") -> str | None:
    """Why ``name`` cannot be one folder under an output root (None when it can). Writers put a field's files at
    ``OUT/<plate folder>/…``: an index row naming ``../../x`` wrote outside the output folder."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        return f"{what} {name!r} is not a plain folder name (no '/', '\\', '..', surrounding spaces)"
    return None


def check_well_name(well: str) -> str | None:
    """Why ``well`` is not a plate well name such as ``A01`` (None when it is)."""
    return None if WELL_RE.match(well) else f"well {well!r} is not a plate well name such as A01"


class FileParts(NamedTuple):
    """The parts of a CPJUMP1 image name ``r{row}c{col}f{site}p{plane}-ch{channel}sk{sk}fk{fk}fl{fl}.tiff``."""

    row: int
    col: int
    site: int
    plane: int
    channel: int
    sk: int
    fk: int
    fl: int

    @property
    def field(self) -> tuple[int, int, int, int, int]:
        """What every channel file of one field shares: (row, col, site, plane, sk)."""
        return self.row, self.col, self.site, self.plane, self.sk


def parse_file_name(name: str) -> FileParts | None:
    """The one reader of CPJUMP1 image names (a bare file name); None for any other file."""
    m = FILE_RE.match(name)
    return None if m is None else FileParts(*(int(g) for g in m.groups()))


def field_stem(row: int, col: int, site: int) -> str:
    """``r01c01f01p01``: the field part of its image names (and of its mask names in a labels store)."""
    return f"r{row:02d}c{col:02d}f{site:02d}p01"


def file_name(row: int, col: int, site: int, ch: int, sk: int = 1) -> str:
    return f"{field_stem(row, col, site)}-ch{ch}sk{sk}fk1fl1.tiff"


def barcode_of(plate_folder: str) -> str:
    """``BR00117005__2020-11-05T12_53_34-Measurement2`` → ``BR00117005``."""
    return plate_folder.split("__")[0]


def join_path(root: str | os.PathLike[str], rel: str) -> str:
    """Resolve an index path: absolute URLs/paths stay, relative ones are joined to ``root`` (local or URL)."""
    if "://" in rel or os.path.isabs(rel):
        return rel
    root_s = str(root)
    if "://" in root_s:
        return root_s.rstrip("/") + "/" + rel
    return os.path.join(root_s, rel)


class IndexFileError(DinocellError, ValueError):
    """An index or load_data CSV cannot be read (the message names the file, the line and the fix)."""


@dataclass
class Field:
    """One multichannel field (site) of one plate acquisition; ``paths`` maps channel → path relative to root."""

    plate: str
    well: str
    site: int
    batch: str
    plate_folder: str
    sk: int
    paths: dict[int, str] = dc_field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.plate_folder}/{self.well}/{self.site}/{self.sk}"

    def path(self, root: str | os.PathLike[str], ch: int) -> str:
        return join_path(root, self.paths[ch])


class FieldTable(SequenceABC):
    """Compact, picklable sequence of fields (~100 bytes each instead of ~2.5 kB of Python objects), so 340k
    fields fit in every DataLoader worker; :class:`Field` objects are built on access."""

    _META = 6  # plate, well, site, batch, plate_folder, sk

    def __init__(self, fields: Iterable[Field]) -> None:
        ids: dict[str, int] = {}
        strings: list[str] = []
        data = array("i")

        def sid(text: str) -> int:
            i = ids.get(text)
            if i is None:
                i = ids[text] = len(strings)
                strings.append(text)
            return i

        for f in fields:
            data.extend((sid(f.plate), sid(f.well), f.site, sid(f.batch), sid(f.plate_folder), f.sk))
            for ch in ALL_CHANNELS:
                path = f.paths.get(ch)
                if path is None:
                    data.extend((-1, -1))
                else:
                    folder, _, name = path.rpartition("/")
                    data.extend((sid(folder), sid(name)))
        self._strings = strings
        self._data = np.frombuffer(data, dtype=np.int32).reshape(-1, self._META + 2 * len(ALL_CHANNELS)).copy()

    def __len__(self) -> int:
        return self._data.shape[0]

    def __getitem__(self, i: int) -> Field:  # type: ignore[override]
        if not isinstance(i, (int, np.integer)):
            raise TypeError("FieldTable indices must be integers")
        row = self._data[i].tolist()
        s = self._strings
        paths: dict[int, str] = {}
        for k, ch in enumerate(ALL_CHANNELS):
            d, n = row[self._META + 2 * k], row[self._META + 2 * k + 1]
            if n >= 0:
                paths[ch] = f"{s[d]}/{s[n]}" if s[d] else s[n]
        return Field(plate=s[row[0]], well=s[row[1]], site=row[2], batch=s[row[3]], plate_folder=s[row[4]],
                     sk=row[5], paths=paths)


@dataclass
class IndexResult:
    fields: list[Field]
    n_incomplete: int = 0
    incomplete_examples: list[str] = dc_field(default_factory=list)
    unreadable: list[str] = dc_field(default_factory=list)
    n_files: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        text = f"{len(self.fields)} complete fields from {self.n_files} image files in {self.seconds:.2f} s"
        if self.n_incomplete:
            text += (f"; {self.n_incomplete} incomplete fields left out (e.g. "
                     + "; ".join(self.incomplete_examples[:3]) + ")")
        if self.unreadable:
            text += f"; {len(self.unreadable)} unreadable folders (e.g. {self.unreadable[0]})"
        return text


class _Grouper:
    """Groups image file names into fields; shared by the local scan, S3 listings and load_data readers."""

    def __init__(self, channels: Sequence[int] = ALL_CHANNELS, max_examples: int = 10) -> None:
        self.channels = tuple(channels)
        self.groups: dict[tuple[str, int, int, int, int], dict[int, str]] = {}
        self.meta: dict[str, tuple[str, str]] = {}
        self.n_files = 0
        self.max_examples = max_examples

    def add_dir(self, rel_dir: str, names: Iterable[str]) -> None:
        """Add the matching files of one folder (``rel_dir`` uses '/' separators, relative to root)."""
        batch, plate_folder = _batch_and_folder(rel_dir)
        for name in names:
            parts = parse_file_name(name)
            if parts is None:
                continue
            self.add(rel_dir, batch, plate_folder, parts.row, parts.col, parts.site, parts.sk, parts.channel,
                     f"{rel_dir}/{name}" if rel_dir else name)

    def add(self, group_dir: str, batch: str, plate_folder: str, r: int, c: int, f: int, sk: int, ch: int,
            path: str) -> None:
        problem = check_folder_name(plate_folder) if plate_folder else None  # "": files directly in the root
        if problem is not None:
            raise IndexFileError(f"{path}: {problem}")
        self.n_files += 1
        self.meta.setdefault(group_dir, (batch, plate_folder))
        self.groups.setdefault((group_dir, r, c, f, sk), {})[ch] = path

    def result(self, unreadable: list[str], t0: float) -> IndexResult:
        fields: list[Field] = []
        n_incomplete = 0
        examples: list[str] = []
        for (gdir, r, c, f, sk), paths in self.groups.items():
            batch, folder = self.meta[gdir]
            missing = [ch for ch in self.channels if ch not in paths]
            if missing:
                n_incomplete += 1
                if len(examples) < self.max_examples:
                    examples.append(f"{gdir}/r{r:02d}c{c:02d}f{f:02d} sk{sk}: missing "
                                    + ",".join(f"ch{m}" for m in missing))
                continue
            fields.append(Field(plate=barcode_of(folder), well=well_name(r, c), site=f, batch=batch,
                                plate_folder=folder, sk=sk, paths={ch: paths[ch] for ch in sorted(paths)}))
        fields.sort(key=_sort_key)
        return IndexResult(fields, n_incomplete, examples, unreadable, self.n_files, time.perf_counter() - t0)


def _sort_key(f: Field) -> tuple[str, str, int, int, int, int]:
    row, col = well_row_col(f.well)
    return (f.batch, f.plate_folder, row, col, f.site, f.sk)


def _batch_and_folder(rel_dir: str) -> tuple[str, str]:
    """Plate folder = parent of ``Images`` (else the folder itself); batch = the folder above ``images/``."""
    parts = [p for p in rel_dir.split("/") if p]
    if parts and parts[-1] == "Images":
        parts = parts[:-1]
    folder = parts[-1] if parts else ""
    batch = ""
    if len(parts) >= 3 and parts[-2] == "images":
        batch = parts[-3]
    elif len(parts) >= 2:
        batch = parts[-2]
    return batch, folder


def scan_tree(root: str | os.PathLike[str]) -> tuple[Iterator[tuple[str, list[str]]], list[str]]:
    """Walk ``root`` with ``os.scandir`` (one syscall stream per folder, no glob per file, hidden folders and
    symlink loops skipped); yields (relative folder, file names). Unreadable folders are collected, not fatal."""
    unreadable: list[str] = []
    root_s = os.fspath(root)

    def walk() -> Iterator[tuple[str, list[str]]]:
        stack = [""]
        while stack:
            rel = stack.pop()
            full = os.path.join(root_s, rel) if rel else root_s
            names: list[str] = []
            subdirs: list[str] = []
            try:
                with os.scandir(full) as it:
                    for entry in it:
                        if entry.name.startswith("."):
                            continue
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                subdirs.append(entry.name)
                            else:
                                names.append(entry.name)
                        except OSError:
                            continue
            except OSError as exc:
                unreadable.append(f"{full} ({exc.strerror or exc})")
                log.warning("cannot read folder %s: %s", full, exc)
                continue
            if names:
                yield rel, names
            stack.extend(sorted((f"{rel}/{d}" if rel else d) for d in subdirs)[::-1])

    return walk(), unreadable


def index_fields(root: str | os.PathLike[str], storage: object | None = None,
                 channels: Sequence[int] = ALL_CHANNELS,
                 progress: Callable[[int], None] | None = None) -> IndexResult:
    """Index every complete field under ``root`` (a local folder or an ``s3://`` prefix, at any depth).

    ``progress(n_files)`` is called after each folder holding files (for a CLI progress bar)."""
    t0 = time.perf_counter()
    grouper = _Grouper(channels)
    root_s = os.fspath(root)
    if "://" in root_s:
        from dinocell_core.io.storage import get_storage

        store = storage or get_storage(root_s)
        unreadable: list[str] = []
        for rel_dir, names in store.list_tree(root_s):  # type: ignore[attr-defined]
            grouper.add_dir(rel_dir, names)
            if progress is not None:
                progress(len(names))
    else:
        if not os.path.isdir(root_s):
            raise FileNotFoundError(f"data root {root_s} is not a folder")
        walker, unreadable = scan_tree(root_s)
        for rel_dir, names in walker:
            grouper.add_dir(rel_dir, names)
            if progress is not None:
                progress(len(names))
    result = grouper.result(unreadable, t0)
    log.info("index of %s: %s", root_s, result.summary())
    return result


# ---------------------------------------------------------------------------------------------- load_data CSVs

def _open_text(path: str | os.PathLike[str], storage: object | None = None) -> io.TextIOBase:
    """Text stream of a local or ``s3://`` CSV (``.gz`` decompressed)."""
    p = os.fspath(path)
    if "://" in p:
        from dinocell_core.io.storage import get_storage

        store = storage or get_storage(p)
        raw: io.IOBase = io.BytesIO(store.read_bytes(p))  # type: ignore[attr-defined]
        if p.endswith(".gz"):
            raw = gzip.GzipFile(fileobj=raw)
        return io.TextIOWrapper(raw, encoding="utf-8", newline="")
    if p.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", newline="")
    return open(p, encoding="utf-8", newline="")


def _rewrite(location: str, root: str | None) -> str:
    """Map a load_data location to a path relative to ``root`` (or keep it absolute when it lies outside)."""
    loc = location.strip()
    if loc.startswith("file://"):
        loc = loc[len("file://"):]
    if root is not None:
        root_s = str(root).rstrip("/")
        if loc.startswith(S3_GALLERY):
            return loc[len(S3_GALLERY):]
        if loc.startswith(root_s + "/"):
            return loc[len(root_s) + 1:]
        anchor = loc.find("/cpg0000-jump-pilot/")
        if anchor >= 0:
            return loc[anchor + 1:]
    return loc


def index_load_data(csv_paths: Sequence[str | os.PathLike[str]], root: str | None = None,
                    channels: Sequence[int] = ALL_CHANNELS, storage: object | None = None) -> IndexResult:
    """Index fields from CellProfiler load_data CSVs (``URL_Orig*`` or ``PathName_Orig*``+``FileName_Orig*``,
    ``.csv`` or ``.csv.gz``). ``s3://cellpainting-gallery/`` locations become paths relative to ``root`` (the
    folder that holds ``cpg0000-jump-pilot/``, or an S3 URL of the bucket root), so a local mirror or another
    endpoint serves the same CSV. The channel comes from the column name (as in CellProfiler). The CSVs may
    themselves be ``s3://`` URLs (read through ``storage``)."""
    t0 = time.perf_counter()
    grouper = _Grouper(channels)
    for csv_path in csv_paths:
        with _open_text(csv_path, storage) as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            url_cols = {channel_number(c[len("URL_Orig"):]): c for c in cols
                        if c.startswith("URL_Orig") and c[len("URL_Orig"):].lower() in NAME_TO_CHANNEL}
            file_cols = {channel_number(c[len("FileName_Orig"):]): c for c in cols
                         if c.startswith("FileName_Orig") and c[len("FileName_Orig"):].lower() in NAME_TO_CHANNEL}
            if not url_cols and not file_cols:
                raise ValueError(f"{csv_path}: not a load_data CSV (no URL_Orig* or FileName_Orig* columns)")
            for n, row in enumerate(reader, start=2):
                plate = (row.get("Metadata_Plate") or "").strip()
                well = (row.get("Metadata_Well") or "").strip()
                site_s = (row.get("Metadata_Site") or "").strip()
                locs: dict[int, str] = {}
                for ch in ALL_CHANNELS:
                    if ch in url_cols and (row.get(url_cols[ch]) or "").strip():
                        locs[ch] = _rewrite(row[url_cols[ch]], root)
                    elif ch in file_cols and (row.get(file_cols[ch]) or "").strip():
                        folder = (row.get(f"PathName_Orig{CHANNELS[ch]}") or "").strip()
                        name = row[file_cols[ch]].strip()
                        locs[ch] = _rewrite(f"{folder.rstrip('/')}/{name}" if folder else name, root)
                if not locs:
                    continue
                any_loc = next(iter(locs.values()))
                name = any_loc.rsplit("/", 1)[-1]
                parts = parse_file_name(name)
                if parts is not None:
                    r, c, f, sk = parts.row, parts.col, parts.site, parts.sk
                elif well and site_s.isdigit():
                    (r, c), f, sk = well_row_col(well), int(site_s), 1
                else:
                    raise ValueError(f"{csv_path}:{n}: cannot tell well/site (file {name!r}, Metadata_Well "
                                     f"{well!r}, Metadata_Site {site_s!r})")
                rel_dir = any_loc.rsplit("/", 1)[0] if "/" in any_loc else ""
                batch, folder = _batch_and_folder(rel_dir.split("://", 1)[-1])
                folder = folder or plate
                for ch, loc in locs.items():
                    grouper.add(rel_dir, batch, folder, r, c, f, sk, ch, loc)
    result = grouper.result([], t0)
    log.info("index of %d load_data CSV(s): %s", len(csv_paths), result.summary())
    return result


def is_load_data_csv(path: str | os.PathLike[str]) -> bool:
    p = os.fspath(path)
    if not (p.endswith(".csv") or p.endswith(".csv.gz")) or not os.path.isfile(p):
        return False
    with _open_text(p) as fh:
        try:
            header = fh.readline()
        except (UnicodeDecodeError, EOFError, OSError):  # binary or broken .gz: not a load_data CSV
            return False
    return "URL_Orig" in header or "FileName_Orig" in header


# ------------------------------------------------------------------------------------------- index CSV contract

def write_index_csv(fields: Sequence[Field], path: str | os.PathLike[str]) -> None:
    """Write the contract CSV (``plate, well, site, ch1..ch8, batch, plate_folder, sk``) atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(INDEX_COLUMNS)
        for f in fields:
            w.writerow([f.plate, f.well, f.site, *(f.paths.get(c, "") for c in ALL_CHANNELS),
                        f.batch, f.plate_folder, f.sk])


def iter_index_csv(path: str | os.PathLike[str]) -> Iterator[Field]:
    """Fields of a contract index CSV, one at a time; a wrong header or row is an error naming file and line."""
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        try:
            cols = reader.fieldnames or []
        except (UnicodeDecodeError, csv.Error) as exc:
            raise IndexFileError(f"{path}: not a text CSV file ({exc.__class__.__name__}); give a CPJUMP1 folder, an "
                             "s3:// prefix, a DINOCell index CSV or a load_data CSV") from None
        missing = [c for c in ("plate", "well", "site", *(f"ch{c}" for c in ALL_CHANNELS)) if c not in cols]
        if missing:
            raise IndexFileError(f"{path}: not a DINOCell index CSV (missing columns {', '.join(missing)})")
        n = 1
        rows = iter(reader)
        while True:
            n += 1
            try:
                row = next(rows)
            except StopIteration:
                return
            except (UnicodeDecodeError, csv.Error) as exc:
                raise IndexFileError(f"{path}:{n}: not readable as CSV text ({exc.__class__.__name__})") from None
            try:
                paths = {c: row[f"ch{c}"] for c in ALL_CHANNELS if row.get(f"ch{c}")}
                folder = row.get("plate_folder") or row["plate"]
                field = Field(plate=row["plate"], well=row["well"], site=int(row["site"]),
                              batch=row.get("batch") or "", plate_folder=folder, sk=int(row.get("sk") or 1),
                              paths=paths)
            except (KeyError, ValueError, TypeError) as exc:
                raise IndexFileError(f"{path}:{n}: bad index row ({exc})") from None
            problem = check_folder_name(folder) or check_well_name(field.well)
            if problem is not None or field.site < 0 or field.sk < 0:
                raise IndexFileError(f"{path}:{n}: bad index row ({problem or 'site and sk must be ≥ 0'})")
            yield field


def read_index_csv(path: str | os.PathLike[str]) -> list[Field]:
    return list(iter_index_csv(path))


def default_cache_path(root: str | os.PathLike[str], endpoint_url: str | None = None) -> Path:
    """``<root>/.dinocell/index.csv`` for a writable local root, else a file under ~/.cache/dinocell per root and
    S3 endpoint (the same bucket name on a mirror or test server is another listing)."""
    root_s = os.fspath(root)
    if "://" not in root_s and os.path.isdir(root_s) and os.access(root_s, os.W_OK):
        return Path(root_s) / ".dinocell" / "index.csv"
    key = root_s if not endpoint_url else f"{root_s}\n{endpoint_url}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "dinocell" / f"index_{digest}.csv"


def build_index(root: str | os.PathLike[str], load_data: Sequence[str | os.PathLike[str]] = (),
                storage: object | None = None, progress: Callable[[int], None] | None = None) -> IndexResult:
    """Index from load_data CSVs when given (or when ``root`` is one), else by scanning ``root``."""
    root_s = os.fspath(root)
    if load_data:
        return index_load_data(load_data, root=root_s, storage=storage)
    if is_load_data_csv(root_s):
        return index_load_data([root_s], root=None)
    return index_fields(root_s, storage=storage, progress=progress)


def write_index_cache(result: IndexResult, root: str | os.PathLike[str], cache_path: str | os.PathLike[str]) -> None:
    """The contract CSV plus a JSON sidecar with the scan report (incomplete fields, unreadable folders)."""
    cache_path = Path(cache_path)
    write_index_csv(result.fields, cache_path)
    atomic_write_json(cache_path.with_suffix(".json"), {
        "root": os.fspath(root), "fields": len(result.fields), "files": result.n_files,
        "incomplete": result.n_incomplete, "incomplete_examples": result.incomplete_examples,
        "unreadable": result.unreadable, "seconds": round(result.seconds, 3)})


def _fields_source(root: str | os.PathLike[str], cache: str | os.PathLike[str] | None, refresh: bool,
                   load_data: Sequence[str | os.PathLike[str]], storage: object | None) -> Iterable[Field]:
    root_s = os.fspath(root)
    if os.path.isfile(root_s) and not is_load_data_csv(root_s):
        return iter_index_csv(root_s)
    endpoint = getattr(storage, "endpoint_url", None)
    cache_path = Path(cache) if cache is not None else default_cache_path(root_s, endpoint)
    if cache_path.is_file() and not refresh:
        log.info("index of %s read from cache %s (refresh to rescan)", root_s, cache_path)
        return iter_index_csv(cache_path)
    result = build_index(root_s, load_data=load_data, storage=storage)
    if not result.fields:  # never cache an empty listing: the next start must look again
        return result.fields
    try:
        write_index_cache(result, root_s, cache_path)
    except OSError as exc:
        log.warning("could not write index cache %s: %s", cache_path, exc)
    return result.fields


def load_index(root: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None,
               refresh: bool = False, load_data: Sequence[str | os.PathLike[str]] = (),
               storage: object | None = None) -> list[Field]:
    """Fields of ``root``, from the cached index when present (scanning 340k fields on every start is slow).

    ``root`` may also be a contract index CSV (read as is) or a load_data CSV. ``refresh`` rescans.
    """
    return list(_fields_source(root, cache, refresh, load_data, storage))


def load_field_table(root: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None,
                     refresh: bool = False, load_data: Sequence[str | os.PathLike[str]] = (),
                     storage: object | None = None) -> FieldTable:
    """Like :func:`load_index` but streams the cached CSV into a compact :class:`FieldTable` (training data)."""
    return FieldTable(_fields_source(root, cache, refresh, load_data, storage))
