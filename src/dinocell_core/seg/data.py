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
from typing import TYPE_CHECKING

import cv2
import numpy as np

from dinocell_core.io.images import ImageError, prepare_image, read_image
from dinocell_core.seg.config import SegAugmentConfig, SegDataConfig
from dinocell_core.seg.distance import distance_map, sequential_labels

if TYPE_CHECKING:
    from dinocell_core.jump.index import Field
    from dinocell_core.labels.store import LabelRow, LabelStore

IMAGE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


class SegDataError(ImageError):
    """A dataset file or folder is unusable (the message names it and says why)."""


# ----------------------------------------------------------------------------------------------- datasets

@dataclass
class SegSample:
    """One annotated image: normalised float32 [H, W] image ([C, H, W] for a multichannel model, each channel
    normalised on its own) and int32 [H, W] instance labels."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray | None = None  # bool [H, W]: crowd regions (COCO iscrowd), neither cell nor background
    source: str | None = None  # jump: the labels store source of the masks (corrected fields are held out first)


def _as_labels(mask: np.ndarray, name: str) -> np.ndarray:
    """Any integer (or integer-valued float) label image → int32 ids; ids ≥ 2³¹ are renumbered in order
    instead of wrapping negative."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] in (3, 4) and all(np.array_equal(m[..., 0], m[..., i]) for i in (1, 2)):
        m = m[..., 0]
    if m.ndim != 2:
        raise SegDataError(f"{name}: a label image must be 2-D, got shape {m.shape}")
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if not np.issubdtype(m.dtype, np.integer):
        if not np.all(np.mod(m, 1) == 0):
            raise SegDataError(f"{name}: label image has non-integer values")
        if m.size and m.max() >= 2**53:
            raise SegDataError(f"{name}: float label ids above 2^53 are not exact; store labels as integers")
        m = m.astype(np.int64)
    if m.size and m.min() < 0:
        raise SegDataError(f"{name}: label image has negative values")
    return sequential_labels(m)


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


