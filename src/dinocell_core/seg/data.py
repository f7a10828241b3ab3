"""Segmentation datasets: (image, instance labels) pairs from the common formats, and random training tiles.

Every image goes through :func:`~dinocell_core.io.images.prepare_image` — the same function inference uses — so training and inference
see identical inputs. Label images are only ever resized with nearest neighbour (linear resizing blends ids into
spurious border labels); the distance target is computed on the full label image, then cropped/warped with the
image and clipped back to [0, 1].
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dinocell_core.io.images import ImageError, prepare_image, read_image
from dinocell_core.seg.config import SegAugmentConfig, SegDataConfig
from dinocell_core.seg.distance import distance_map

IMAGE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


class SegDataError(ImageError):
    """A dataset file or folder is unusable (the message names it and says why)."""


# ----------------------------------------------------------------------------------------------- datasets

@dataclass
class SegSample:
    """One annotated image: normalised float32 [H, W] image and int32 instance labels of the same shape."""

    name: str
    image: np.ndarray
    labels: np.ndarray


def _as_labels(mask: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] in (3, 4) and all(np.array_equal(m[..., 0], m[..., i]) for i in (1, 2)):
        m = m[..., 0]
    if m.ndim != 2:
        raise SegDataError(f"{name}: a label image must be 2-D, got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.integer):
        if not np.all(np.mod(m, 1) == 0):
            raise SegDataError(f"{name}: label image has non-integer values")
    if m.min() < 0:
        raise SegDataError(f"{name}: label image has negative values")
    return m.astype(np.int32)


def _sample(name: str, raw: np.ndarray, labels: np.ndarray, cfg: SegDataConfig) -> SegSample:
    ch = int(cfg.channel) if cfg.channel is not None else None
    img = prepare_image(raw, ch, cfg.low, cfg.high, name)
    if img.shape != labels.shape:
        raise SegDataError(f"{name}: image shape {img.shape} differs from its mask shape {labels.shape}")
    return SegSample(name, img, labels)


def _stem(path: Path, suffix: str) -> str | None:
    stem = path.stem
    return stem[: -len(suffix)] if stem.endswith(suffix) else None


def pair_files(folder: Path) -> list[tuple[str, Path, Path]]:
    """Cellpose layout: ``X_img.ext`` + ``X_masks.ext`` in one folder."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    masks = {_stem(p, "_masks"): p for p in files if _stem(p, "_masks") is not None}
    out = []
    for p in files:
        key = _stem(p, "_img")
        if key is None:
            continue
        if key not in masks:
            raise SegDataError(f"{p}: no matching mask {key}_masks.* in {folder}")
        out.append((key, p, masks[key]))
    if not out:
        raise SegDataError(f"{folder}: no *_img.* / *_masks.* pairs found")
    return out


