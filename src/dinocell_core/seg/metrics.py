"""Instance-segmentation scores: AP/F1 with optimal IoU matching, and the Cell Tracking Challenge SEG/DET/OP_CSB.

All scores can be pooled over images (counts summed before dividing), which is how SAMCell reports SEG/DET and how
StarDist's ``matching_dataset(by_image=False)`` pools AP (reference §5).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

AP_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    if not (np.issubdtype(gt.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
        raise ValueError(f"labels must be integer images, got {gt.dtype} and {pred.dtype}")
    if (gt.size and gt.min() < 0) or (pred.size and pred.min() < 0):
        raise ValueError("labels must be non-negative")
    return gt, pred


@dataclass
class Overlap:
    """Contingency table between the objects of one image pair (background row/column dropped)."""

    inter: np.ndarray  # [n_gt, n_pred] pixel counts
    gt_area: np.ndarray  # [n_gt]
    pred_area: np.ndarray  # [n_pred]

    @property
    def iou(self) -> np.ndarray:
        union = self.gt_area[:, None] + self.pred_area[None, :] - self.inter
        return np.divide(self.inter, union, out=np.zeros(self.inter.shape, float), where=union > 0)


def overlap(gt: np.ndarray, pred: np.ndarray) -> Overlap:
    """Contingency table via one bincount; label ids are compacted first so sparse ids cost nothing."""
    gt, pred = _check_pair(gt, pred)
    g_ids, g = np.unique(gt.ravel(), return_inverse=True)
    p_ids, p = np.unique(pred.ravel(), return_inverse=True)
    ng, npred = len(g_ids), len(p_ids)
    table = np.bincount(g.astype(np.int64) * npred + p, minlength=ng * npred).reshape(ng, npred)
    gi = slice(1, None) if ng and g_ids[0] == 0 else slice(0, None)
    pi = slice(1, None) if npred and p_ids[0] == 0 else slice(0, None)
    inter = table[gi, pi]
    return Overlap(inter=inter, gt_area=table.sum(1)[gi], pred_area=table.sum(0)[pi])


def _tp_count(iou: np.ndarray, threshold: float) -> tuple[int, float]:
    """Optimal one-to-one matching (StarDist cost); returns (TP, sum of matched IoU)."""
    if iou.size == 0:
        return 0, 0.0
    n_min = min(iou.shape)
    ok = iou >= threshold
    cost = -(ok.astype(float)) - iou / (2 * n_min)
    r, c = linear_sum_assignment(cost)
    good = ok[r, c]
    return int(good.sum()), float(iou[r, c][good].sum())


@dataclass
class Counts:
    """Pooled counts for one IoU threshold."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    @property
    def ap(self) -> float:
        d = self.tp + self.fp + self.fn
        return self.tp / d if d else 1.0  # both empty: nothing to find, nothing found

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0

    @property
    def precision(self) -> float:
        d = self.tp + self.fp
        return self.tp / d if d else 1.0

    @property
    def recall(self) -> float:
        d = self.tp + self.fn
        return self.tp / d if d else 1.0


@dataclass
class CTCCounts:
    """Pooled Cell Tracking Challenge counts."""

    n_ref: int = 0
    jaccard_sum: float = 0.0
    fn: int = 0
    fp: int = 0
    ns: int = 0

    @property
    def seg(self) -> float:
        return self.jaccard_sum / self.n_ref if self.n_ref else (1.0 if self.fp == 0 else 0.0)

    @property
    def det(self) -> float:
        aogm = 5 * self.ns + 10 * self.fn + 1 * self.fp
        aogm0 = 10 * self.n_ref
        if aogm0 == 0:
            return 1.0 if aogm == 0 else 0.0
        return 1.0 - min(aogm, aogm0) / aogm0

    @property
    def op_csb(self) -> float:
        return (self.seg + self.det) / 2


