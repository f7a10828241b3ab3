"""Plate-scale segmentation: every field of the selected plates → labels per field and per-cell measurements.

Models come from a models folder (the bundle registry): the bundle for DNA (ch5) gives ``Nuclei``, the bundle for
the cell channel (``cells_channel``, or the only non-DNA bundle) gives ``Cells``. Output layout under OUT::

    segment-plate.json                                   what made this folder (models, thresholds, the tree)
    labels/<plate folder>/<well>/s<SS>_sk<K>_nuclei.tiff uint16 (uint32 above 65,534 objects), zlib
    labels/<plate folder>/<well>/s<SS>_sk<K>_cells.tiff  same ids as ObjectNumber / Cells_Parent_Nuclei
    measurements/<plate folder>/<well>_s<SS>_sk<K>.parquet   one part per field, written last (= field done)
    <plate folder>.parquet                               all parts of a finished plate, streamed into one file

Resumable: a field counts as done when its measurement part exists (every file is written atomically), so a
killed (or cancelled) run picks up at the next field. ``dinocell-core segment-plate`` and napari's "segment this
well/plate → disk" are both callers of :class:`PlateRun` (napari through :meth:`PlateRun.iter_run`, whose yields
are its progress and cancel points). Bounded memory: one field is read ahead, one is in the network, one is in
post-processing/measurement/writing (a thread, overlapping the next field's network pass).

Sharded (``shard``, ``--shard I/N``): each shard segments its fields (split by a hash of the field key) into the same
per-field files, writes no plate table and records itself in ``OUT.shards/``; the last to finish (or ``--merge``)
writes the plate tables, the same bytes as one run's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_path, atomic_write_json
from dinocell_core.io.shards import Shard, ShardParts, digest
from dinocell_core.jump.channels import CHANNELS, FLUORESCENT, channel_number
from dinocell_core.jump.index import check_folder_name, check_well_name
from dinocell_core.seg.bundle import (
    BundleError,
    BundleInfo,
    list_bundles,
    read_bundle_metadata,
)
from dinocell_core.measure.cells import RELATION_COLUMNS, check_features, measure_cells, table_columns

from dinocell_core.seg.config import bundle_channels

log = logging.getLogger(__name__)

NUCLEI, CELLS = "Nuclei", "Cells"
DNA = channel_number("DNA")  # ch5 in the CPJUMP1 vocabulary
MANIFEST = "segment-plate.json"
METADATA = ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_PlateFolder", "Metadata_SK")


class PlateError(DinocellError):
    """The models folder, the data root or the output folder cannot be used for a plate run (says why)."""


def _key(channel: str) -> int | None:
    try:
        return channel_number(channel)
    except ValueError:
        return None


def choose_models(models_dir: str | os.PathLike[str], cells_channel: str | int | None = None) -> dict[str, BundleInfo]:
    """``{"Nuclei": DNA bundle, "Cells": cell-channel bundle}`` (either may be absent, not both)."""
    bundles = list_bundles(models_dir)
    by_channel: dict[int, list[BundleInfo]] = {}
    for b in bundles:
        ch = _key(b.channel)
        if ch is not None:
            by_channel.setdefault(ch, []).append(b)
    out: dict[str, BundleInfo] = {}

    def one(ch: int, role: str) -> BundleInfo:
        found = by_channel[ch]
        if len(found) > 1:
            raise PlateError(f"{models_dir}: several {CHANNELS[ch]} models for {role} "
                             f"({', '.join(b.path.name for b in found)}); keep one in the folder")
        return found[0]

    if DNA in by_channel:
        out[NUCLEI] = one(DNA, NUCLEI)
    if cells_channel is not None and "+" in str(cells_channel):  # a multichannel cells model, e.g. DNA+RNA
        want = [CHANNELS[channel_number(c)] for c in str(cells_channel).split("+")]
        found = [b for b in bundles if bundle_channels(b.metadata) == want]
        if len(found) != 1:
            raise PlateError(f"{models_dir}: {len(found)} models read {'+'.join(want)} (--cells-channel); "
                             "keep one in the folder")
        out[CELLS] = found[0]
    elif cells_channel is not None:
        ch = channel_number(cells_channel)
        if ch not in by_channel:
            raise PlateError(f"{models_dir}: no model for channel {CHANNELS[ch]} (--cells-channel)")
        out[CELLS] = one(ch, CELLS)
    else:
        others = sorted(c for c in by_channel if c != DNA)
        if len(others) > 1:
            raise PlateError(f"{models_dir}: models for several cell channels "
                             f"({', '.join(CHANNELS[c] for c in others)}); choose one with --cells-channel")
        if others:
            out[CELLS] = one(others[0], CELLS)
    if not out:
        raise PlateError(f"{models_dir}: no model bundle for a JUMP channel (need DNA for nuclei and/or a cell "
                         f"channel; found {[b.name for b in bundles] or 'none'})")
    return out


def given_models(models: Mapping[str, str | os.PathLike[str]]) -> dict[str, BundleInfo]:
    """``{"Nuclei": path, "Cells": path}`` (either may be absent, not both) → the bundles' registry entries."""
    unknown = set(models) - {NUCLEI, CELLS}
    if unknown or not models:
        raise PlateError(f"models must map {NUCLEI!r} and/or {CELLS!r} to bundle files, got {sorted(models)}")
    out = {}
    for obj, path in models.items():
        p = Path(path)
        try:
            meta = read_bundle_metadata(p)
        except (BundleError, OSError) as exc:
            raise PlateError(f"{p}: not a usable model bundle for {obj}: {exc}") from None
        out[obj] = BundleInfo(str(meta["name"]), str(meta["channel"]), p, meta)
    return out


