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