def folder_files(folder: Path) -> list[tuple[str, Path, Path]]:
    """``images/`` + ``masks/`` folders matched by file stem (a mask may carry a ``_masks`` suffix)."""
    img_dir, mask_dir = folder / "images", folder / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise SegDataError(f"{folder}: expected sub-folders images/ and masks/ ({d.name}/ missing)")
    masks: dict[str, Path] = {}
    for p in sorted(mask_dir.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS:
            masks[_stem(p, "_masks") or p.stem] = p
    out = []
    for p in sorted(img_dir.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        if p.stem not in masks:
            raise SegDataError(f"{p}: no mask with the same name in {mask_dir}")
        out.append((p.stem, p, masks[p.stem]))
    if not out:
        raise SegDataError(f"{img_dir}: no images found")
    return out


def polygons_to_mask(shape: tuple[int, int], annotations: Sequence[dict], name: str = "annotations") -> np.ndarray:
    """COCO polygon annotations → int32 instance labels (id = position + 1; later objects drawn on top)."""
    lab = np.zeros(shape, np.int32)
    for i, ann in enumerate(annotations, start=1):
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            raise SegDataError(f"{name}: RLE segmentations are not supported (annotation {ann.get('id')})")
        if not seg:
            continue
        polys = [np.round(np.asarray(s, np.float64).reshape(-1, 2)).astype(np.int32) for s in seg if len(s) >= 6]
        if polys:
            cv2.fillPoly(lab, polys, int(i))
    return lab


def livecell_samples(cfg: SegDataConfig) -> list[SegSample]:
    """LIVECell COCO JSON; annotations stored as a dict keyed by id (some LIVECell files) are handled."""
    path = Path(cfg.path)
    try:
        coco = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SegDataError(f"{path}: cannot read COCO JSON ({exc})") from None
    anns = coco.get("annotations")
    if isinstance(anns, dict):
        anns = list(anns.values())
    if not isinstance(anns, list) or not isinstance(coco.get("images"), list):
        raise SegDataError(f"{path}: not a COCO file (needs 'images' and 'annotations' lists)")
    by_image: dict[int, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    root = Path(cfg.images_dir or ".")
    out = []
    for info in coco["images"][: cfg.max_images]:
        fname = info["file_name"]
        p = root / fname
        if not p.is_file() and "_Phase_" in fname:  # per-cell-type sub-folders
            p = root / fname.split("_Phase_")[0] / fname
        raw = read_image(p)
        labels = polygons_to_mask(raw.shape[:2], by_image.get(info["id"], []), f"{path} image {fname}")
        out.append(_sample(fname, raw, labels, cfg))
    return out


def jump_samples(cfg: SegDataConfig) -> list[SegSample]:
    """JUMP fields with labels from a labels store: DNA learns nuclei, every other channel learns cells.

    The store is ``data.labels`` (default: the tree's ``ground_truth/`` store). Corrected labels are preferred
    per field and their fields come first (so ``max_images`` keeps them); ``corrected_only`` uses nothing else.
    """
    from dinocell_core.io.tiffio import read_tiff
    from dinocell_core.jump.channels import channel_number
    from dinocell_core.jump.index import load_index
    from dinocell_core.labels.store import LabelStore, find_labels_root

    ch = channel_number(cfg.channel)
    kind = "nuclei" if ch == 5 else "cells"
    store = LabelStore.open(cfg.labels if cfg.labels is not None else find_labels_root(cfg.path))
    fields = [f for f in load_index(cfg.path) if ch in f.paths]
    if not fields:
        raise SegDataError(f"{cfg.path}: no field has channel {ch}")
    pairs = store.match(sorted(fields, key=lambda f: f.key), cfg.corrected_only, tree=cfg.path)
    out = []
    for f, row in pairs[: cfg.max_images]:
        raw = read_tiff(f.path(cfg.path, ch))
        labels = store.read(row, kind, raw.shape)
        out.append(SegSample(f"{f.key}/ch{ch}", prepare_image(raw, None, cfg.low, cfg.high, f.key), labels))
    return out


def load_samples(cfg: SegDataConfig) -> list[SegSample]:
    """All annotated images of one source, normalised, in a stable order."""
    if cfg.format == "livecell":
        return livecell_samples(cfg)
    if cfg.format == "jump":
        return jump_samples(cfg)
    folder = Path(cfg.path)
    if not folder.is_dir():
        raise SegDataError(f"{folder}: dataset folder not found")
    files = pair_files(folder) if cfg.format == "pairs" else folder_files(folder)
    out = []
    for key, img_p, mask_p in files[: cfg.max_images]:
        out.append(_sample(key, read_image(img_p), _as_labels(read_image(mask_p), str(mask_p)), cfg))
    return out


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess a dataset's format from its layout (for the ``evaluate`` command)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".json":
        return "livecell"
    if (p / "images").is_dir() and (p / "masks").is_dir():
        return "folders"
    if p.is_dir() and any(_stem(q, "_img") for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS):
        return "pairs"
    try:
        from dinocell_core.labels.store import find_labels_root

        find_labels_root(p)
        return "jump"
    except FileNotFoundError:
        pass
    raise SegDataError(f"{p}: not a recognised dataset (Cellpose *_img/*_masks folder, images/+masks/, "
                       "LIVECell COCO .json, or a JUMP tree with a ground_truth/ labels store)")


def split_samples(samples: Sequence[SegSample], val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic held-out split (at least one image on each side when there are two or more)."""
    n = len(samples)
    if n < 2:
        raise SegDataError(f"need at least 2 annotated images to hold some out for validation, have {n}")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [samples[i] for i in train], [samples[i] for i in val]


# ------------------------------------------------------------------------------------------- augmentation

@dataclass
class PreparedSample:
    image: np.ndarray
    target: np.ndarray


def prepare_samples(samples: Sequence[SegSample]) -> list[PreparedSample]:
    """Distance targets computed once per full image (a crop would cut cells and change their maxima)."""
    return [PreparedSample(s.image, distance_map(s.labels)) for s in samples]


def random_tile(sample: PreparedSample, tile: int, rng: np.random.Generator,
                aug: SegAugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (image, target) tile of ``tile``×``tile``; images smaller than the window are zero-padded."""
    s = float(np.exp(rng.uniform(np.log(aug.scale[0]), np.log(aug.scale[1]))))
    win = max(8, int(round(tile / s)))
    img, tgt = sample.image, sample.target
    h, w = img.shape
    if h < win or w < win:
        ph, pw = max(0, win - h), max(0, win - w)
        img = np.pad(img, ((0, ph), (0, pw)))
        tgt = np.pad(tgt, ((0, ph), (0, pw)))
        h, w = img.shape
    y = int(rng.integers(0, h - win + 1))
    x = int(rng.integers(0, w - win + 1))
    im = img[y : y + win, x : x + win]
    tg = tgt[y : y + win, x : x + win]
    if win != tile:
        im = cv2.resize(im, (tile, tile), interpolation=cv2.INTER_LINEAR)
        tg = np.clip(cv2.resize(tg, (tile, tile), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    if aug.flips:
        if rng.random() < 0.5:
            im, tg = im[:, ::-1], tg[:, ::-1]
        if rng.random() < 0.5:
            im, tg = im[::-1], tg[::-1]
    if aug.rot90:
        k = int(rng.integers(0, 4))
        im, tg = np.rot90(im, k), np.rot90(tg, k)
    im = np.ascontiguousarray(im, dtype=np.float32)
    if aug.intensity > 0:
        gain = 1.0 + rng.uniform(-aug.intensity, aug.intensity)
        im = np.clip(im * np.float32(gain) + np.float32(rng.uniform(-aug.intensity, aug.intensity)), 0.0, 1.0)
    g = rng.uniform(*aug.gamma)
    if g != 1.0:
        im = np.power(np.clip(im, 0.0, 1.0), np.float32(g))
    if aug.invert_p > 0 and rng.random() < aug.invert_p:
        im = 1.0 - im
    return im.astype(np.float32, copy=False), np.ascontiguousarray(tg, dtype=np.float32)


def tile_batch(samples: Sequence[PreparedSample], batch: int, tile: int, rng: np.random.Generator,
               aug: SegAugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """[B, 1, T, T] images and targets, each tile from a uniformly chosen sample."""
    imgs, tgts = [], []
    for _ in range(batch):
        im, tg = random_tile(samples[int(rng.integers(0, len(samples)))], tile, rng, aug)
        imgs.append(im)
        tgts.append(tg)
    return np.stack(imgs)[:, None], np.stack(tgts)[:, None]