def annotation_mask(ann: dict, shape: tuple[int, int], name: str = "annotations") -> np.ndarray:
    """One COCO annotation → bool mask via pycocotools: polygons each filled on their own and united (a
    duplicated or overlapping polygon never punches a hole), uncompressed or compressed RLE decoded as stored."""
    from pycocotools import mask as mask_utils

    h, w = shape
    seg = ann.get("segmentation")
    where = f"{name}: annotation {ann.get('id')}"
    if isinstance(seg, dict):
        size = seg.get("size")
        if list(size or []) != [h, w]:
            raise SegDataError(f"{where}: RLE size {size} differs from the image size {[h, w]}")
        counts = seg.get("counts")
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(seg, h, w)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            raise SegDataError(f"{where}: RLE counts must be a list or a string")
    elif isinstance(seg, list):
        polys = [list(map(float, p)) for p in seg if isinstance(p, (list, tuple)) and len(p) >= 6]
        if not polys:
            return np.zeros(shape, bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif not seg:
        return np.zeros(shape, bool)
    else:
        raise SegDataError(f"{where}: segmentation must be polygons or RLE, got {type(seg).__name__}")
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as exc:  # pycocotools raises bare ValueError/TypeError on corrupt counts
        raise SegDataError(f"{where}: cannot decode its RLE ({type(exc).__name__}: {exc})") from None


def coco_to_labels(shape: tuple[int, int], annotations: Sequence[dict],
                   name: str = "annotations") -> tuple[np.ndarray, np.ndarray | None]:
    """COCO annotations of one image → (int32 instance labels, crowd mask or None).

    Instances get ids 1..n in annotation order (a later object is drawn over an earlier one where they
    overlap); ``iscrowd`` annotations are not instances: they form the ignore mask (COCO's semantics).
    """
    lab = np.zeros(shape, np.int32)
    crowd = np.zeros(shape, bool)
    i = 0
    for ann in annotations:
        m = annotation_mask(ann, shape, name)
        if ann.get("iscrowd", 0):
            crowd |= m
        elif m.any():
            i += 1
            lab[m] = i
    return lab, (crowd if crowd.any() else None)


LIVECELL_IMAGE_DIRS = ("images/livecell_test_images", "images/livecell_train_val_images", "images", ".")


def _image_path(root: Path, fname: str) -> Path:
    p = root / fname
    if not p.is_file() and "_Phase_" in fname:  # per-cell-type sub-folders
        p = root / fname.split("_Phase_")[0] / fname
    return p


def find_images_dir(json_path: Path, file_names: Sequence[str]) -> Path:
    """Where the images of a COCO JSON are: next to it, or — the official LIVECell layout, with
    ``annotations/LIVECell/livecell_coco_test.json`` apart from ``images/livecell_test_images/`` — in an
    ``images/...`` folder of one of its parent folders."""
    if not file_names:
        return json_path.parent
    probe = file_names[0]
    looked = []
    for base in [json_path.parent, *list(json_path.parents)[:4]]:
        for sub in LIVECELL_IMAGE_DIRS:
            d = (base / sub).resolve()
            if d in looked:
                continue
            looked.append(d)
            if _image_path(d, probe).is_file():
                return d
    raise SegDataError(f"{json_path}: cannot find its images (looked for {probe} in "
                       f"{', '.join(str(d) for d in looked[:6])}, ...); pass the image folder (images_dir / --images)")


def livecell_samples(cfg: SegDataConfig) -> list[SegSample]:
    """LIVECell / COCO JSON; annotations stored as a dict keyed by id (some LIVECell files) are handled."""
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
    infos = coco["images"][: cfg.max_images]
    root = Path(cfg.images_dir) if cfg.images_dir else find_images_dir(path, [i["file_name"] for i in infos])
    out = []
    for info in infos:
        fname = info["file_name"]
        raw = read_image(_image_path(root, fname))
        shape = raw.shape[:2]
        if "height" in info and "width" in info and (int(info["height"]), int(info["width"])) != shape:
            raise SegDataError(f"{path}: image {fname} is {shape[0]}×{shape[1]} px but the JSON says "
                               f"{info['height']}×{info['width']}")
        labels, crowd = coco_to_labels(shape, by_image.get(info["id"], []), f"{path} image {fname}")
        sample = _sample(fname, raw, labels, cfg)
        sample.ignore = crowd
        out.append(sample)
    return out


def jump_samples(cfg: SegDataConfig) -> list[SegSample]:
    """JUMP fields with labels from a labels store: a DNA model learns nuclei, any other model (a single channel or
    several read together, ``channels``) learns cells.

    The store is ``data.labels`` (default: the tree's ``ground_truth/`` store). Corrected labels are preferred
    per field and their fields come first (so ``max_images`` keeps them); ``corrected_only`` uses nothing else,
    ``label_sources`` only the sources it lists.
    """
    from dinocell_core.io.tiffio import read_tiff
    from dinocell_core.jump.channels import channel_number
    from dinocell_core.jump.index import load_index
    from dinocell_core.labels.store import LabelStore, find_labels_root
    from dinocell_core.seg.config import objects_for

    names = cfg.model_channels()
    chans = [channel_number(c) for c in names]
    kind = objects_for(names)
    store = LabelStore.open(cfg.labels if cfg.labels is not None else find_labels_root(cfg.path))
    fields = [f for f in load_index(cfg.path) if all(c in f.paths for c in chans)]
    if not fields:
        raise SegDataError(f"{cfg.path}: no field has the channel(s) {', '.join(names)}")
    pairs = _labelled(store, sorted(fields, key=lambda f: f.key), cfg)
    out = []
    for f, row in pairs[: cfg.max_images]:
        raws = [read_tiff(f.path(cfg.path, c)) for c in chans]
        labels = store.read(row, kind, raws[0].shape)
        planes = [prepare_image(raw, None, cfg.low, cfg.high, f.path(cfg.path, c)) for raw, c in zip(raws, chans)]
        if any(p.shape != planes[0].shape for p in planes):
            raise SegDataError(f"{f.key}: its channel images differ in size ({[p.shape for p in planes]})")
        image = planes[0] if len(planes) == 1 else np.stack(planes)
        tag = "+".join(f"ch{c}" for c in chans)
        out.append(SegSample(f"{f.key}/{tag}", image, labels, source=row.source))
    return out


def _labelled(store: LabelStore, fields: list[Field], cfg: SegDataConfig) -> list[tuple[Field, LabelRow]]:
    """(field, label row) pairs, corrected first; with ``label_sources``, each field's masks from the first of
    those sources it has (corrected before imported before auto)."""
    from dinocell_core.labels.store import field_key
    from dinocell_core.seg.config import LABEL_SOURCES

    if cfg.label_sources is None:
        return store.match(fields, cfg.corrected_only, tree=cfg.path)
    order = [s for s in LABEL_SOURCES if s in cfg.label_sources]
    pairs = []
    for f in fields:
        row = next((r for r in (store.get(field_key(f), s) for s in order) if r is not None), None)
        if row is not None:
            pairs.append((f, row))
    if not pairs:
        raise SegDataError(f"labels store {store.root} has no {' or '.join(order)} labels for any of the "
                           f"{len(fields)} fields of {cfg.path} (data.label_sources={order}; corrected fields are "
                           "written by the napari label editor's Save)")
    pairs.sort(key=lambda p: order.index(p[1].source))
    return pairs


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


def split_corrected(samples: Sequence[SegSample], val_fraction: float, seed: int) -> tuple[list, list]:
    """Fine-tuning's split: the held-out share comes from the corrected fields only (the ones a person vouched
    for), every other field trains."""
    corrected = [s for s in samples if s.source == "corrected"]
    others = [s for s in samples if s.source != "corrected"]
    train, val = split_samples(corrected, val_fraction, seed, what="corrected fields")
    return train + others, val


def split_samples(samples: Sequence[SegSample], val_fraction: float, seed: int,
                  what: str = "annotated images") -> tuple[list, list]:
    """Deterministic held-out split (at least one image on each side when there are two or more)."""
    n = len(samples)
    if n < 2:
        raise SegDataError(f"need at least 2 {what} to hold some out for validation, have {n}")
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
    weight: np.ndarray | None = None  # float32 loss weight: 0 on crowd (ignore) pixels


def prepare_samples(samples: Sequence[SegSample]) -> list[PreparedSample]:
    """Distance targets computed once per full image (a crop would cut cells and change their maxima)."""
    return [PreparedSample(s.image, distance_map(s.labels),
                           None if s.ignore is None else (~s.ignore).astype(np.float32)) for s in samples]


def random_tile(sample: PreparedSample, tile: int, rng: np.random.Generator,
                aug: SegAugmentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented (image, target, loss weight) tile of ``tile``×``tile`` (a [C, T, T] image for a multichannel
    sample, every channel cropped and warped alike); images smaller than the window are zero-padded (weight 1
    there: the padding is background, as the image's edge is at inference)."""
    s = float(np.exp(rng.uniform(np.log(aug.scale[0]), np.log(aug.scale[1]))))
    win = max(8, int(round(tile / s)))
    img, tgt = sample.image, sample.target
    wgt = sample.weight if sample.weight is not None else np.ones(tgt.shape, np.float32)
    lead = ((0, 0),) * (img.ndim - 2)
    h, w = tgt.shape
    if h < win or w < win:
        ph, pw = max(0, win - h), max(0, win - w)
        img = np.pad(img, (*lead, (0, ph), (0, pw)))
        tgt = np.pad(tgt, ((0, ph), (0, pw)))
        wgt = np.pad(wgt, ((0, ph), (0, pw)), constant_values=1.0)
        h, w = tgt.shape
    y = int(rng.integers(0, h - win + 1))
    x = int(rng.integers(0, w - win + 1))
    im = img[..., y : y + win, x : x + win]
    tg = tgt[y : y + win, x : x + win]
    wt = wgt[y : y + win, x : x + win]
    if win != tile:
        if im.ndim == 2:
            im = cv2.resize(im, (tile, tile), interpolation=cv2.INTER_LINEAR)
        else:
            im = np.stack([cv2.resize(p, (tile, tile), interpolation=cv2.INTER_LINEAR) for p in im])
        tg = np.clip(cv2.resize(tg, (tile, tile), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
        wt = cv2.resize(wt, (tile, tile), interpolation=cv2.INTER_NEAREST)
    if aug.flips:
        if rng.random() < 0.5:
            im, tg, wt = im[..., ::-1], tg[:, ::-1], wt[:, ::-1]
        if rng.random() < 0.5:
            im, tg, wt = im[..., ::-1, :], tg[::-1], wt[::-1]
    if aug.rot90:
        k = int(rng.integers(0, 4))
        im, tg, wt = np.rot90(im, k, axes=(-2, -1)), np.rot90(tg, k), np.rot90(wt, k)
    im = np.ascontiguousarray(im, dtype=np.float32)
    if aug.intensity > 0:
        gain = 1.0 + rng.uniform(-aug.intensity, aug.intensity)
        im = np.clip(im * np.float32(gain) + np.float32(rng.uniform(-aug.intensity, aug.intensity)), 0.0, 1.0)
    g = rng.uniform(*aug.gamma)
    if g != 1.0:
        im = np.power(np.clip(im, 0.0, 1.0), np.float32(g))
    if aug.invert_p > 0 and rng.random() < aug.invert_p:
        im = 1.0 - im
    return (im.astype(np.float32, copy=False), np.ascontiguousarray(tg, dtype=np.float32),
            np.ascontiguousarray(wt, dtype=np.float32))


def tile_batch(samples: Sequence[PreparedSample], batch: int, tile: int, rng: np.random.Generator,
               aug: SegAugmentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[B, C, T, T] images (C = 1 for single-channel samples), [B, 1, T, T] targets and loss weights, each tile
    from a uniformly chosen sample."""
    imgs, tgts, wgts = [], [], []
    for _ in range(batch):
        im, tg, wt = random_tile(samples[int(rng.integers(0, len(samples)))], tile, rng, aug)
        imgs.append(im)
        tgts.append(tg)
        wgts.append(wt)
    x = np.stack(imgs)
    return (x[:, None] if x.ndim == 3 else x), np.stack(tgts)[:, None], np.stack(wgts)[:, None]
