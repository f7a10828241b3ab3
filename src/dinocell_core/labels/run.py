"""``jump label``: label every field of a CPJUMP1 tree into a labels store, in parallel, resumably.

Fields come from a fresh scan of the tree for DNA + RNA only (a field missing either is reported, not labelled;
the tree is never written — not even the index cache). Each worker reads, segments and writes one field's masks;
the parent owns labels.csv / qc.csv and flushes them every few seconds, so an interrupted run loses at most the
fields in flight and a re-run skips every field already in the store. A bad field (blank, saturated,
unreadable, missing illumination) is skipped with its reason in ``skipped.csv`` and counted.
"""

from __future__ import annotations

import csv
import io
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from dinocell_core import __version__
from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_write_bytes
from dinocell_core.io.shards import Shard, ShardParts, digest
from dinocell_core.io.tiffio import BadImageError, read_tiff, tiff_problem
from dinocell_core.jump.index import Field, index_fields, load_index
from dinocell_core.labels import qc
from dinocell_core.labels.cellprofiler import BadFieldError, segment_field
from dinocell_core.labels.settings import CellProfilerParams, LabelSettings
from dinocell_core.labels.store import (
    LABELS_CSV,
    FieldKey,
    LabelsError,
    LabelStore,
    StoreLock,
    field_key,
    orphan_temp_files,
    write_masks,
)

log = logging.getLogger(__name__)

DNA, RNA = 5, 3
SKIPPED_CSV = "skipped.csv"
_DEFAULTS = LabelSettings()  # label_tree's defaults are the settings model's


@dataclass
class LabelSummary:
    labelled: int = 0
    resumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (field key, reason)
    incomplete: list[str] = field(default_factory=list)
    seconds: float = 0.0
    relabelled: list[str] = field(default_factory=list)  # stored masks found unreadable, labelled again
    qc_rebuilt: int = 0  # qc.csv rows described again from their masks (missing after a kill, or unreadable)
    merged: bool = False  # this call wrote the store from every shard's part
    waiting: list[str] = field(default_factory=list)  # shards not finished yet (a shard that did not merge)

    def text(self) -> str:
        out = (f"{self.labelled} fields labelled, {self.resumed} already in the store, {len(self.skipped)} skipped, "
               f"{len(self.incomplete)} incomplete in the tree ({self.seconds:.1f} s)")
        if self.relabelled:
            out += f"; {len(self.relabelled)} with unreadable masks labelled again (e.g. {self.relabelled[0]})"
        if self.qc_rebuilt:
            out += f"; {self.qc_rebuilt} qc.csv rows rebuilt from their masks"
        for key, reason in self.skipped[:5]:
            out += f"\n  skipped {key}: {reason}"
        for item in self.incomplete[:5]:
            out += f"\n  incomplete {item}"
        return out


def source_storage(root: str, endpoint_url: str | None = None) -> Any:
    """The S3 reader of an ``s3://`` tree (``endpoint_url``: a mirror or test server; default: the environment's
    ``DINOCELL_S3_ENDPOINT_URL`` or AWS); None for a local tree."""
    if "://" not in root:
        if endpoint_url:
            raise ValueError(f"--endpoint-url applies to s3:// trees, not {root}")
        return None
    from dinocell_core.io.storage import get_storage

    return get_storage(root, endpoint_url=endpoint_url)


def tree_fields(root: str, storage: Any = None) -> tuple[list[Field], list[str]]:
    """(fields having DNA and RNA, descriptions of fields missing one) without writing anything under ``root``."""
    if os.path.isfile(root):
        all_fields = load_index(root)
        ok = [f for f in all_fields if DNA in f.paths and RNA in f.paths]
        bad = [f"{f.key}: missing " + ",".join(f"ch{c}" for c in (DNA, RNA) if c not in f.paths)
               for f in all_fields if f not in ok]
        return ok, bad
    result = index_fields(root, channels=(DNA, RNA), storage=storage)
    return result.fields, result.incomplete_examples[: result.n_incomplete] + (
        [f"... and {result.n_incomplete - len(result.incomplete_examples)} more"]
        if result.n_incomplete > len(result.incomplete_examples) else [])


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ workers

_ILLUM: dict[str, np.ndarray] = {}


