"""``models report MODELS LABELS``: the per-channel report card a user reads before trusting a model.

Every bundle in MODELS segments the held-out fields of the store (fields its training did not use, as recorded
in the bundle's ``training_data.fields`` for its training tree; when a bundle does not record them every field
is scored and the row says ``held_out = unknown``), once per label source (auto, imported, corrected). DNA
models are scored against nuclei, all others (multichannel ones such as DNA+RNA too) against cells. Columns: AP@0.5, F1@0.5, objects in labels vs predicted, and the mean
per-field relative count error.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dinocell_core.io.fsutil import atomic_write_bytes, atomic_write_json
from dinocell_core.labels.store import SOURCES, LabelsError, LabelStore, field_key

log = logging.getLogger(__name__)

REPORT_COLUMNS = ("model", "channel", "source", "held_out", "fields", "n_labels", "n_pred", "ap50", "f1_50",
                  "count_error")


def trained_fields(meta: dict[str, Any], root: str) -> set[str] | None:
    """Field keys (``plate folder/well/site/sk``) of ``root`` a bundle trained on, or None when not recorded.

    Keys repeat across trees (a plate folder name is the same in every copy), so they count only when the
    bundle's training tree is ``root`` itself."""
    data = meta.get("training_data") or {}
    if data.get("fields") is None:
        return None
    path = str(data.get("path") or "")
    if "://" in path or "://" in root:
        same = path.rstrip("/") == root.rstrip("/")
    else:
        same = bool(path) and Path(path).resolve() == Path(root).resolve()
    return {str(n).rsplit("/ch", 1)[0] for n in data["fields"]} if same else set()


def models_report(models: str | os.PathLike[str], labels: str | os.PathLike[str], root: str | None = None,
                  device: str = "auto", max_fields: int | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """One row per (bundle, label source) with scores on held-out fields (see the module docstring). The image
    tree may be an ``s3://`` prefix, read through ``endpoint_url`` when given (as ``jump label`` reads it)."""
    from dinocell_core.io.tiffio import read_tiff
    from dinocell_core.jump.channels import channel_number
    from dinocell_core.jump.index import index_fields
    from dinocell_core.labels.run import source_storage
    from dinocell_core.seg.bundle import list_bundles, load_bundle
    from dinocell_core.seg.config import bundle_channels, objects_for
    from dinocell_core.seg.inference import Segmenter
    from dinocell_core.seg.metrics import evaluate_pairs

    if "://" in os.fspath(labels):
        raise LabelsError(f"{labels}: the labels store is a local folder (the image tree may be on S3, the store not)")
    store = LabelStore.open(labels)
    root = root or store.manifest.get("source_root")
    if not root:
        raise LabelsError(f"{labels}: the manifest names no source root; pass --root")
    storage = source_storage(str(root), endpoint_url)
    bundles = list_bundles(models)
    if not bundles:
        raise LabelsError(f"{models}: no model bundles")
    fields = index_fields(root, storage=storage).fields
    jobs: list[tuple[Any, str, list]] = []
    for b in bundles:
        try:
            chans = [channel_number(c) for c in bundle_channels(b.metadata)]
        except ValueError:
            continue  # not a JUMP-channel model (e.g. trained on LIVECell): nothing to compare with
        used = trained_fields(b.metadata, str(root))
        for source in SOURCES:
            sel = [(f, store.get(field_key(f), source)) for f in fields if all(c in f.paths for c in chans)
                   and (used is None or f.key not in used)]
            sel = [(f, r) for f, r in sel if r is not None][:max_fields]
            if sel:
                jobs.append((b, source, sel))
    if not jobs:
        raise LabelsError(f"no held-out field of {root} has labels in {labels} for the models in {models}")
    total, done = sum(len(s) for _, _, s in jobs), 0
    rows = []
    for b, source, sel in jobs:
        bundle = load_bundle(b.path)
        chans = [channel_number(c) for c in bundle.channels]
        kind = objects_for(bundle.channels)
        seg = Segmenter(bundle, device=device)
        pairs, errs, n_pred_total = [], [], 0
        try:
            for f, row in sel:
                raws = [read_tiff(f.path(root, c), storage=storage) for c in chans]
                try:
                    gt = store.read(row, kind, raws[0].shape)
                except LabelsError as exc:  # one cut or foreign mask must not cost the whole report
                    log.warning("%s: field left out of the report: %s (`jump label` again relabels auto masks)",
                                f.key, exc)
                    done += 1
                    continue
                pred = seg.labels(seg.predict_prepared(seg.preprocess(raws[0] if len(raws) == 1 else raws, f.key)))
                pairs.append((gt, pred))
                n_gt, n_pred = len(np.unique(gt)) - 1, len(np.unique(pred)) - 1
                errs.append(abs(n_pred - n_gt) / max(n_gt, 1))
                n_pred_total += n_pred
                done += 1
                if progress is not None:
                    progress(done, total)
        finally:
            seg.release()
        if not pairs:
            continue
        s = evaluate_pairs(pairs, [0.5]).as_dict()
        rows.append({"model": b.name, "channel": b.channel, "source": source,
                     "held_out": "unknown" if trained_fields(b.metadata, str(root)) is None else "yes",
                     "fields": len(pairs), "n_labels": int(s["n_gt"]), "n_pred": n_pred_total,
                     "ap50": round(float(s["ap@0.50"]), 4), "f1_50": round(float(s["f1@0.50"]), 4),
                     "count_error": round(float(np.mean(errs)), 4)})
    if not rows:
        raise LabelsError(f"{labels}: no held-out field could be scored: every label mask was unreadable (see the "
                          "warnings above)")
    return rows


def format_report(rows: list[dict[str, Any]]) -> str:
    head = (f"{'model':<26} {'channel':<12} {'labels':<10} {'held out':<8} {'fields':>6} {'labels':>7} "
            f"{'pred':>7} {'AP@0.5':>7} {'F1@0.5':>7} {'count err':>9}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['model']:<26} {r['channel']:<12} {r['source']:<10} {r['held_out']:<8} {r['fields']:>6} "
                     f"{r['n_labels']:>7} {r['n_pred']:>7} {r['ap50']:>7.3f} {r['f1_50']:>7.3f} "
                     f"{r['count_error']:>9.3f}")
    return "\n".join(lines)


def render_report(rows: list[dict[str, Any]]) -> np.ndarray:
    """A bar per (model, label source): AP@0.5 (RGB uint8; drawn with OpenCV, no plotting library needed)."""
    bar_h, label_w, width = 26, 330, 760
    img = np.full((40 + bar_h * len(rows), width, 3), 255, np.uint8)
    cv2.putText(img, "AP@0.5 on held-out fields", (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                cv2.LINE_AA)
    colours = {"auto": (70, 130, 180), "imported": (120, 120, 120), "corrected": (46, 139, 87)}
    for i, r in enumerate(rows):
        y = 40 + i * bar_h
        cv2.putText(img, f"{r['model']} [{r['source']}]", (10, y + 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
        w = int((width - label_w - 60) * max(0.0, min(1.0, r["ap50"])))
        cv2.rectangle(img, (label_w, y + 4), (label_w + w, y + bar_h - 4), colours[r["source"]], -1)
        cv2.putText(img, f"{r['ap50']:.3f}", (label_w + w + 6, y + 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return img


def write_report(rows: list[dict[str, Any]], out: str | os.PathLike[str]) -> None:
    from dinocell_core.labels.qc import write_png

    out = Path(out)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "report.csv", buf.getvalue().encode("utf-8"))
    atomic_write_json(out / "report.json", rows)
    write_png(out / "report.png", render_report(rows))