def ctc_counts(ov: Overlap) -> CTCCounts:
    """CTC matching: reference R ↔ computed S iff |R ∩ S| > 0.5·|R| (so each R has at most one S)."""
    n_ref = len(ov.gt_area)
    if n_ref == 0:
        return CTCCounts(n_ref=0, fp=len(ov.pred_area))
    match = ov.inter * 2 > ov.gt_area[:, None]  # [n_gt, n_pred], at most one True per row
    iou = ov.iou
    jac = float((iou * match).sum())
    fn = int((~match.any(1)).sum())
    per_pred = match.sum(0)
    fp = int((per_pred == 0).sum())
    ns = int(np.clip(per_pred - 1, 0, None).sum())
    return CTCCounts(n_ref=n_ref, jaccard_sum=jac, fn=fn, fp=fp, ns=ns)


@dataclass
class Scores:
    """Pooled scores over a set of images."""

    thresholds: tuple[float, ...]
    counts: list[Counts] = field(default_factory=list)
    ctc: CTCCounts = field(default_factory=CTCCounts)
    n_images: int = 0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        ov = overlap(gt, pred)
        iou = ov.iou
        ng, npred = iou.shape
        if not self.counts:
            self.counts = [Counts() for _ in self.thresholds]
        for c, t in zip(self.counts, self.thresholds):
            tp, s = _tp_count(iou, t)
            c.tp += tp
            c.fp += npred - tp
            c.fn += ng - tp
            c.iou_sum += s
        cc = ctc_counts(ov)
        self.ctc.n_ref += cc.n_ref
        self.ctc.jaccard_sum += cc.jaccard_sum
        self.ctc.fn += cc.fn
        self.ctc.fp += cc.fp
        self.ctc.ns += cc.ns
        self.n_images += 1

    def as_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"n_images": self.n_images, "n_gt": self.ctc.n_ref}
        counts = self.counts or [Counts() for _ in self.thresholds]
        for c, t in zip(counts, self.thresholds):
            out[f"ap@{t:.2f}"] = c.ap
        for c, t in zip(counts, self.thresholds):
            out[f"f1@{t:.2f}"] = c.f1
        if counts:
            out["ap_mean"] = float(np.mean([c.ap for c in counts]))
        out.update(seg=self.ctc.seg, det=self.ctc.det, op_csb=self.ctc.op_csb)
        return out


def evaluate_pairs(pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                   thresholds: Sequence[float] = AP_THRESHOLDS) -> Scores:
    """Pool every score over (gt, pred) pairs."""
    scores = Scores(thresholds=tuple(float(t) for t in thresholds))
    for gt, pred in pairs:
        scores.add(gt, pred)
    return scores


def average_precision(gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = (0.5, 0.75, 0.9)) -> list[float]:
    """AP = TP / (TP + FP + FN) per IoU threshold, in the order given (Cellpose/StarDist convention, not COCO)."""
    return [c.ap for c in evaluate_pairs([(gt, pred)], thresholds).counts]


def f1_score(gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = (0.5,)) -> list[float]:
    return [c.f1 for c in evaluate_pairs([(gt, pred)], thresholds).counts]