def _illum(root: str, f: Field, ch: int, shape: tuple[int, ...], storage: Any = None) -> np.ndarray:
    from dinocell_core.jump.index import join_path
    from dinocell_core.jump.preprocess import illumination_path

    path = join_path(root, illumination_path(f, ch))
    arr = _ILLUM.get(path)
    if arr is None:
        try:
            if "://" in path:
                data = io.BytesIO((storage or source_storage(root)).read_bytes(path))
            else:
                data = path  # type: ignore[assignment]
            arr = np.load(data, allow_pickle=False).astype(np.float32)
        except FileNotFoundError:
            raise BadFieldError(f"illumination file {path} not found (or label with --no-illum)") from None
        except Exception as exc:
            raise BadFieldError(f"illumination file {path} unreadable ({type(exc).__name__}: {exc})") from None
        if not np.all(np.isfinite(arr)) or float(arr.min()) <= 0:
            raise BadFieldError(f"illumination file {path} has non-positive or non-finite values")
        if len(_ILLUM) > 32:
            _ILLUM.clear()
        _ILLUM[path] = arr
    if arr.shape != tuple(shape):
        raise BadFieldError(f"illumination file {path} is {arr.shape}, the image {tuple(shape)}")
    return arr


def _label_cellprofiler(task: tuple[str, str, Field, CellProfilerParams, str | None]) -> tuple[str, Any, Any]:
    root, out, f, params, endpoint = task
    try:
        st = source_storage(root, endpoint)
        dna = read_tiff(f.path(root, DNA), storage=st)
        rna = read_tiff(f.path(root, RNA), storage=st, shape=dna.shape)
        ill_d = _illum(root, f, DNA, dna.shape, st) if params.illumination else None
        ill_r = _illum(root, f, RNA, rna.shape, st) if params.illumination else None
        seg = segment_field(dna, rna, ill_d, ill_r, params)
        row = write_masks(Path(out), f, seg.nuclei, seg.cells, "auto")
    except (BadFieldError, BadImageError, LabelsError, OSError) as exc:
        return "bad", f.key, str(exc)
    stats = {**qc.field_qc(seg.nuclei, seg.cells), "nuclei_threshold": round(seg.nuclei_threshold, 5),
             "cells_threshold": round(seg.cells_threshold, 5)}
    return "ok", row, stats


def _label_import(task: tuple[str, str, Field, tuple[Path, Path], str | None]) -> tuple[str, Any, Any]:
    from dinocell_core.labels.importer import read_import_mask

    root, out, f, (nuc_p, cell_p), endpoint = task
    try:
        shape = _image_shape(f.path(root, DNA), source_storage(root, endpoint))
        nuclei = read_import_mask(nuc_p, shape)
        cells = read_import_mask(cell_p, shape)
        row = write_masks(Path(out), f, nuclei, cells, "imported")
    except (BadImageError, LabelsError, OSError) as exc:
        return "bad", f.key, str(exc)
    return "ok", row, qc.field_qc(nuclei, cells)