def field_stem(f: Any) -> str:
    return f"{f.well}_s{f.site:02d}_sk{f.sk}"


@dataclass
class PlateLayout:
    """Where one plate run's files go (see the module docstring)."""

    root: Path

    def part(self, f: Any) -> Path:
        return self.root / "measurements" / f.plate_folder / f"{field_stem(f)}.parquet"

    def labels(self, f: Any, obj: str) -> Path:
        return self.root / "labels" / f.plate_folder / f.well / f"s{f.site:02d}_sk{f.sk}_{obj.lower()}.tiff"

    def plate_table(self, plate_folder: str) -> Path:
        return self.root / f"{plate_folder}.parquet"


@dataclass
class PlateProgress:
    """One step of :meth:`PlateRun.iter_run`: fields done of the total; within the current field, tile batches done
    of ``tiles`` for the model ``model`` (``tiles`` 0 once a field is finished)."""

    done: int
    total: int
    field: str = ""
    model: str = ""
    tile: int = 0
    tiles: int = 0


@dataclass
class PlateResult:
    total: int = 0
    done_before: int = 0
    done: int = 0
    failed: list[str] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    network_s: float = 0.0
    shard_finished: bool = False  # a sharded run that tried every field of its shard and recorded itself
    merged: bool = False  # a sharded run that found every shard finished and wrote the plate tables
    waiting: list[str] = field(default_factory=list)  # shards not finished yet (a shard that did not merge)


def columns_for(objects: Sequence[str], channels: Sequence[str], features: str = "minimal") -> list[str]:
    """The fixed column order of every part (so all parts of a plate share one Parquet schema): the metadata, then
    :func:`~dinocell_core.measure.cells.measure_cells`'s columns for ``features``."""
    return [*METADATA, *table_columns(objects, channels, features)]


