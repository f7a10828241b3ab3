"""Score a model bundle on an annotated dataset: AP@0.50…0.95, F1, SEG, DET, OP_CSB (pooled over images) and COCO
mask AP (pycocotools, LIVECell's maxDets), all from the same labels: the bundle's thresholds unless overridden."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from dinocell_core.seg.bundle import Bundle, load_bundle
from dinocell_core.seg.config import SegDataConfig
from dinocell_core.seg.data import SegDataError, detect_format, load_samples
from dinocell_core.seg.distance import labels_with, resolve_thresholds
from dinocell_core.seg.metrics import (
    AP_THRESHOLDS,
    COCO_MAX_DETS,
    coco_mask_ap,
    drop_crowd_predictions,
    evaluate_pairs,
)


def dataset_config(path: str | os.PathLike[str], bundle: Bundle, channel: str | int | None = None,
                   max_images: int | None = None, images_dir: str | os.PathLike[str] | None = None) -> SegDataConfig:
    """A dataset config for ``path``; the channel defaults to the bundle's (JUMP) or its preprocessing index.

    LIVECell/COCO: ``images_dir`` if given, else the folder found next to the JSON or in the official layout
    (``annotations/LIVECell/*.json`` apart from ``images/livecell_*_images/``).
    """
    fmt = detect_format(path)
    pre = bundle.metadata["preprocessing"]
    if channel is None:
        channel = bundle.channel if fmt == "jump" else pre.get("channel_index")
    if images_dir is not None and fmt != "livecell":
        raise SegDataError(f"{path}: an image folder (--images) only applies to a COCO/LIVECell JSON")
    extra: dict[str, Any] = {"images_dir": str(images_dir)} if images_dir is not None else {}
    return SegDataConfig(format=fmt, path=str(path), channel=channel, max_images=max_images, low=float(pre["low"]),
                         high=float(pre["high"]), **extra)


def object_scores(labels: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """A confidence per object (ascending id) for COCO AP's ranking: its mean distance-map value."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size == 0:
        return np.zeros(0)
    return np.asarray(ndi.mean(dist, labels, index=ids), float)


def evaluate_bundle(bundle_path: str | os.PathLike[str], dataset: str | os.PathLike[str] | SegDataConfig,
                    device: str = "cpu", tile_size: int | None = None, batch_size: int = 8,
                    channel: str | int | None = None, max_images: int | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    images_dir: str | os.PathLike[str] | None = None, **thresholds: Any) -> dict[str, Any]:
    """Segment every image of ``dataset`` with the bundle (the inference path users run) and pool the scores.

    ``thresholds``: overrides of the bundle's (``peak``, ``fill``, ``grow``, ``ring``, ``slope``, ``min_size``).
    Crowd regions (COCO ``iscrowd``) are ignored: predictions mostly inside them are not scored.
    """
    from dinocell_core.seg.inference import Segmenter

    bundle = load_bundle(bundle_path)
    cfg = (dataset if isinstance(dataset, SegDataConfig)
           else dataset_config(dataset, bundle, channel, max_images, images_dir))
    samples = load_samples(cfg)
    seg = Segmenter(bundle, device=device, tile_size=tile_size, batch_size=batch_size)
    used = resolve_thresholds(seg.thresholds, **thresholds)
    try:
        pairs, coco_items = [], []
        for i, s in enumerate(samples):
            # samples were normalised by load_samples with the bundle's percentiles (the same prepare_image)
            dist = seg.predict_prepared(s.image)
            pred = drop_crowd_predictions(labels_with(dist, used), s.ignore)
            pairs.append((s.labels, pred))
            coco_items.append((s.labels, pred, object_scores(pred, dist), s.ignore))
            if progress is not None:
                progress(i + 1, len(samples))
    finally:
        seg.release()
    scores = evaluate_pairs(pairs, AP_THRESHOLDS).as_dict()
    scores.update(coco_mask_ap(coco_items))
    return {"model": str(bundle_path), "model_name": bundle.name, "channel": bundle.channel,
            "dataset": cfg.path, "format": cfg.format, "thresholds": used, "metrics": scores}


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table of a result from :func:`evaluate_bundle`."""
    m = result["metrics"]
    lines = [f"model {result['model_name']} ({result['channel']}) on {result['dataset']}: "
             f"{m['n_images']} images, {m['n_gt']} cells",
             f"{'IoU':>6} {'AP':>7} {'F1':>7}"]
    for t in AP_THRESHOLDS:
        lines.append(f"{t:>6.2f} {m[f'ap@{t:.2f}']:>7.3f} {m[f'f1@{t:.2f}']:>7.3f}")
    lines.append(f"mean AP {m['ap_mean']:.3f}   SEG {m['seg']:.3f}   DET {m['det']:.3f}   OP_CSB {m['op_csb']:.3f}")
    if "coco_ap" in m:
        lines.append(f"COCO mask AP {m['coco_ap']:.3f}  AP50 {m['coco_ap50']:.3f}  AP75 {m['coco_ap75']:.3f}  "
                     f"(maxDets {COCO_MAX_DETS})")
    th = result.get("thresholds") or {}
    if th:
        lines.append("thresholds " + ", ".join(f"{k} {v}" for k, v in th.items()))
    return "\n".join(lines)
