"""Images → well profiles: Kim et al.'s tiles or per-cell crops, any backbone (or the hand-crafted baseline),
unit → site → well.

Each field's channels are illumination-corrected (optional) and robust-normalised one by one (the training data
path, :class:`dinocell_core.jump.preprocess.Preprocessor`); the field is cut into non-overlapping ``tile`` px tiles
from the top-left, and a tile is kept when ≥ ``min_dna_fraction`` of its DNA pixels exceed ``otsu_factor`` × the
field's Otsu threshold (if none is, the middle tile is kept), as in Kim et al. 2023. With ``units="cells"`` the
units are instead fixed-size crops centred on each object of a labels store (:mod:`dinocell_core.profiling.cells`);
fields without labels are skipped and listed, fields whose mask holds no object give no site row (also listed),
and ``OUT.fields.csv`` records every field's unit count and status. Views (``channels``): each fluorescent
channel embedded separately and concatenated (the default for every ViT backbone), the fluorescent mean (the
hand-crafted baseline's default) or one channel; ``OUT.json`` records which (``readout``). Tokens: CLS, mean patch
token, or both (settings: :mod:`dinocell_core.profiling.settings`). Sites are processed in fixed chunks written as
``OUT.parts/chunk_*.npz`` so a killed run continues where it stopped; the well table is assembled (and annotated
with CPJUMP1 metadata) at the end. Sharded (``--shard I/N``, or one shard per torchrun rank), each shard embeds the
chunks whose name hashes to it and the last to finish assembles the table: a chunk is embedded (its units batched)
exactly as in one run, so the table is the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from dinocell_core.io.fsutil import atomic_path, atomic_write_json
from dinocell_core.io.shards import Shard, ShardParts, digest
from dinocell_core.jump.channels import FLUORESCENT, channel_number
from dinocell_core.jump.index import SOURCE_PREFIX, Field
from dinocell_core.profiling.cells import CellSource, crop_stack
from dinocell_core.profiling.settings import BASELINE, CELLPROFILER, EmbedSettings
from dinocell_core.profiling.table import ProfileError, info_path

DNA = channel_number("DNA")  # ch5 in the CPJUMP1 vocabulary


class TileEmbedder(Protocol):
    feature_names: Sequence[str]

    def __call__(self, tiles: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, object]: ...


class BackboneEmbedder:
    """A DINOv3 backbone on [N, t, t] tiles in [0, 1] (or [N, 5, t, t] fluorescent stacks for a 5-plane backbone)
    → CLS and/or mean patch token (after the final norm). ``precision``: auto | fp32 | bf16
    (:func:`~dinocell_core.device.resolve_precision`: auto is bf16 autocast on a CUDA GPU, fp32 on a CPU); the
    vectors leave as float32 either way."""

    def __init__(self, backbone: Any, device: Any, tokens: str = "cls", batch_size: int = 64,
                 label: str = "backbone", precision: str = "auto") -> None:
        import torch

        from dinocell_core.device import resolve_precision

        self.backbone = backbone.to(device).eval()
        self.device = device
        self.precision = resolve_precision(precision, torch.device(device))
        self.tokens = tokens
        self.batch_size = batch_size
        self.label = label
        self.in_chans = int(getattr(backbone, "in_chans", 3))
        d = int(backbone.embed_dim)
        parts = ["cls", "mean_patch"] if tokens == "cls+mean_patch" else [tokens]
        self.feature_names = [f"{p}_{i:04d}" for p in parts for i in range(d)]

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        import torch

        out = []
        p = self.backbone.patch_size
        if tiles.shape[-1] % p or tiles.shape[-2] % p:
            raise ProfileError(f"unit size {tuple(tiles.shape[-2:])} px (--tile / --crop) is not a multiple of the "
                               f"patch size {p}")
        with torch.inference_mode():
            for i in range(0, len(tiles), self.batch_size):
                x = self.precision.to_device(torch.from_numpy(np.ascontiguousarray(tiles[i:i + self.batch_size])))
                x = x[:, None] if x.ndim == 3 else x  # one plane per tile, or a stack of planes
                with self.precision.autocast():
                    tok = self.backbone.forward_tokens(self.backbone.normalize_input(x.float()))
                parts = []
                if self.tokens in ("cls", "cls+mean_patch"):
                    parts.append(tok["cls"].float())
                if self.tokens in ("mean_patch", "cls+mean_patch"):
                    parts.append(tok["patches"].float().mean(dim=1))  # the mean in fp32, not over bf16 tokens
                out.append(torch.cat(parts, dim=1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.feature_names)), np.float32)

    def describe(self) -> dict[str, object]:
        return {"kind": "backbone", "label": self.label, **self.backbone.metadata(), "tokens": self.tokens}


def make_embedder(s: EmbedSettings) -> TileEmbedder:
    """The baseline, a random-init backbone (seeded) or the backbone of any weights load_backbone accepts
    (``cellprofiler`` embeds no units: :mod:`dinocell_core.profiling.cellprofiler`)."""
    if s.backbone == CELLPROFILER:
        raise ProfileError("backbone 'cellprofiler' is no unit embedder; profile embed measures cells instead")
    if s.backbone == BASELINE:
        from dinocell_core.profiling.baseline import BaselineEmbedder

        return BaselineEmbedder()
    import torch

    from dinocell_core.backbones.loading import backbone_from_weights, load_backbone
    from dinocell_core.device import resolve_device

    device = resolve_device(s.device)
    if s.backbone == "random":
        torch.manual_seed(s.seed)
        model = load_backbone(s.arch or "vit_small", patch_size=s.patch_size, **(s.model_kwargs or {}))
        label = f"random init ({s.arch or 'vit_small'}, seed {s.seed})"
    else:
        from dinocell_core.io.checkpoint import CheckpointError, resolve_checkpoint

        try:
            resolved = resolve_checkpoint(Path(s.backbone).expanduser())  # a run dir → its newest checkpoint
        except CheckpointError as exc:
            raise ProfileError(str(exc)) from None
        model = backbone_from_weights(str(resolved), s.arch, s.patch_size)
        st = resolved.stat()
        label = f"{resolved.resolve()} ({st.st_size} B, mtime {int(st.st_mtime)})"
    size = s.crop if s.units == "cells" else s.tile
    if size % model.patch_size:
        raise ProfileError(f"{'crop' if s.units == 'cells' else 'tile'} {size} px is not a multiple of the "
                           f"backbone's patch size {model.patch_size}")
    return BackboneEmbedder(model, device, s.tokens, s.batch_size, label, s.precision)


STACK = "stack"  # the view of a fluorescent_stack backbone: the five fluorescent channels as one input


def readout_views(s: EmbedSettings, in_chans: int = 3) -> list[tuple[str, tuple[int, ...]]]:
    """(view name, channels) an embedder of ``in_chans`` input planes is fed. A ``fluorescent_stack`` backbone (5
    planes) embeds the five fluorescent channels as one stacked input — there is no per-channel read-out of a stack
    model, whatever ``channels`` asks; every other embedder gets the views of ``channels``."""
    return [(STACK, tuple(FLUORESCENT))] if in_chans == len(FLUORESCENT) else s.views()


def embedder_planes(embedder: TileEmbedder) -> int:
    """Input planes of an embedder (3 unless it is a stack backbone's)."""
    return int(getattr(embedder, "in_chans", 3))


# ------------------------------------------------------------------------------------------------ tiles

def tile_boxes(h: int, w: int, tile: int) -> list[tuple[int, int]]:
    if h < tile or w < tile:
        raise ProfileError(f"field {h}×{w} px is smaller than one {tile}-px tile; choose a smaller tile")
    return [(y, x) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]


def valid_tiles(dna: np.ndarray, boxes: list[tuple[int, int]], tile: int, s: EmbedSettings) -> list[int]:
    """Indices of the tiles with enough DNA signal (Kim et al.); the middle tile when none has."""
    from skimage.filters import threshold_otsu

    thr = s.otsu_factor * float(threshold_otsu(dna)) if float(dna.max()) > float(dna.min()) else np.inf
    keep = [i for i, (y, x) in enumerate(boxes) if float((dna[y:y + tile, x:x + tile] > thr).mean())
            >= s.min_dna_fraction]
    return keep or [len(boxes) // 2]


class FieldReader:
    """Field → {view: [n_units, t, t] float32} (tiles, or cell crops from ``cells``); illumination cached per plate."""

    def __init__(self, root: str, s: EmbedSettings, storage: Any = None, cells: CellSource | None = None,
                 in_chans: int = 3) -> None:
        from dinocell_core.jump.preprocess import IlluminationCache, Preprocessor

        if s.units == "cells" and cells is None:
            raise ProfileError("units 'cells' needs a CellSource (the labels store)")
        self.root, self.s, self.storage, self.cells = root, s, storage, cells
        self.pre = Preprocessor(low=s.norm_percentiles[0], high=s.norm_percentiles[1], illumination=s.illumination)
        self.illum = IlluminationCache(storage=storage)
        self.views = readout_views(s, in_chans)
        need_dna = {DNA} if s.units == "tiles" else set()  # the tile rule looks at DNA
        self.channels = sorted(need_dna | {c for _, chs in self.views for c in chs})

    def __call__(self, field: Field) -> dict[str, np.ndarray]:
        from dinocell_core.jump.preprocess import read_field

        raw = read_field(self.root, field, self.channels, storage=self.storage)
        norm = {}
        for ch, img in zip(self.channels, raw):
            inv = self.illum.inverse(self.root, field, ch, img.shape) if self.s.illumination else None
            norm[ch] = self.pre.channel(img, inv)
        if self.cells is not None:
            origins = self.cells.origins(field, tuple(raw.shape[1:]))
            return {name: _crop_units(self._view(norm, name, chs), origins, self.s.crop) for name, chs in self.views}
        t = self.s.tile
        boxes = tile_boxes(*raw.shape[1:], t)
        keep = [boxes[i] for i in valid_tiles(norm[DNA], boxes, t, self.s)]
        out = {}
        for name, chs in self.views:
            view = self._view(norm, name, chs)
            out[name] = np.stack([view[..., y:y + t, x:x + t] for y, x in keep]).astype(np.float32)
        return out

    def _view(self, norm: dict[int, np.ndarray], name: str, chs: tuple[int, ...]) -> np.ndarray:
        if name == STACK:
            return np.stack([norm[c] for c in chs])
        return norm[chs[0]] if len(chs) == 1 else self.pre.fluorescent_mean([norm[c] for c in chs])


def _crop_units(view: np.ndarray, origins: np.ndarray, size: int) -> np.ndarray:
    """Cell crops of a view: [n, size, size], or [n, planes, size, size] of a stack."""
    if view.ndim == 2:
        return crop_stack(view, origins, size)
    return np.stack([crop_stack(plane, origins, size) for plane in view], axis=1)


def _agg(x: np.ndarray, how: str) -> np.ndarray:
    return np.median(x, axis=0) if how == "median" else x.mean(axis=0)


def feature_names(s: EmbedSettings, embedder: TileEmbedder) -> list[str]:
    return [f"{view}_{n}" for view, _ in readout_views(s, embedder_planes(embedder)) for n in embedder.feature_names]


FLUSH_BATCHES = 4  # units are embedded once this many batches are waiting (bounds memory with per-cell crops)


def embed_chunk(fields: Sequence[Field], reader: FieldReader, embedder: TileEmbedder, s: EmbedSettings
                ) -> tuple[np.ndarray, np.ndarray]:
    """Site features [n_sites, D] (units aggregated per site; NaN for a site without units) and the unit counts,
    batching units across sites."""
    views = [name for name, _ in readout_views(s, embedder_planes(embedder))]
    dim = len(views) * len(embedder.feature_names)
    counts: list[int] = []
    done: list[np.ndarray] = []
    waiting: list[dict[str, np.ndarray]] = []

    def flush() -> None:
        if waiting:
            cols = [np.asarray(embedder(np.concatenate([u[v] for u in waiting])), dtype=np.float32) for v in views]
            done.append(np.concatenate(cols, axis=1))
            waiting.clear()

    pending = 0  # units in ``waiting``
    for f in fields:
        units = reader(f)
        counts.append(len(units[views[0]]))
        if counts[-1]:
            waiting.append(units)
            pending += counts[-1]
        if pending >= FLUSH_BATCHES * s.batch_size:
            flush()
            pending = 0
    flush()
    emb = np.concatenate(done) if done else np.zeros((0, dim), np.float32)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    sites = np.full((len(fields), dim), np.nan, np.float32)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if b > a:
            sites[i] = _agg(emb[a:b], s.site_aggregation)
    return sites, np.asarray(counts, dtype=np.int64)


def iter_site_chunks(fields: Sequence[Field], reader: FieldReader, embedder: TileEmbedder, s: EmbedSettings,
                     skip: Callable[[int], bool] = lambda i: False
                     ) -> Iterator[tuple[int, Sequence[Field], np.ndarray, np.ndarray]]:
    for i, start in enumerate(range(0, len(fields), s.chunk_sites)):
        if skip(i):
            continue
        chunk = fields[start:start + s.chunk_sites]
        sites, counts = embed_chunk(chunk, reader, embedder, s)
        yield i, chunk, sites, counts


def site_frame(fields: Sequence[Field], sites: np.ndarray, counts: np.ndarray, names: list[str],
               unit_column: str = "Metadata_Tile_Count") -> pd.DataFrame:
    meta = pd.DataFrame({"Metadata_Plate": [f.plate for f in fields], "Metadata_Well": [f.well for f in fields],
                         "Metadata_Site": [f.site for f in fields], unit_column: counts})
    return pd.concat([meta, pd.DataFrame(sites, columns=names)], axis=1)


def embed_sites(fields: Sequence[Field], reader: FieldReader, embedder: TileEmbedder, s: EmbedSettings
                ) -> tuple[pd.DataFrame, list[str]]:
    """Site rows of ``fields`` in memory (no parts folder, not resumable): for short held-out sets such as the
    evaluation during pretraining. Returns the site frame and its feature column names."""
    names = feature_names(s, embedder)
    frames = [site_frame(chunk, sites, counts, names, s.unit_column)
              for _, chunk, sites, counts in iter_site_chunks(fields, reader, embedder, s)]
    return pd.concat(frames, ignore_index=True), names


def aggregate_wells(sites: pd.DataFrame, names: list[str], how: str,
                    unit_column: str = "Metadata_Tile_Count") -> pd.DataFrame:
    """Site rows (those with units) → one row per (plate, well), site and unit counts kept as metadata."""
    g = sites[sites[unit_column] > 0].groupby(["Metadata_Plate", "Metadata_Well"], sort=True)
    feats = g[names].median() if how == "median" else g[names].mean()
    counts = g.agg(Metadata_Site_Count=("Metadata_Site", "size"), **{unit_column: (unit_column, "sum")})
    return pd.concat([counts, feats], axis=1).reset_index()


# ------------------------------------------------------------------------------------------------ resumable run

def parts_dir(out: str | os.PathLike[str]) -> Path:
    return Path(f"{out}.parts")


def _fields_digest(fields: Sequence[Field]) -> str:
    h = hashlib.sha256()
    for f in fields:
        h.update(f.key.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _open_parts(out: Path, s: EmbedSettings, embedder: TileEmbedder, fields: Sequence[Field],
                cells: CellSource | None = None) -> tuple[Path, str]:
    """The parts folder (made, or checked against this run) and the digest every shard of the run shares."""
    parts = parts_dir(out)
    manifest = {"settings": s.fingerprint(), "fields": _fields_digest(fields), "n_fields": len(fields),
                "chunk_sites": s.chunk_sites, "embedder": embedder.describe(),
                "labels": cells.identity() if cells is not None else None}
    mpath = parts / "manifest.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        keys = ("settings", "fields", "chunk_sites", "embedder", "labels")
        if {k: old.get(k) for k in keys} != json.loads(json.dumps({k: manifest[k] for k in keys})):
            raise ProfileError(f"{parts} holds a run with other settings, other fields, another checkpoint or "
                               "another labels store; use the same options to resume, or delete that folder to "
                               "start over")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_json(mpath, manifest)
    return parts, digest({k: manifest[k] for k in ("settings", "fields", "chunk_sites", "embedder", "labels")})


def _chunk_path(parts: Path, i: int) -> Path:
    return parts / f"chunk_{i:06d}.npz"


def _save_chunk(path: Path, sites: np.ndarray, counts: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, sites=sites, counts=counts)


def fields_path(out: str | os.PathLike[str]) -> Path:
    """``OUT.fields.csv``: every field's unit count and status (embedded, no labels, no cells)."""
    return Path(f"{out}.fields.csv")


def _examples(fields: Sequence[Field], n: int = 3) -> str:
    return ", ".join(f.key for f in fields[:n]) + (" …" if len(fields) > n else "")


def _write_field_table(path: Path, sites: pd.DataFrame, unlabelled: Sequence[Field], unit_column: str,
                       unit: str) -> None:
    table = sites[["Metadata_Plate", "Metadata_Well", "Metadata_Site", unit_column]].rename(
        columns={unit_column: "units"})
    table["status"] = np.where(table["units"] > 0, "embedded", f"no {unit}")
    if unlabelled:
        table = pd.concat([table, pd.DataFrame({
            "Metadata_Plate": [f.plate for f in unlabelled], "Metadata_Well": [f.well for f in unlabelled],
            "Metadata_Site": [f.site for f in unlabelled], "units": 0, "status": "no labels"})], ignore_index=True)
    table = table.sort_values(["Metadata_Plate", "Metadata_Well", "Metadata_Site"], kind="stable")
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def embed_profiles(root: str, fields: Sequence[Field], out: str | os.PathLike[str], s: EmbedSettings,
                   metadata: str | os.PathLike[str] | None = None, storage: Any = None, progress: bool = True,
                   embedder: TileEmbedder | None = None, report: Callable[[str], None] | None = None,
                   shard: Shard | None = None, merge: bool = False) -> pd.DataFrame | None:
    """Embed every field (resuming from ``OUT.parts``), aggregate to wells, annotate, write ``out``.

    Fields left out (no labels; no cells in the mask; wells with no embedded site) are passed to ``report``
    (default: printed to stderr), listed in ``OUT.json`` ``notes`` and, per field, in ``OUT.fields.csv``.
    ``shard``: embed that shard's chunks only and return None, unless it finishes last: then write and return the
    table as one run does. ``merge``: only assemble the finished shards' chunks (a missing shard is a ShardError)."""
    say = report or (lambda msg: print(msg, file=sys.stderr))
    if not fields:
        raise ProfileError(f"no complete fields under {root}")
    if s.backbone == CELLPROFILER and embedder is None:
        from dinocell_core.profiling.cellprofiler import cellprofiler_profiles

        return cellprofiler_profiles(root, fields, out, s, metadata, storage, progress, say, shard, merge)
    fields = sorted(fields, key=lambda f: (f.plate, f.well, f.site, f.plate_folder, f.sk))
    cells, unlabelled, notes = None, [], []
    if s.units == "cells":
        cells = CellSource(str(s.labels), s.centre, s.crop, s.border)
        fields, unlabelled = cells.split(fields)
        if unlabelled:
            notes.append(f"{len(unlabelled)} field(s) skipped: no labels in {s.labels} ({_examples(unlabelled)})")
            say(notes[-1])
    embedder = embedder or make_embedder(s)
    parts, run_digest = _open_parts(Path(out), s, embedder, fields, cells)
    n_chunks = -(-len(fields) // s.chunk_sites)
    shards = ShardParts(out, run_digest)

    def assemble(_: object = None) -> pd.DataFrame:
        wells = _assemble(root, fields, unlabelled, notes, out, s, embedder, parts, n_chunks, metadata, say)
        shards.clear()
        return wells

    if merge:
        return shards.merge(assemble)
    if shard is not None:
        shards.start(shard)
    mine = {i for i in range(n_chunks) if shard is None or shard.owns(_chunk_path(parts, i).name)}
    todo = {i for i in mine if not _chunk_path(parts, i).is_file()}
    bar = None
    if progress:
        from tqdm import tqdm

        n_sites = lambda chunks: sum(len(fields[i * s.chunk_sites:(i + 1) * s.chunk_sites]) for i in chunks)
        bar = tqdm(total=n_sites(mine), initial=n_sites(mine - todo), unit="field", dynamic_ncols=True,
                   desc="embed" if shard is None else f"embed shard {shard}")
    reader = FieldReader(root, s, storage, cells, embedder_planes(embedder))
    try:
        for i, chunk, sites, counts in iter_site_chunks(fields, reader, embedder, s, skip=lambda i: i not in todo):
            _save_chunk(_chunk_path(parts, i), sites, counts)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if shard is None:
        return assemble()
    return shards.finish_and_merge(shard, {"chunks": len(mine)}, assemble)


def _assemble(root: str, fields: Sequence[Field], unlabelled: Sequence[Field], notes: list[str],
              out: str | os.PathLike[str], s: EmbedSettings, embedder: TileEmbedder, parts: Path, n_chunks: int,
              metadata: str | os.PathLike[str] | None, say: Callable[[str], None]) -> pd.DataFrame:
    """Every chunk's sites → the well table, ``OUT.fields.csv`` and ``OUT.json`` (written last)."""
    from dinocell_core.profiling.metadata import annotate
    from dinocell_core.profiling.table import write_profiles

    names = feature_names(s, embedder)
    frames = []
    for i in range(n_chunks):
        with np.load(_chunk_path(parts, i), allow_pickle=False) as z:
            chunk = fields[i * s.chunk_sites:(i + 1) * s.chunk_sites]
            frames.append(site_frame(chunk, z["sites"], z["counts"], names, s.unit_column))
    sites = pd.concat(frames, ignore_index=True)
    empty = sites[sites[s.unit_column] == 0]
    if len(empty):
        keys = [f"{p}/{w}/{i}" for p, w, i in zip(empty["Metadata_Plate"], empty["Metadata_Well"],
                                                  empty["Metadata_Site"])]
        notes.append(f"{len(empty)} field(s) gave no {s.units} and no site row ({', '.join(keys[:3])}"
                     f"{' …' if len(keys) > 3 else ''})")
        say(notes[-1])
    wells = aggregate_wells(sites, names, s.well_aggregation, s.unit_column)
    lost = sorted({(f.plate, f.well) for f in [*fields, *unlabelled]}
                  - set(zip(wells["Metadata_Plate"], wells["Metadata_Well"])))
    if lost:
        notes.append(f"{len(lost)} well(s) have no embedded field and are not in the table "
                     f"({', '.join(f'{p}/{w}' for p, w in lost[:3])}{' …' if len(lost) > 3 else ''})")
        say(notes[-1])
    if not len(wells):
        raise ProfileError(f"no field of {root} gave any {s.units}; nothing to write (see {fields_path(out)})")
    if metadata is not None:
        wells = annotate(wells, metadata)
    _write_field_table(fields_path(out), sites, unlabelled, s.unit_column, s.units)
    write_profiles(wells, out)
    readout = readout_record(s, embedder_planes(embedder))
    atomic_write_json(info_path(out), {"settings": s.model_dump(mode="json"), "readout": readout,
                                       "embedder": embedder.describe(), "n_fields": len(fields),
                                       "n_fields_without_labels": len(unlabelled),
                                       "n_units": int(sites[s.unit_column].sum()), "n_wells": len(wells),
                                       "notes": notes})
    return wells


def readout_record(s: EmbedSettings, in_chans: int = 3) -> dict[str, object]:
    """What ``OUT.json`` says about the table's read-out (``profiling.table.table_readout`` reads it back); a stack
    backbone's table holds the one ``stack`` view (:func:`readout_views`)."""
    return {"channels": s.channels, "views": [name for name, _ in readout_views(s, in_chans)], "tokens": s.tokens}


def find_metadata_dir(root: str) -> Path | None:
    """``workspace/metadata`` of a local CPJUMP1 source (or of the fixture root's ``source_4``)."""
    if "://" in root:
        return None
    for cand in (Path(root) / "workspace" / "metadata", Path(root) / SOURCE_PREFIX / "workspace" / "metadata"):
        if any(cand.rglob("barcode_platemap.csv")):
            return cand
    return None
