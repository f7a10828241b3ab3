"""DINO multi-crop SSL data: a deterministic, resumable, rank-sharded stream of crop sets from JUMP fields.

Stream design (why it is reproducible): sample ``g`` of the global stream is fully determined by
``(seed, g)`` and the field slot it is drawn from — never by worker ids or global RNG state — so the stream is
identical for any ``num_workers``, and a run resumed at step ``s`` starts the sampler at ``s`` and sees exactly
what an uninterrupted run would. Field slots walk a fresh seeded permutation of the index every epoch; each rank
takes its own slots. ``crops_per_field`` consecutive samples of a batch share one decoded field (decoding 5 LZW
TIFFs is the floor of the loader's cost). A bad file skips deterministically to the next field of the
permutation; the failure (path, reason) travels with the batch and :class:`FailureBudget` stops the run when too
many reads fail.

What a sample holds: ``data.channel_mode`` picks the view of every crop (the fluorescent mean; one fluorescent
channel per sample, balanced over the five, for all its crops; the five fluorescent channels as a 5-plane stack; one
fixed channel; or multiview). ``data.second_view: same_well`` cuts the second global crop and half of the locals
from another site of the same well, so the two views share the biology of the well but not the field's nuisance
(focus, density, exposure). Each crop is cut from each channel's raw counts, jittered there (gamma, gain, offset)
and only then normalised — with the field's own percentiles, or its plate's levels (``data.normalization: plate``,
:mod:`dinocell_core.ssl.normalization`) — as a field imaged differently would be.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from dinocell_core.errors import DinocellError
from dinocell_core.io.images import scale_to_unit
from dinocell_core.io.tiffio import BadImageError, odd_shape, read_tiff
from dinocell_core.jump.channels import FLUORESCENT, FMEAN, FSINGLE, FSTACK
from dinocell_core.jump.index import Field, FieldTable, load_field_table
from dinocell_core.jump.preprocess import IlluminationCache, Preprocessor
from dinocell_core.ssl.augment import (
    MaskingGenerator,
    augment,
    crop_resize,
    draw_intensity,
    ibot_masks,
    intensity_curve,
    sample_crop_box,
    sample_crop_box_px,
)
from dinocell_core.ssl.config import DataConfig
from dinocell_core.ssl.losses import masked_patch_weights
from dinocell_core.ssl.normalization import PlateLevels, plate_levels
from dinocell_core.ssl.prepared_store import PreparedStore, views_for

log = logging.getLogger(__name__)

class NoFieldsError(DinocellError, ValueError):
    """The data root holds no complete field: raised before training starts."""


class TooManyFailures(DinocellError, RuntimeError):
    """More reads failed than ``max_failure_fraction`` allows."""


class SharedMemoryTooSmall(DinocellError, RuntimeError):
    """``/dev/shm`` cannot hold even one batch per loader worker: the workers would die with a bus error."""


class FailureBudget:
    """Counts good samples and failed field reads; raises :class:`TooManyFailures` above ``max_fraction``
    (only after ``min_samples`` attempts, so one early bad file does not stop a run)."""

    def __init__(self, max_fraction: float, min_samples: int = 200) -> None:
        self.max_fraction = max_fraction
        self.min_samples = min_samples
        self.n_ok = 0
        self.n_failed = 0
        self.examples: list[tuple[str, str]] = []

    def update(self, n_ok: int, n_failed: int, failures: Sequence[tuple[str, str]] = ()) -> None:
        self.n_ok += n_ok
        self.n_failed += n_failed
        for f in failures:
            if len(self.examples) < 5:
                self.examples.append(tuple(f))  # type: ignore[arg-type]
        total = self.n_ok + self.n_failed
        if total >= self.min_samples and self.n_failed > self.max_fraction * total:
            shown = "; ".join(f"{p}: {r}" for p, r in self.examples) or "none recorded"
            raise TooManyFailures(
                f"{self.n_failed} of {total} field reads failed ({self.n_failed / total:.1%}), more than "
                f"data.max_failure_fraction={self.max_fraction:.1%}; check the data (first failures: {shown})")

    @property
    def fraction(self) -> float:
        total = self.n_ok + self.n_failed
        return self.n_failed / total if total else 0.0


# --------------------------------------------------------------------------------------------------- dataset

def preprocessor_for(cfg: DataConfig) -> Preprocessor:
    return Preprocessor(low=cfg.norm_percentiles[0], high=cfg.norm_percentiles[1], illumination=cfg.illumination,
                        clahe=cfg.clahe, clahe_clip_limit=cfg.clahe_clip_limit)


STACK = "stack"  # the view of fluorescent_stack: the five fluorescent channels as planes of one crop


@dataclass
class Plane:
    """One channel of a field as crops are cut from it: the image before normalisation and the levels (lo, hi)
    that normalise it to 0 and 1. From TIFFs: the (illumination-corrected) counts and the field's percentiles (or its
    plate's levels); from a prepared store or after CLAHE (whole-field operations), the normalised image with levels
    (0, 1). ``per_field``: the levels are the field's own, so they follow its intensity jitter (the jittered
    field's percentiles); plate levels stay put, so a jittered gain or offset shows."""

    image: np.ndarray
    lo: float
    hi: float
    per_field: bool = True


