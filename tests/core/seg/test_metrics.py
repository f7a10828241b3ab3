"""Metric values on hand-made cases: perfect, splits, merges, misses, false positives, empty images."""

from __future__ import annotations

import numpy as np
import pytest

from dinocell_core.seg.metrics import (
    AP_THRESHOLDS,
    average_precision,
    evaluate_pairs,
    f1_score,
    seg_det,
)


def boxes(shape=(20, 40), *rects) -> np.ndarray:
    lab = np.zeros(shape, np.int32)
    for i, (y0, y1, x0, x1) in enumerate(rects, start=1):
        lab[y0:y1, x0:x1] = i
    return lab


A = (0, 10, 0, 10)
B = (0, 10, 20, 30)


def test_perfect_match_with_other_ids() -> None:
    gt = boxes((20, 40), A, B)
    pred = gt * 7  # ids differ, objects identical
    assert average_precision(gt, pred, AP_THRESHOLDS) == [1.0] * len(AP_THRESHOLDS)
    assert seg_det(gt, pred) == {"seg": 1.0, "det": 1.0, "op_csb": 1.0}


def test_miss_and_false_positive() -> None:
    gt = boxes((20, 40), A, B)
    pred = boxes((20, 40), A, (12, 18, 32, 38))  # B missed, one FP
    assert average_precision(gt, pred, [0.5]) == [pytest.approx(1 / 3)]  # TP1 FP1 FN1
    assert f1_score(gt, pred, [0.5]) == [pytest.approx(0.5)]
    s = seg_det(gt, pred)
    assert s["seg"] == pytest.approx(0.5)  # FP not penalised by SEG
    assert s["det"] == pytest.approx(1 - (10 + 1) / 20)


def test_split() -> None:
    gt = boxes((20, 40), (0, 10, 0, 20))  # one 10×20 object
    pred = boxes((20, 40), (0, 10, 0, 12), (0, 10, 12, 20))  # split 60% / 40%
    # IoU 0.6 for the larger part: TP at 0.5, not at 0.65; the other part is a FP
    assert average_precision(gt, pred, [0.5, 0.65]) == [pytest.approx(1 / 2), pytest.approx(0.0)]
    s = seg_det(gt, pred)
    assert s["seg"] == pytest.approx(0.6)
    assert s["det"] == pytest.approx(1 - 1 / 10)  # one FP (the smaller part matches nothing)


def test_merge() -> None:
    gt = boxes((20, 40), (0, 10, 0, 10), (0, 10, 10, 20))
    pred = boxes((20, 40), (0, 10, 0, 20))  # both merged into one
    # IoU 100/200 = 0.5 with each: one of them matches at 0.5 (TP1 FN1), none above
    assert average_precision(gt, pred, [0.5, 0.55]) == [pytest.approx(0.5), pytest.approx(0.0)]
    s = seg_det(gt, pred)
    # both references matched by the merged object (|R∩S| = |R| > 0.5|R|): NS = 1
    assert s["seg"] == pytest.approx(0.5)
    assert s["det"] == pytest.approx(1 - 5 / 20)


def test_iou_exactly_at_threshold_counts() -> None:
    gt = boxes((20, 40), (0, 10, 0, 10))
    pred = boxes((20, 40), (0, 10, 0, 20))  # IoU 0.5 exactly
    assert average_precision(gt, pred, [0.5, 0.51]) == [1.0, 0.0]


def test_one_to_one_matching_is_optimal() -> None:
    # a greedy match of gt1 to its best pred would steal the only partner of gt2
    gt = np.zeros((10, 30), np.int32)
    gt[:, 0:10] = 1
    gt[:, 10:20] = 2
    pred = np.zeros_like(gt)
    pred[:, 0:14] = 1   # IoU with gt1 = 10/14, with gt2 = 4/20
    pred[:, 14:20] = 2  # IoU with gt2 = 0.6
    assert average_precision(gt, pred, [0.55]) == [1.0]


def test_empty_images() -> None:
    z = np.zeros((8, 8), np.int32)
    one = z.copy()
    one[2:5, 2:5] = 1
    assert average_precision(z, z, [0.5]) == [1.0]
    assert average_precision(one, z, [0.5]) == [0.0]
    assert average_precision(z, one, [0.5]) == [0.0]
    assert seg_det(one, z) == {"seg": 0.0, "det": 0.0, "op_csb": 0.0}


def test_pooling_over_images_sums_counts() -> None:
    gt1 = boxes((20, 40), A, B)
    pred1 = gt1.copy()
    gt2 = boxes((20, 40), A)
    pred2 = np.zeros_like(gt2)
    d = evaluate_pairs([(gt1, pred1), (gt2, pred2)], [0.5]).as_dict()
    assert d["ap@0.50"] == pytest.approx(2 / 3)  # pooled TP2 FN1, not the mean of 1 and 0
    assert d["seg"] == pytest.approx(2 / 3) and d["n_images"] == 2 and d["n_gt"] == 3


def test_shape_and_dtype_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        average_precision(np.zeros((4, 4), int), np.zeros((4, 5), int), [0.5])
    with pytest.raises(ValueError, match="integer"):
        average_precision(np.zeros((4, 4), float), np.zeros((4, 4), int), [0.5])