def seg_det(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """CTC SEG, DET and OP_CSB of one image pair."""
    c = ctc_counts(overlap(gt, pred))
    return {"seg": c.seg, "det": c.det, "op_csb": c.op_csb}


# ------------------------------------------------------------------------------------ crowd regions, COCO AP

def drop_crowd_predictions(pred: np.ndarray, crowd: np.ndarray | None) -> np.ndarray:
    """Predicted objects lying mostly (> 50 % of their area) in a crowd region removed: COCO does not count a
    detection matched to an ``iscrowd`` region as a false positive, and the crowd's cells are not references."""
    if crowd is None or not crowd.any():
        return pred
    p = np.asarray(pred)
    area = np.bincount(p.ravel())
    inside = np.bincount(p[crowd].ravel(), minlength=area.size)
    drop = inside * 2 > area
    drop[0] = False
    if not drop.any():
        return p
    out = p.copy()
    out[drop[p]] = 0
    return out


#: LIVECell's evaluator raises COCO's 100 detections per image (its images hold up to ~3,000 cells) to one
#: maxDets value; 2,000 is the figure its benchmark reports with
COCO_MAX_DETS = 2000


def _instance_rles(labels: np.ndarray) -> tuple[list[dict], np.ndarray]:
    """Compressed RLE of every object of a label image (ids ascending) via pycocotools, and the ids."""
    from pycocotools import mask as mask_utils
    from scipy import ndimage as ndi

    lab = np.asarray(labels)
    ids, inv = np.unique(lab.ravel(), return_inverse=True)
    dense = inv.reshape(lab.shape).astype(np.int64) + (0 if ids.size and ids[0] == 0 else 1)  # objects 1..n
    ids = ids[ids != 0]
    rles = []
    for k, sl in enumerate(ndi.find_objects(dense), start=1):
        m = np.zeros(lab.shape, np.uint8, order="F")
        m[sl] = dense[sl] == k
        rles.append(mask_utils.encode(m))
    return rles, ids


def coco_mask_ap(items: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]],
                 max_dets: int = COCO_MAX_DETS) -> dict[str, float]:
    """COCO mask AP (IoU 0.50:0.95), AP50, AP75 and AR via pycocotools ``COCOeval`` (``iouType='segm'``,
    single category, ``maxDets=[max_dets]`` as LIVECell's evaluator sets it).

    ``items``: (gt labels, predicted labels, per-object scores in ascending id order or None = all 1,
    crowd mask or None) per image. Crowd masks become ``iscrowd`` ground truth, which COCOeval ignores.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, gts, dets = [], [], []
    for img_id, (gt, pred, scores, crowd) in enumerate(items, start=1):
        gt, pred = _check_pair(gt, pred)
        h, w = gt.shape
        images.append({"id": img_id, "height": h, "width": w})
        g_rles, _ = _instance_rles(gt)
        for r in g_rles:
            gts.append({"segmentation": r, "area": float(_rle_area(r)), "iscrowd": 0})
        if crowd is not None and crowd.any():
            r = _instance_rles(crowd.astype(np.uint8))[0][0]
            gts.append({"segmentation": r, "area": float(_rle_area(r)), "iscrowd": 1})
        p_rles, p_ids = _instance_rles(pred)
        sc = np.ones(len(p_ids)) if scores is None else np.asarray(scores, float)
        if sc.shape != (len(p_ids),):
            raise ValueError(f"image {img_id}: {len(p_ids)} predicted objects but {sc.size} scores")
        for r, s in zip(p_rles, sc):
            dets.append({"image_id": img_id, "category_id": 1, "segmentation": r, "score": float(s)})
        for a in gts:
            a.setdefault("image_id", img_id)
    if not images:
        raise ValueError("coco_mask_ap needs at least one image")
    for k, a in enumerate(gts, start=1):
        a.update(id=k, category_id=1)
    for k, a in enumerate(dets, start=1):
        a.update(id=k, area=float(_rle_area(a["segmentation"])))
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "cell"}]}
        coco_gt.createIndex()
        if not dets:
            return {"coco_ap": 0.0, "coco_ap50": 0.0, "coco_ap75": 0.0, "coco_ar": 0.0}
        coco_dt = COCO()
        coco_dt.dataset = {"images": images, "annotations": dets, "categories": [{"id": 1, "name": "cell"}]}
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.maxDets = [int(max_dets)]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, 0, 0, 0]  # [iou, recall] for area 'all', the one maxDets
    rec = ev.eval["recall"][:, 0, 0, 0]

    def mean_valid(a: np.ndarray) -> float:
        v = a[a > -1]
        return float(v.mean()) if v.size else 0.0

    return {"coco_ap": mean_valid(prec), "coco_ap50": mean_valid(prec[0]), "coco_ap75": mean_valid(prec[5]),
            "coco_ar": mean_valid(rec)}


def _rle_area(rle: dict) -> int:
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(rle))