def _image_shape(path: str, storage: Any = None) -> tuple[int, ...]:
    """The image's shape from its TIFF header (no pixel decoding)."""
    import tifffile

    if "://" in path:
        return read_tiff(path, storage=storage).shape
    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(s for s in tif.pages[0].shape if s != 1) or tif.pages[0].shape
    except Exception as exc:
        raise BadImageError(path, f"cannot read TIFF header ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------------------------- driver

@dataclass
class _Job:
    """One ``jump label`` command's checked inputs: what every shard of it, and its merge, must share."""

    root: str
    out: Path
    method: str
    params: CellProfilerParams
    from_dir: str | os.PathLike[str] | None
    qc_fields: int
    seed: int
    endpoint_url: str | None
    storage: Any
    manifest: dict[str, Any]

    @cached_property
    def listing(self) -> tuple[list[Field], list[str]]:
        """(fields having DNA and RNA, descriptions of fields missing one), listed once per command."""
        fields, incomplete = tree_fields(self.root, self.storage)
        if not fields:
            raise LabelsError(f"{self.root}: no field with both DNA (ch5) and RNA (ch3) images found")
        return fields, incomplete

    @property
    def source(self) -> str:
        return "auto" if self.method == "cellprofiler" else "imported"

    def shard_parts(self) -> ShardParts:
        """``LABELS.shards``, keyed by everything a merged store depends on (settings, the tree's fields)."""
        keys = "\n".join(f.key for f in self.listing[0])
        return ShardParts(self.out, digest({"manifest": self.manifest, "qc_fields": self.qc_fields, "seed": self.seed,
                                            "fields": digest(keys)}))

    def open_store(self, folder: Path) -> LabelStore:
        """The store (or a shard's part store) at ``folder``, refused when it was made with other settings."""
        store = LabelStore.open_or_create(folder, self.manifest)
        if store.manifest.get("method") != self.method or (self.method == "cellprofiler"
                                                           and store.manifest.get("params") != _jsonable(self.params)):
            raise LabelsError(f"{folder} was made by method {store.manifest.get('method')!r} with params "
                              f"{store.manifest.get('params')}; resuming needs the same method and params (or use a "
                              "new folder)")
        return store

    def contact_sheet(self, store: LabelStore) -> None:
        if self.qc_fields > 0 and store.rows:
            write_contact_sheet(store, self.root, self.out / qc.CONTACT_SHEET, n=self.qc_fields, seed=self.seed,
                                storage=self.storage)


def _job(root: str | os.PathLike[str], out: str | os.PathLike[str], method: str, params: CellProfilerParams | None,
         from_dir: str | os.PathLike[str] | None, qc_fields: int, seed: int, endpoint_url: str | None) -> _Job:
    """Check the settings and the folders (nothing is written)."""
    root_s, out_p = os.fspath(root), Path(out)
    params = LabelSettings(method=method, params=params or CellProfilerParams(), qc_fields=qc_fields,
                           seed=seed).params  # checks every setting, naming a bad one
    if (method == "import") != (from_dir is not None):
        raise ValueError("--method import needs --from DIR (and --from goes with --method import only)")
    if "://" not in root_s and not os.path.exists(root_s):
        raise FileNotFoundError(f"source tree {root_s} not found")
    if "://" not in root_s and _inside(out_p, Path(root_s)):
        raise LabelsError(f"{out_p} is inside the source tree {root_s}: the tree is never written; put the labels "
                          "store beside it")
    if "://" in os.fspath(out):
        raise LabelsError(f"{out}: the labels store is a local folder (the source tree may be on S3, the store not)")
    storage = source_storage(root_s, endpoint_url)
    manifest = {"method": method, "params": _jsonable(params) if method == "cellprofiler" else
                {"from": str(from_dir)}, "dinocell_version": __version__, "source_root": root_s}
    return _Job(root_s, out_p, method, params, from_dir, qc_fields, seed, endpoint_url, storage, manifest)


def label_tree(root: str | os.PathLike[str], out: str | os.PathLike[str], method: str = _DEFAULTS.method,
               params: CellProfilerParams | None = None, from_dir: str | os.PathLike[str] | None = None,
               workers: int = 1, qc_fields: int = _DEFAULTS.qc_fields, seed: int = _DEFAULTS.seed,
               progress: Callable[[int, int], None] | None = None,
               endpoint_url: str | None = None, shard: Shard | None = None) -> LabelSummary:
    """Label (or import masks for) every field of ``root`` (a folder, an index CSV or an ``s3://`` prefix, read
    through ``endpoint_url`` when given) into the local store ``out``; see the module docstring.

    ``shard``: only that shard's fields, into its own part store ``OUT.shards/shard-I-of-N`` (the store itself is
    not written), then the merge when it is the last shard to finish (``summary.merged``): the store is then the
    one a single run writes (:func:`merge_label_shards`)."""
    t0 = time.perf_counter()
    job = _job(root, out, method, params, from_dir, qc_fields, seed, endpoint_url)
    _ILLUM.clear()  # per run: an earlier run in this process may have seen other files
    if shard is None:
        with StoreLock(job.out, task="run"):
            summary = _label_into(job, job.out, None, set(), workers, progress, t0)
            job.contact_sheet(LabelStore.open(job.out))
        return summary
    parts = job.shard_parts()
    parts.start(shard)
    mine = [f for f in job.listing[0] if shard.owns(f.key)]
    part_dir = parts.part(shard)
    with StoreLock(part_dir, task="run"):
        summary = _label_into(job, part_dir, mine, _done_in_store(job, mine), workers, progress, t0)
    info = {"fields": len(mine), "labelled": summary.labelled, "resumed": summary.resumed,
            "relabelled": summary.relabelled, "qc_rebuilt": summary.qc_rebuilt, "seconds": round(summary.seconds, 2)}
    summary.merged = parts.finish_and_merge(shard, info, lambda markers: _merge(job, parts, markers)) is not None
    summary.waiting = [str(s) for s in parts.missing(shard.count)] if not summary.merged else []
    return summary


def merge_label_shards(root: str | os.PathLike[str], out: str | os.PathLike[str], method: str = _DEFAULTS.method,
                       params: CellProfilerParams | None = None, from_dir: str | os.PathLike[str] | None = None,
                       qc_fields: int = _DEFAULTS.qc_fields, seed: int = _DEFAULTS.seed,
                       endpoint_url: str | None = None) -> LabelSummary:
    """``jump label --merge``: join every finished shard's part store into ``out`` (the same options as the shards:
    a part made with others, or a missing shard, is a ShardError naming it)."""
    job = _job(root, out, method, params, from_dir, qc_fields, seed, endpoint_url)
    parts = job.shard_parts()
    return parts.merge(lambda markers: _merge(job, parts, markers))


def _done_in_store(job: _Job, fields: Sequence[Field]) -> set[FieldKey]:
    """Fields of ``fields`` the store already holds readable masks of (a shard labels the rest; it only reads the
    store, which the merge alone writes)."""
    if not (job.out / LABELS_CSV).is_file():
        return set()
    store = LabelStore.open(job.out)
    done = set()
    for f in fields:
        r = store.get(field_key(f), job.source)
        if r is not None and all(tiff_problem(job.out / p) is None for p in (r.nuclei, r.cells, r.cytoplasm) if p):
            done.add(r.key)
    return done


def _label_into(job: _Job, folder: Path, fields: Sequence[Field] | None, done_elsewhere: set[FieldKey],
                workers: int, progress: Callable[[int, int], None] | None, t0: float) -> LabelSummary:
    """Label ``fields`` (None: the tree's) less those in ``done_elsewhere`` and those already in it into the store at
    ``folder``, whose StoreLock the caller holds."""
    for tmp in orphan_temp_files(folder):  # a writer killed mid-write (this lock's holder is the only writer)
        tmp.unlink(missing_ok=True)
    store = job.open_store(folder)
    fields = job.listing[0] if fields is None else fields
    summary = LabelSummary(incomplete=job.listing[1])
    done = set(done_elsewhere)
    for key in store.keys():  # masks missing or cut short are relabelled, not trusted (corrections stay)
        r = store.get(key, job.source)
        if r is not None:
            problems = [f"{folder / p}: {why}" for p in (r.nuclei, r.cells, r.cytoplasm)
                        if p and (why := tiff_problem(folder / p)) is not None]
            if not problems:
                done.add(key)
            else:
                summary.relabelled.append(problems[0])
                store.remove(key, job.source)
    todo = [f for f in fields if field_key(f) not in done]
    summary.resumed = len(fields) - len(todo)
    if job.method == "import":
        from dinocell_core.labels.importer import match_import_files

        matched, unmatched = match_import_files(Path(job.from_dir), todo) if todo else ([], [])  # type: ignore[arg-type]
        summary.skipped.extend(unmatched)
        tasks: list[Any] = [(job.root, str(folder), f, paths, job.endpoint_url) for f, paths in matched]
        worker: Callable[[Any], tuple[str, Any, Any]] = _label_import
    else:
        tasks = [(job.root, str(folder), f, job.params, job.endpoint_url) for f in todo]
        worker = _label_cellprofiler
    qc_rows = _kept_qc_rows(folder, store)
    last_flush = time.monotonic()

    def record(result: tuple[str, Any, Any]) -> None:
        nonlocal last_flush
        kind, a, b = result
        if kind == "ok":
            if store.add(a, flush=False).source == a.source:  # under a correction, qc.csv keeps describing it
                qc_rows[(a.plate_folder, a.well, a.site)] = qc.qc_row(a, b)
            summary.labelled += 1
        else:
            summary.skipped.append((a, b))
        if progress is not None:
            progress(summary.labelled + len(summary.skipped), len(tasks))
        if time.monotonic() - last_flush > 5.0:
            _flush(store, qc_rows, summary, folder)
            last_flush = time.monotonic()

    try:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                record(worker(task))
        else:
            # spawn, not fork: a forked child inherits OpenCV's/OpenMP's thread pools mid-state and can hang
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(workers, len(tasks)), initializer=_worker_init) as pool:
                for result in pool.imap_unordered(worker, tasks, chunksize=1):
                    record(result)
        summary.qc_rebuilt = _rebuild_qc_rows(store, qc_rows)
    finally:
        summary.seconds = time.perf_counter() - t0
        _flush(store, qc_rows, summary, folder)
    return summary


