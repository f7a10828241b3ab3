"""Stable import path for the instance-segmentation scores; the code is in :mod:`dinocell_core.seg.metrics`."""

from dinocell_core.seg.metrics import AP_THRESHOLDS, average_precision, evaluate_pairs, f1_score, seg_det

__all__ = ["AP_THRESHOLDS", "average_precision", "evaluate_pairs", "f1_score", "seg_det"]