class PlateRun:
    """One ``segment-plate`` run (construct, then :meth:`run`)."""

    def __init__(self, models_dir: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
                 root: str | os.PathLike[str], out: str | os.PathLike[str], plates: Sequence[str] | None = None,
                 device: str = "auto", batch_size: int | None = None, cells_channel: str | int | None = None,
                 measure_channels: Sequence[int] = FLUORESCENT, wells: Sequence[str] | None = None,
                 tile_size: int | None = None, thresholds: Mapping[str, Mapping[str, Any]] | None = None,
                 model_channels: Mapping[str, int] | None = None, features: str = "minimal",
                 precision: str = "auto", shard: Shard | None = None) -> None:
        """``models_dir`` is a models folder (bundles chosen by channel, :func:`choose_models`) or an explicit
        ``{"Nuclei"/"Cells": bundle path}``. ``wells`` limits the run to those wells (the plate table is written
        once every field of the plate is done, by this run or another into the same folder); ``tile_size``,
        ``thresholds`` (per object: peak/fill/grow/ring/slope/min_size over the bundle's) and ``model_channels``
        (per object: the channel its model reads, default the bundle's) override the bundles'. ``features``:
        ``minimal`` (17 per object and channel set) or ``full`` (CellProfiler's by cp-measure, the ``measure``
        extra; refused here, before any field, when it is not installed). ``batch_size`` (None: the Segmenter's
        default) and ``precision`` (auto | fp32 | bf16) are the :class:`~dinocell_core.seg.inference.Segmenter`'s.
        ``shard``: this shard's fields only (see the module docstring)."""
        from dinocell_core.jump.index import load_index
        from dinocell_core.seg.distance import resolve_thresholds

        self.features = check_features(features)
        self.models = (given_models(models_dir) if isinstance(models_dir, Mapping)
                       else choose_models(models_dir, cells_channel))
        self.root = str(root)
        self.layout = PlateLayout(Path(out))
        fields = load_index(root)
        if plates:
            wanted = set(plates)
            fields = [f for f in fields if f.plate in wanted or f.plate_folder in wanted]
            missing = wanted - {f.plate for f in fields} - {f.plate_folder for f in fields}
            if missing:
                raise PlateError(f"{root}: no fields for plate(s) {', '.join(sorted(missing))}")
        self.plate_fields = sorted(fields, key=lambda f: (f.plate_folder, f.well, f.site, f.sk))
        fields = self.plate_fields
        if wells:
            fields = [f for f in fields if f.well in set(wells)]
            if not fields:
                raise PlateError(f"{root}: no fields for well(s) {', '.join(wells)}")
        if not fields:
            raise PlateError(f"{root}: no fields to segment")
        for f in self.plate_fields:  # every file goes to OUT/<kind>/<plate folder>/<well>…: never outside OUT
            problem = check_folder_name(f.plate_folder) or check_well_name(f.well)
            if problem is not None:
                raise PlateError(f"{root}: field {f.key}: {problem}; its files would be written outside {out}")
        self.selected = fields  # every shard's fields
        self.shard = shard
        self.fields = fields if shard is None else [f for f in fields if shard.owns(f.key)]
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        self.tile_size = tile_size
        self.channels = [CHANNELS[c] for c in measure_channels]
        self.measure_channels = list(measure_channels)
        self.model_channel = {obj: channel_number(bundle_channels(b.metadata)[0]) for obj, b in self.models.items()}
        self.model_channel.update(model_channels or {})
        # every channel each model reads, in its order (a multichannel model, e.g. DNA+RNA → cells, reads several)
        self.model_inputs = {obj: ([self.model_channel[obj]] if len(bundle_channels(b.metadata)) == 1
                                   else [channel_number(c) for c in bundle_channels(b.metadata)])
                             for obj, b in self.models.items()}
        overrides = {obj: dict(th) for obj, th in (thresholds or {}).items() if th}
        unknown = set(overrides) - set(self.models)
        if unknown:
            raise PlateError(f"thresholds given for {sorted(unknown)}, which have no model in this run")
        self.overrides = overrides
        self.thresholds = {obj: resolve_thresholds(b.metadata.get("thresholds") or {}, **overrides.get(obj, {}))
                           for obj, b in self.models.items()}
        self.columns = columns_for(list(self.models), self.channels, self.features)
        self.result: PlateResult | None = None

    def manifest(self) -> dict[str, Any]:
        models = {}
        for obj, b in self.models.items():
            entry = {"name": b.name, "channel": b.channel, "path": str(b.path),
                     "thresholds": b.metadata.get("thresholds")}
            if self.overrides.get(obj):
                entry["threshold_overrides"] = self.overrides[obj]
            if self.model_channel[obj] != channel_number(bundle_channels(b.metadata)[0]):
                entry["reads_channel"] = CHANNELS[self.model_channel[obj]]
            if self.tile_size is not None:
                entry["tile_size"] = self.tile_size
            models[obj] = entry
        return {"root": self.root, "columns": len(self.columns), "measure_channels": self.channels,
                "features": self.features,
                "models": models, "tree": tree_identity(self.root, self.plate_fields)}

    def _check_manifest(self) -> None:
        """Refuse an output folder written with other models or channels, or from another image tree (another
        root, or a plate whose images changed): a field found done there would be another tree's. A plate new to
        the folder is added to its record."""
        path = self.layout.root / MANIFEST
        mine = self.manifest()
        if not path.is_file():
            atomic_write_json(path, {**mine, "created_at": time.time()})
            return
        import json

        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise PlateError(f"{path}: unreadable ({exc}); use another output folder") from None
        if (old.get("models") != mine["models"] or old.get("measure_channels") != mine["measure_channels"]
                or old.get("features", "minimal") != mine["features"]):
            raise PlateError(f"{self.layout.root}: written by another run (models, channels or features differ, see "
                             f"{MANIFEST}); use another output folder")
        tree = old.get("tree") if isinstance(old.get("tree"), dict) else {}
        theirs = str(tree.get("root") or _canonical_root(str(old.get("root", ""))))
        if theirs != mine["tree"]["root"]:
            raise PlateError(f"{self.layout.root}: holds fields segmented from {theirs}, this run reads "
                             f"{mine['tree']['root']}; an output folder never mixes two image trees — use another "
                             "output folder")
        plates = dict(tree.get("plates") or {})
        changed = sorted(pf for pf, digest in mine["tree"]["plates"].items() if plates.get(pf, digest) != digest)
        if changed:
            raise PlateError(f"{self.layout.root}: plate {changed[0]} of {self.root} lists other image files than "
                             f"when this folder was written (see {MANIFEST}); use another output folder")
        if plates.keys() != {*plates, *mine["tree"]["plates"]} or not tree:
            atomic_write_json(path, {**old, "tree": {"root": theirs, "plates": {**plates, **mine["tree"]["plates"]}}})

    def pending(self) -> list[Any]:
        return [f for f in self.fields if not self.layout.part(f).is_file()]

    def run(self, progress: Callable[[int, int], None] | None = None,
            max_fields: int | None = None) -> PlateResult:
        """Segment every field not yet done (at most ``max_fields`` of them); ``progress(done, total)`` at the start
        and after each field."""
        for step in self.iter_run(max_fields):
            if progress is not None and step.tiles == 0:
                progress(step.done, step.total)
        assert self.result is not None
        return self.result

    def iter_run(self, max_fields: int | None = None) -> Generator[PlateProgress, None, PlateResult]:
        """:meth:`run` as a generator: yields after every tile batch and every finished field (closing it there is
        a clean cancel: the field in post-processing is still written, the run resumes after it); returns (and
        keeps in ``self.result``) the :class:`PlateResult`."""
        from dinocell_core.seg.inference import Segmenter

        self._check_manifest()
        if self.shard is not None:
            self.shard_parts().start(self.shard)
        todo = self.pending()
        res = PlateResult(total=len(self.fields), done_before=len(self.fields) - len(todo))
        self.result = None
        if max_fields is not None:
            todo = todo[:max_fields]
        t0 = time.perf_counter()
        segs = {obj: Segmenter(b.path, device=self.device, batch_size=self.batch_size, tile_size=self.tile_size,
                               precision=self.precision)
                for obj, b in self.models.items()}
        for obj, seg in segs.items():
            seg.thresholds = self.thresholds[obj]
        done = res.done_before
        try:
            yield PlateProgress(done, res.total)
            with ThreadPoolExecutor(1, thread_name_prefix="read") as reader, \
                    ThreadPoolExecutor(1, thread_name_prefix="postprocess") as post:
                ahead: Future | None = reader.submit(self._read, todo[0]) if todo else None
                pending: tuple[Any, Future] | None = None
                for i, f in enumerate(todo):
                    assert ahead is not None
                    try:
                        images = ahead.result()
                    except (OSError, ValueError, DinocellError) as exc:
                        log.warning("%s: skipped: %s", f.key, exc)
                        res.failed.append(f"{f.key}: {exc}")
                        images = None
                    ahead = reader.submit(self._read, todo[i + 1]) if i + 1 < len(todo) else None
                    dists = None
                    if images is not None:
                        dists = {}
                        for obj, seg in segs.items():
                            tn = time.perf_counter()
                            chans = self.model_inputs[obj]
                            image = images[chans[0]] if len(chans) == 1 else [images[c] for c in chans]
                            for item in seg.iter_distance(image):
                                if isinstance(item, np.ndarray):
                                    dists[obj] = item
                                    continue
                                res.network_s += time.perf_counter() - tn
                                yield PlateProgress(done, res.total, f.key, obj, *item)
                                tn = time.perf_counter()
                            res.network_s += time.perf_counter() - tn
                    if pending is not None:
                        done += self._collect(*pending, res)
                        yield PlateProgress(done, res.total, pending[0].key)
                        pending = None
                    if dists is not None:
                        pending = (f, post.submit(self._finish, f, images, dists, segs))
                if pending is not None:
                    done += self._collect(*pending, res)
                    yield PlateProgress(done, res.total, pending[0].key)
        finally:
            for seg in segs.values():
                seg.release()
        res.done = done
        if self.shard is None:
            res.tables = self.write_plate_tables()
        else:
            self._finish_shard(res)
        res.seconds = time.perf_counter() - t0
        self.result = res
        return res

    def shard_parts(self) -> ShardParts:
        """``OUT.shards``, keyed by what the plate tables depend on (models, thresholds, features, the tree)."""
        return ShardParts(self.layout.root, digest({"manifest": self.manifest(),
                                                    "fields": digest([f.key for f in self.selected])}))

    def _finish_shard(self, res: PlateResult) -> None:
        """Mark the shard finished once every field of it was tried (not when ``max_fields`` stopped it), then
        merge when it was the last."""
        assert self.shard is not None
        failed = {line.split(": ", 1)[0] for line in res.failed}
        if any(f.key not in failed for f in self.pending()):
            return
        parts = self.shard_parts()
        tables = parts.finish_and_merge(self.shard, {"fields": len(self.fields), "failed": res.failed},
                                        lambda markers: self._merge(parts, markers))
        res.shard_finished = True
        res.merged = tables is not None
        res.tables = tables or []
        res.waiting = [] if res.merged else [str(s) for s in parts.missing(self.shard.count)]

    def merge_shards(self) -> list[Path]:
        """``segment-plate --merge``: the plate tables from every finished shard's fields (refused, naming them,
        while a shard is missing or was run with other options)."""
        parts = self.shard_parts()
        return parts.merge(lambda markers: self._merge(parts, markers))

    def _merge(self, parts: ShardParts, markers: dict[Shard, dict[str, Any]]) -> list[Path]:
        """The plate tables of every finished plate; the markers go once every selected field is done (a shard with
        failed fields is run again to retry them, and merges again)."""
        tables = self.write_plate_tables()
        failed = [line for info in markers.values() for line in info.get("failed", [])]
        if failed:
            log.warning("%d field(s) failed in the shards (e.g. %s); their plates have no table until those shards "
                        "run again", len(failed), failed[0])
        if all(self.layout.part(f).is_file() for f in self.selected):
            parts.clear()
        return tables

    def objects(self) -> int:
        """Cells (or nuclei, in a nuclei-only run) in the finished measurement parts of this run's fields."""
        import pyarrow.parquet as pq

        return sum(pq.read_metadata(p).num_rows for p in map(self.layout.part, self.fields) if p.is_file())

    @staticmethod
    def _collect(f: Any, fut: Future, res: PlateResult) -> int:
        try:
            fut.result()
            return 1
        except (OSError, ValueError, DinocellError) as exc:
            log.warning("%s: failed: %s", f.key, exc)
            res.failed.append(f"{f.key}: {exc}")
            return 0

    def _read(self, f: Any) -> dict[int, np.ndarray]:
        from dinocell_core.io.tiffio import read_tiff

        model_chans = {c for chans in self.model_inputs.values() for c in chans}
        need = sorted(model_chans | set(self.measure_channels))
        lacking = [CHANNELS[c] for c in sorted(model_chans) if c not in f.paths]
        if lacking:
            raise PlateError(f"field lacks the model channel(s) {', '.join(lacking)}")
        return {c: read_tiff(f.path(self.root, c)) for c in need if c in f.paths}

    def _finish(self, f: Any, images: dict[int, np.ndarray], dists: dict[str, np.ndarray],
                segs: dict[str, Any]) -> None:
        """Labels, measurements, files — in the post-processing thread."""
        import tifffile

        from dinocell_core.seg.distance import compact_labels

        labels = {obj: segs[obj].labels(d) for obj, d in dists.items()}
        for obj, lab in labels.items():
            with atomic_path(self.layout.labels(f, obj)) as tmp:
                tifffile.imwrite(tmp, compact_labels(lab), compression="zlib")
        table = measure_cells(labels.get(CELLS), labels.get(NUCLEI),
                              {CHANNELS[c]: images[c] for c in self.measure_channels if c in images},
                              self.features)
        table.insert(0, "Metadata_SK", np.int64(f.sk))
        table.insert(0, "Metadata_PlateFolder", f.plate_folder)
        table.insert(0, "Metadata_Site", np.int64(f.site))
        table.insert(0, "Metadata_Well", f.well)
        table.insert(0, "Metadata_Plate", f.plate)
        table = table.reindex(columns=self.columns)  # a channel a field lacks: NaN columns, same schema
        for c in table.columns:
            if c not in ("Metadata_Plate", "Metadata_Well", "Metadata_PlateFolder"):
                ints = ("Metadata_Site", "Metadata_SK", "ObjectNumber", *RELATION_COLUMNS)
                kind = "int64" if c in ints else "float64"
                table[c] = table[c].astype(kind)
        with atomic_path(self.layout.part(f)) as tmp:
            table.to_parquet(tmp, index=False)

    def write_plate_tables(self) -> list[Path]:
        """Stream the parts of every finished plate into ``<plate folder>.parquet`` (one part in memory at once);
        only plates whose every field is done are written."""
        import pyarrow.parquet as pq

        out = []
        by_plate: dict[str, list[Any]] = {}
        for f in self.plate_fields:  # every field of the plate, also when this run covers some wells only
            by_plate.setdefault(f.plate_folder, []).append(f)
        for plate_folder, fields in by_plate.items():
            parts = [self.layout.part(f) for f in fields]
            if not all(p.is_file() for p in parts):
                continue
            target = self.layout.plate_table(plate_folder)
            with atomic_path(target) as tmp:
                writer = None
                try:
                    for p in parts:
                        t = pq.read_table(p)
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, t.schema)
                        writer.write_table(t.cast(writer.schema))
                finally:
                    if writer is not None:
                        writer.close()
            out.append(target)
        return out