def _merge(job: _Job, parts: ShardParts, markers: dict[Shard, dict[str, Any]]) -> LabelSummary:
    """Move every part store's masks into the store and write its labels.csv / qc.csv / skipped.csv / manifest /
    contact sheet as one run would have (then remove the parts). Safe to repeat after a kill: a mask already moved
    is found in the store."""
    summary = LabelSummary(incomplete=job.listing[1])
    with StoreLock(job.out, task="run"):
        for tmp in orphan_temp_files(job.out):
            tmp.unlink(missing_ok=True)
        store = job.open_store(job.out)
        qc_rows = _kept_qc_rows(job.out, store)
        for shard, info in markers.items():
            folder = parts.part(shard)
            part = LabelStore.open(folder)
            part_qc = {qc.qc_key(r): r for r in qc.read_qc_csv(folder / qc.QC_CSV)}
            for row in part.rows:
                for rel in row.files():
                    src, dst = folder / rel, job.out / rel
                    if src.is_file():
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(src, dst)
                    elif not dst.is_file():
                        raise LabelsError(f"{src}: listed in {folder / LABELS_CSV} but missing (and not in "
                                          f"{job.out}); run shard {shard} again")
                if store.add(row, flush=False).source == row.source and row.key in part_qc:
                    qc_rows[row.key] = part_qc[row.key]
            summary.skipped.extend(_read_skipped(folder / SKIPPED_CSV))
            summary.labelled += int(info.get("labelled", 0))
            summary.resumed += int(info.get("resumed", 0))
            summary.relabelled.extend(info.get("relabelled", []))
            summary.seconds += float(info.get("seconds", 0.0))
        summary.qc_rebuilt = _rebuild_qc_rows(store, qc_rows)
        _flush(store, qc_rows, summary, job.out)
        job.contact_sheet(store)
        parts.clear()
    summary.merged = True
    return summary