class _FieldCache:
    """Planes of one field decoded so far, and the field's image shape (the first seen twice: a wrong-size first
    channel is not it)."""

    def __init__(self) -> None:
        self.planes: dict[int, Plane] = {}
        self.shape: tuple[int, ...] | None = None
        self.votes: dict[tuple[int, ...], int] = {}


def single_channel(seed: int, sample_id: int) -> int:
    """The fluorescent channel of sample ``sample_id`` in ``fluorescent_single`` mode: every block of 5 consecutive
    sample ids holds each channel once, in a seeded order, so the stream is balanced over channels and any resumed
    or re-sharded stream draws the same channel for the same sample."""
    n = len(FLUORESCENT)
    block, pos = divmod(int(sample_id), n)
    return int(FLUORESCENT[int(np.random.default_rng([seed, 0x51C4, block]).permutation(n)[pos])])


class WellPartners:
    """For ``second_view: same_well``: which fields have another site of their well (label-free: plate layout only),
    and a draw of one of those sites. Wells with a single site are skipped (counted in ``skipped_wells``)."""

    def __init__(self, fields: Sequence[Field]) -> None:
        wells: dict[tuple[str, str], int] = {}
        group = np.empty(len(fields), np.int64)
        self.sites = np.empty(len(fields), np.int64)
        for i in range(len(fields)):
            f = fields[i]
            group[i] = wells.setdefault((f.plate, f.well), len(wells))
            self.sites[i] = f.site
        self.order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[self.order], np.arange(len(wells) + 1))
        self.start, self.stop = bounds[group], bounds[group + 1]
        n_sites = np.array([len(np.unique(self.sites[self.order[a:b]])) for a, b in zip(bounds[:-1], bounds[1:])])
        self.skipped_wells = int((n_sites < 2).sum())
        self.eligible = np.flatnonzero(n_sites[group] >= 2)
        if not len(self.eligible):
            names = [f"{p}/{w}" for p, w in list(wells)[:3]]
            raise NoFieldsError(f"data.second_view=same_well needs wells with at least 2 sites, but every well has "
                                f"one (e.g. {', '.join(names)}{' …' if len(wells) > 3 else ''}); use same_field")

    def draw(self, i: int, rng: np.random.Generator) -> int:
        """A field of ``i``'s well imaged at another site."""
        members = self.order[self.start[i]:self.stop[i]]
        others = members[self.sites[members] != self.sites[i]]
        return int(others[int(rng.integers(0, len(others)))])


class SSLFieldDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``(sample_id, field_slot)`` pairs from :class:`SSLStreamSampler`."""

    MAX_CACHED_FIELDS = 3  # the sample's field, its same-well partner, and the previous field's partner

    def __init__(self, cfg: DataConfig, patch_size: int, seed: int, fields: Sequence[Field] | None = None) -> None:
        if cfg.global_size % patch_size:
            raise ValueError(f"data.global_size {cfg.global_size} must be a multiple of the patch size {patch_size}")
        self.cfg = cfg
        self.patch_size = patch_size
        self.seed = int(seed)
        self.mode = cfg.mode
        self.pre = preprocessor_for(cfg)
        self.storage = cfg.storage()
        self.root = str(cfg.root) if cfg.root is not None else ""
        if fields is None:
            fields = load_ssl_fields(cfg, self.storage)
        self.fields = fields if isinstance(fields, FieldTable) else FieldTable(fields)
        if not self.fields:
            raise NoFieldsError(f"no complete CPJUMP1 fields found under {cfg.root or cfg.index} (a field needs "
                                "all 8 channel files r..c..f..p01-ch1..8sk..fk1fl1.tiff in one plate folder)")
        self.partners = WellPartners(self.fields) if cfg.second_view == "same_well" else None
        if self.partners is not None and self.partners.skipped_wells:
            log.info("second_view same_well: %d well(s) with a single site skipped", self.partners.skipped_wells)
        self._cache: OrderedDict[str, _FieldCache] = OrderedDict()
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()
        self.prepared = PreparedStore(cfg.prepared, cfg) if cfg.prepared else None
        self._illum: IlluminationCache | None = None
        self.levels: PlateLevels | None = None
        if cfg.normalization == "plate" and self.prepared is None:  # a store holds channels already normalised
            from dinocell_core.profiling.embed import find_metadata_dir

            self.levels = plate_levels(self.fields, [int(c) for c in views_for(cfg)], self._corrected,
                                       cfg.norm_percentiles[0], cfg.norm_percentiles[1], cfg.plate_norm_fields,
                                       find_metadata_dir(self.root) if self.root else None)

    def __len__(self) -> int:
        return len(self.fields)

    def __getstate__(self) -> dict[str, Any]:
        """Workers get settings and the field table, never the parent's decoded-image caches."""
        state = self.__dict__.copy()
        state.update(_cache=OrderedDict(), _perms=OrderedDict(), _illum=None)
        return state

    # -- stream order
    def field_for_slot(self, slot: int, attempt: int = 0) -> int:
        """The field index of a stream slot: a seeded permutation per epoch over the fields a sample can start from
        (with same_well, those whose well has another site)."""
        pool = self.partners.eligible if self.partners is not None else None
        n = len(pool) if pool is not None else len(self.fields)
        epoch, pos = divmod(slot, n)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, 0xF1E1D, epoch]).permutation(n)
            self._perms[epoch] = perm
            if len(self._perms) > 2:
                self._perms.popitem(last=False)
        i = int(perm[(pos + attempt) % n])
        return int(pool[i]) if pool is not None else i

    # -- field planes
    def _field_cache(self, field: Field) -> _FieldCache:
        entry = self._cache.get(field.key)
        if entry is None:
            entry = self._cache[field.key] = _FieldCache()
            if len(self._cache) > self.MAX_CACHED_FIELDS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(field.key)
        return entry

    def plane(self, field: Field, ch: int) -> Plane:
        """Channel ``ch`` of ``field`` before normalisation (cached for the field's other crops)."""
        entry = self._field_cache(field)
        plane = entry.planes.get(ch)
        if plane is None:
            plane = entry.planes[ch] = self._load_plane(field, ch, entry)
        return plane

    def _load_plane(self, field: Field, ch: int, entry: _FieldCache) -> Plane:
        per_field = self.cfg.normalization == "field"
        if self.prepared is not None:
            return Plane(self.prepared.view(field, ch), 0.0, 1.0, per_field)
        img = self._corrected(field, ch, entry)
        lo, hi = self.levels[field.plate_folder][ch] if self.levels is not None else self.pre.references(img)
        if self.pre.clahe:  # CLAHE equalises the whole field: crops come from its output
            return Plane(self.pre.finish(img, lo, hi), 0.0, 1.0, per_field)
        return Plane(img, lo, hi, per_field)

    def _corrected(self, field: Field, ch: int, entry: _FieldCache | None = None) -> np.ndarray:
        """Channel ``ch`` as read (illumination-corrected when asked); ``entry`` learns the field's shape."""
        if ch not in field.paths:
            raise BadImageError(f"{field.key} ch{ch}", "channel missing from the index")
        shape = entry.shape if entry is not None else None
        raw = read_tiff(field.path(self.root, ch), storage=self.storage, dtype=np.uint16, shape=shape)
        if entry is not None and entry.shape is None:
            entry.votes[raw.shape] = entry.votes.get(raw.shape, 0) + 1
            if entry.votes[raw.shape] >= 2:
                entry.shape = raw.shape
        inv = None
        if self.pre.illumination:
            if self._illum is None:
                self._illum = IlluminationCache(storage=self.storage)
            inv = self._illum.inverse(self.root, field, ch, raw.shape)
        return self.pre.corrected(raw, inv)

    def view(self, field: Field, view: Any) -> np.ndarray:
        """One whole normalised view of ``field`` (a channel number or ``fluorescent_mean``), without augmentation:
        what ``jump prepare`` stores and what the crops are cut from (before their intensity jitter)."""
        channels = self._view_channels(view)
        planes = self._planes(field, channels)
        images = [scale_to_unit(p.image, p.lo, p.hi) for p in planes]
        return images[0] if len(images) == 1 else self.pre.fluorescent_mean(images)

    @staticmethod
    def _view_channels(view: Any) -> tuple[int, ...]:
        return tuple(FLUORESCENT) if view in (FMEAN, STACK) else (int(view),)

    def _planes(self, field: Field, channels: Sequence[int]) -> list[Plane]:
        planes = [self.plane(field, ch) for ch in channels]
        if len(planes) > 1:
            bad = odd_shape({str(field.path(self.root, ch)): p.image.shape for ch, p in zip(channels, planes)})
            if bad is not None:
                raise bad
        return planes

    # -- crops
    def _crop_views(self, rng: np.random.Generator, sample_id: int) -> tuple[list[Any], list[Any]]:
        cfg = self.cfg
        kind = self.mode.kind
        if kind == "channel":
            return [self.mode.channel] * cfg.n_global, [self.mode.channel] * cfg.n_local
        if kind in (FMEAN, FSTACK):
            view = FMEAN if kind == FMEAN else STACK
            return [view] * cfg.n_global, [view] * cfg.n_local
        if kind == FSINGLE:
            ch = single_channel(self.seed, sample_id)
            return [ch] * cfg.n_global, [ch] * cfg.n_local
        chans = cfg.multiview_channels
        pick = lambda: int(chans[int(rng.integers(0, len(chans)))])  # noqa: E731
        globals_ = [FMEAN] + [pick() for _ in range(cfg.n_global - 1)]
        return globals_, [pick() for _ in range(cfg.n_local)]

    def _crop(self, field: Field, view: Any, rng: np.random.Generator, scale: tuple[float, float],
              side_px: tuple[int, int] | None, size: int) -> np.ndarray:
        """One crop of ``view``: cut and resize each plane's raw counts, jitter them (:func:`intensity_curve`),
        normalise, then combine (mean, or stack) — intensity augmentation before normalisation, per plane."""
        planes = self._planes(field, self._view_channels(view))
        box = _box(rng, planes[0].image.shape, scale, side_px)
        out = []
        for p in planes:
            x = crop_resize(p.image, box, size)
            lo, hi = p.lo, p.hi
            jitter = draw_intensity(rng, self.cfg.augment)
            if jitter is not None:
                x, j_lo, j_hi = intensity_curve(x, lo, hi, *jitter)
                lo, hi = (j_lo, j_hi) if p.per_field else (lo, hi)
            out.append(scale_to_unit(x, lo, hi))
        if view == STACK:
            return np.stack(out)
        return out[0] if len(out) == 1 else self.pre.fluorescent_mean(out)

    def _make_sample(self, field: Field, index: int, sample_id: int, rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.cfg
        g_views, l_views = self._crop_views(rng, sample_id)
        g_fields, l_fields = [field] * len(g_views), [field] * len(l_views)
        if self.partners is not None:  # the second global crop and the second half of the locals: another site
            other = self.fields[self.partners.draw(index, rng)]
            g_fields[1:] = [other] * (len(g_views) - 1)
            half = len(l_views) - len(l_views) // 2
            l_fields[half:] = [other] * (len(l_views) - half)
        blur_p = cfg.augment.blur_p
        out_g = []
        for i, (view, f) in enumerate(zip(g_views, g_fields)):
            crop = self._crop(f, view, rng, cfg.global_scale, cfg.global_crop_px, cfg.global_size)
            out_g.append(augment(crop, rng, cfg.augment, blur_p[min(i, 1)]))
        out_l = []
        for view, f in zip(l_views, l_fields):
            crop = self._crop(f, view, rng, cfg.local_scale, cfg.local_crop_px, cfg.local_size)
            out_l.append(augment(crop, rng, cfg.augment, blur_p[2]))
        return {"global": out_g, "local": out_l, "views": [str(v) for v in g_views + l_views],
                "crop_fields": [f.key for f in g_fields + l_fields]}

    def __getitem__(self, index: tuple[int, int]) -> dict[str, Any]:
        sample_id, slot = (int(index[0]), int(index[1])) if isinstance(index, (tuple, list)) else (int(index),
                                                                                                   int(index))
        failures: list[tuple[str, str]] = []
        tries = min(self.cfg.max_retries, len(self.fields))
        for attempt in range(tries):
            i = self.field_for_slot(slot, attempt)
            field = self.fields[i]
            rng = np.random.default_rng([self.seed, sample_id, attempt])
            try:
                sample = self._make_sample(field, i, sample_id, rng)
            except BadImageError as exc:
                failures.append((exc.path, exc.reason))
                log.debug("skipping field %s: %s", field.key, exc)  # logged as a warning by SSLLoader
                self._cache.clear()
                continue
            sample.update(sample_id=sample_id, field=field.key, failures=failures)
            return sample
        raise TooManyFailures(f"{tries} fields in a row could not be read (last: "
                              + "; ".join(f"{p}: {r}" for p, r in failures[-3:]) + ")")


def _box(rng: np.random.Generator, shape: tuple[int, ...], scale: tuple[float, float],
         side_px: tuple[int, int] | None) -> tuple[int, int, int, int]:
    if side_px is not None:
        return sample_crop_box_px(rng, shape[0], shape[1], side_px)
    return sample_crop_box(rng, shape[0], shape[1], scale)


def load_ssl_fields(cfg: DataConfig, storage: Any = None) -> FieldTable:
    """Fields from ``data.index`` (a contract CSV) or ``data.root`` (cached index, refreshed on request)."""
    if cfg.root is None and cfg.index is None:
        raise NoFieldsError("data.root (a CPJUMP1 folder, s3:// prefix or load_data CSV) or data.index is required")
    if cfg.root is None:
        raise NoFieldsError("data.root is required with data.index: index paths are relative to the root")
    if "://" not in cfg.root and not os.path.exists(cfg.root):
        raise NoFieldsError(f"data.root {cfg.root} does not exist")
    return load_field_table(cfg.root, cache=cfg.index, refresh=cfg.refresh_index, load_data=cfg.load_data,
                            storage=storage)


def build_ssl_dataset(cfg: DataConfig, patch_size: int, seed: int) -> SSLFieldDataset:
    return SSLFieldDataset(cfg, patch_size, seed)


# -------------------------------------------------------------------------------------------- sampler/collate

class SSLStreamSampler:
    """Infinite (or ``steps``-long) batch sampler: step ``s`` of rank ``r`` yields ``(sample_id, field_slot)``
    pairs; ``crops_per_field`` consecutive samples share a slot (one decode, several crop sets)."""

    def __init__(self, batch_size: int, crops_per_field: int = 1, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, steps: int | None = None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.batch_size = batch_size
        self.k = crops_per_field
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.steps = steps
        self.slots_per_batch = math.ceil(batch_size / crops_per_field)

    def batch(self, step: int) -> list[tuple[int, int]]:
        unit = step * self.world_size + self.rank
        return [(unit * self.batch_size + j, unit * self.slots_per_batch + j // self.k)
                for j in range(self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.steps is None or step < self.start_step + self.steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("the SSL stream is infinite")
        return self.steps


class SSLCollate:
    """Stacks crops ([crops, B, planes, H, W]) and draws iBOT masks with an RNG keyed by the batch's first sample
    id (deterministic)."""

    def __init__(self, cfg: DataConfig, patch_size: int, seed: int) -> None:
        self.cfg = cfg
        self.seed = int(seed)
        self.grid = (cfg.global_size // patch_size, cfg.global_size // patch_size)
        n = self.grid[0] * self.grid[1]
        self.generator = MaskingGenerator(self.grid, max_num_patches=int(0.5 * n),
                                          min_num_patches=cfg.mask_min_patches, min_aspect=cfg.mask_min_aspect)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        b = len(samples)
        g = len(samples[0]["global"])
        glob = _with_planes(np.stack([np.stack(s["global"]) for s in samples], axis=1))
        if samples[0]["local"]:
            loc = _with_planes(np.stack([np.stack(s["local"]) for s in samples], axis=1))
        else:
            loc = np.zeros((0, b, glob.shape[2], self.cfg.local_size, self.cfg.local_size), np.float32)
        rng = np.random.default_rng([self.seed, 0x1B07, int(samples[0]["sample_id"])])
        masks = ibot_masks(g * b, self.grid, self.cfg.mask_probability, tuple(self.cfg.mask_ratio), rng,
                           self.generator).reshape(g, b, *self.grid)
        failures = [f for s in samples for f in s["failures"]]
        masks_t = torch.from_numpy(masks)
        fields = [s["field"] for s in samples]
        return {
            "global": torch.from_numpy(np.ascontiguousarray(glob, dtype=np.float32)),
            "local": torch.from_numpy(np.ascontiguousarray(loc, dtype=np.float32)),
            "masks": masks_t,
            **step_index_tensors(masks_t, fields),
            "n_failed": len(failures),
            "failures": failures,
            "sample_ids": [int(s["sample_id"]) for s in samples],
            "fields": fields,
            "views": [s["views"] for s in samples],
        }


def step_index_tensors(masks: torch.Tensor, fields: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """What the training step derives from the iBOT masks ([G, B, h, w] bool) and the field names, computed on the
    host: the masked positions of ``masks.flatten()``, each masked patch's 1/n_masked weight, and the field id of
    every sample (KoLeo's groups). On the device each would be a boolean index or a host→device copy, i.e. a sync."""
    flat = masks.flatten(0, 1).flatten(1)
    out = {"mask_indices": flat.flatten().nonzero().squeeze(1), "mask_weights": masked_patch_weights(flat)}
    if fields is not None:
        ids: dict[str, int] = {}
        out["groups"] = torch.tensor([ids.setdefault(f, len(ids)) for f in fields], dtype=torch.int64)
    return out


def _with_planes(crops: np.ndarray) -> np.ndarray:
    """[crops, B, H, W] one-plane crops → [crops, B, 1, H, W]; stacked crops already are [crops, B, C, H, W]."""
    return crops[:, :, None] if crops.ndim == 4 else crops


def _worker_init(_worker_id: int) -> None:
    from dinocell_core.runs.stopping import ignore_stop_signals

    ignore_stop_signals()  # a process-group SIGTERM is the trainer's to handle; it shuts its workers down itself
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


class SSLLoader:
    """Iterable over collated batches; applies the failure budget and logs every skipped file."""

    def __init__(self, loader: torch.utils.data.DataLoader, budget: FailureBudget,
                 dataset: SSLFieldDataset) -> None:
        self.loader = loader
        self.budget = budget
        self.dataset = dataset

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._batches(iter(self.loader))  # the workers start here, not at the first next()

    def _batches(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            for path, reason in batch["failures"]:
                log.warning("bad input skipped: %s: %s", path, reason)
            self.budget.update(len(batch["sample_ids"]), batch["n_failed"], batch["failures"])
            yield batch


SHM = "/dev/shm"
#: shared-memory headroom per batch: the collate's temporaries, torch's per-tensor segments, other processes
SHM_MARGIN = 1.25


def batch_nbytes(cfg: DataConfig, patch_size: int, batch_size: int) -> int:
    """Bytes one collated batch occupies in shared memory on its way from a worker: fp32 crops, bool masks, and the
    mask indices and weights (at most every global patch masked)."""
    planes = cfg.mode.in_chans if cfg.mode.kind == FSTACK else 1
    crops = 4 * planes * batch_size * (cfg.n_global * cfg.global_size**2 + cfg.n_local * cfg.local_size**2)
    patches = cfg.n_global * batch_size * (cfg.global_size // patch_size) ** 2
    return crops + patches * (1 + 8 + 4) + 8 * batch_size


def shm_free_bytes() -> int | None:
    """Free bytes of ``/dev/shm`` (None where there is none: the loader then cannot check)."""
    try:
        return shutil.disk_usage(SHM).free
    except OSError:
        return None


def fit_prefetch(cfg: DataConfig, patch_size: int, batch_size: int, workers: int, free: int | None) -> int:
    """The prefetch factor the loader can afford: ``workers × prefetch_factor`` batches wait in ``/dev/shm``. A
    container's default 64 MB holds one recipe batch (33 MB), not 24, and an overfull ``/dev/shm`` kills the
    workers mid-run with a bus error. Lowers ``data.prefetch_factor`` with a warning when that fits, and refuses
    with the fix when not even one batch per worker fits."""
    wanted = cfg.prefetch_factor
    if free is None or workers == 0:
        return wanted
    per = batch_nbytes(cfg, patch_size, batch_size) * SHM_MARGIN
    fit = int(free // (workers * per))
    if fit >= wanted:
        return wanted
    need_gb = workers * wanted * per / 1e9
    if fit >= 1:
        log.warning("/dev/shm has %.0f MB free, %d workers × prefetch_factor %d batches need %.0f MB: prefetching %d "
                    "batch(es) per worker instead (give the container --shm-size=%dg or --ipc=host to keep %d)",
                    free / 1e6, workers, wanted, need_gb * 1e3, fit, math.ceil(2 * need_gb), wanted)
        return fit
    raise SharedMemoryTooSmall(
        f"/dev/shm has {free / 1e6:.0f} MB free, but each of the {workers} loader workers needs "
        f"{per / 1e6:.0f} MB for one batch of {batch_size} ({workers * per / 1e9:.2f} GB in all): run the container "
        f"with --shm-size={math.ceil(2 * need_gb)}g (docker/podman) or --ipc=host, or lower data.num_workers "
        f"(0 loads in the training process without shared memory)")


def make_ssl_loader(cfg: DataConfig, patch_size: int, batch_size: int, seed: int, rank: int = 0,
                    world_size: int = 1, start_step: int = 0, num_workers: int | None = None,
                    steps: int | None = None, dataset: SSLFieldDataset | None = None,
                    pin_memory: bool = False) -> SSLLoader:
    """The SSL batch stream for one rank, starting at ``start_step`` (resume) — see the module docstring.

    ``steps`` limits the number of batches (default: infinite); ``pin_memory`` speeds up host→GPU copies."""
    workers = cfg.num_workers if num_workers is None else num_workers
    prefetch = fit_prefetch(cfg, patch_size, batch_size, workers, shm_free_bytes())  # before any data is read
    ds = dataset if dataset is not None else build_ssl_dataset(cfg, patch_size, seed)
    sampler = SSLStreamSampler(batch_size, cfg.crops_per_field, rank, world_size, start_step, steps)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        # spawn by default: a forked worker inherits the parent's OpenCV/OpenMP thread pools and fsspec event-loop
        # threads mid-state and can hang (seen with cv2.setNumThreads after the parent had used cv2).
        kwargs.update(worker_init_fn=_worker_init, prefetch_factor=prefetch, persistent_workers=False,
                      multiprocessing_context=cfg.worker_start_method)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=SSLCollate(cfg, patch_size, seed),
                                         num_workers=workers, pin_memory=pin_memory, **kwargs)
    return SSLLoader(loader, FailureBudget(cfg.max_failure_fraction, cfg.failure_min_samples), ds)