def _canonical_root(root: str) -> str:
    """The tree a root names: an ``s3://`` URL as given, a local folder or index CSV by its resolved path."""
    return root.rstrip("/") if "://" in root else os.path.realpath(root)


def tree_identity(root: str, fields: Sequence[Any]) -> dict[str, Any]:
    """What an output folder records about the image tree its fields come from: the resolved root, and per plate
    folder a digest of its fields' image locations and of the size and time of its first field's local files
    (the same plate of another tree, a tree regenerated in place, or other files, differ)."""
    digests: dict[str, Any] = {}
    for f in sorted(fields, key=lambda f: f.key):
        first = f.plate_folder not in digests
        h = digests.setdefault(f.plate_folder, hashlib.sha256())
        h.update(f.key.encode())
        for ch in sorted(f.paths):
            location = f.path(root, ch)
            h.update(f"\0{ch}\0{location}".encode())
            if first and "://" not in location:
                try:
                    st = os.stat(location)
                    h.update(f"\0{st.st_size}\0{st.st_mtime_ns}".encode())
                except OSError:
                    h.update(b"\0missing")
        h.update(b"\n")
    return {"root": _canonical_root(root), "plates": {pf: h.hexdigest()[:32] for pf, h in digests.items()}}


def read_plate(out: str | os.PathLike[str], plate_folder: str) -> pd.DataFrame:
    """A finished plate's per-cell table (for pycytominer: ``aggregate(read_plate(...), strata=[...])``)."""
    return pd.read_parquet(PlateLayout(Path(out)).plate_table(plate_folder))