def _read_skipped(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return [(r["field"], r["reason"]) for r in csv.DictReader(fh)]


def _kept_qc_rows(out: Path, store: LabelStore) -> dict[qc.FieldKey, dict[str, Any]]:
    """qc.csv rows that still describe the store's rows (same field, same source); an unreadable qc.csv counts as
    empty (with a warning): every row is described again from its masks at the end of the run."""
    try:
        rows = qc.read_qc_csv(out / qc.QC_CSV)
    except qc.QCFileError as exc:
        log.warning("%s; rebuilding it from the masks", exc)
        rows = []
    sources = {r.key: r.source for r in store.rows}
    return {k: r for r in rows if sources.get(k := qc.qc_key(r)) == r["source"]}


def _rebuild_qc_rows(store: LabelStore, qc_rows: dict[qc.FieldKey, dict[str, Any]]) -> int:
    """Describe every stored field that has no qc.csv row (lost to a kill between the labels.csv and qc.csv
    writes, a cut qc.csv, an unreadable one) from its masks; returns how many. Thresholds are not recoverable."""
    n = 0
    for row in store.rows:
        if row.key in qc_rows:
            continue
        try:
            nuclei, cells = store.read_pair(row)
        except LabelsError as exc:
            log.warning("qc.csv: %s not described (%s)", row.key, exc)
            continue
        qc_rows[row.key] = qc.qc_row(row, qc.field_qc(nuclei, cells))
        n += 1
    return n


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)


def _jsonable(params: CellProfilerParams) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.as_dict().items()}


def _flush(store: LabelStore, qc_rows: dict, summary: LabelSummary, out: Path) -> None:
    store.manifest["last_run"] = {"labelled": summary.labelled, "resumed": summary.resumed,
                                  "skipped": len(summary.skipped), "incomplete": len(summary.incomplete),
                                  "seconds": round(summary.seconds, 2)}
    store.flush()
    qc.write_qc_csv(out / qc.QC_CSV, list(qc_rows.values()))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["field", "reason"])
    w.writerows(sorted(summary.skipped))  # the workers' finishing order is no order: one run = its shards merged
    atomic_write_bytes(out / SKIPPED_CSV, buf.getvalue().encode("utf-8"))


def write_contact_sheet(store: LabelStore, root: str, path: Path, n: int = 12, seed: int = 0,
                        storage: Any = None) -> None:
    """Random labelled fields with their outlines (the preferred labels of each field)."""
    by_key = {f.plate_folder + "/" + f.well + "/" + str(f.site): f for f in tree_fields(root, storage)[0]}
    keys = sorted({r.key for r in store.rows})
    rng = np.random.default_rng(seed)
    pick = [keys[i] for i in sorted(rng.choice(len(keys), size=min(n, len(keys)), replace=False))]
    tiles, caps = [], []
    for key in pick:
        f = by_key.get(f"{key[0]}/{key[1]}/{key[2]}")
        row = store.best(key)
        if f is None or row is None:
            continue
        try:
            dna, rna = read_tiff(f.path(root, DNA), storage=storage), read_tiff(f.path(root, RNA), storage=storage)
            nuclei, cells = store.read_pair(row, dna.shape)
        except DinocellError:
            continue
        tiles.append(qc.render_tile(dna, rna, nuclei, cells))
        caps.append(f"{f.plate} {f.well} s{f.site} {row.source} n={int(cells.max())}")
    if tiles:
        qc.write_png(path, qc.contact_sheet(tiles, caps))
