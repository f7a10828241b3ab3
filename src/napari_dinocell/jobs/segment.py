"""The Segment widget's work in the viewer: the network pass over image layers and re-thresholding a cached
distance map.

Labels always come from :meth:`dinocell_core.seg.inference.Segmenter.labels` + ``compact_labels``, as
``dinocell-core segment`` writes them, so the widget, the batch job and the CLI agree.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels

from napari_dinocell.jobs.imports import warm_first_labels_layer
from napari_dinocell.jobs.model_cache import MODELS
from napari_dinocell.jobs.runner import Progress

if TYPE_CHECKING:
    from dinocell_core.seg.inference import Segmenter


@dataclass
class SegmentTask:
    """One model over one layer's image; a multichannel model gets one image per channel it reads (the field's
    layers of those channels), its labels shown with ``layer_ref``."""

    layer_ref: weakref.ref[Image]
    image: np.ndarray | list[np.ndarray]
    bundle_path: Path
    generation: int
    channel: int | None = None


@dataclass
class SegmentResult:
    task: SegmentTask
    segmenter: Segmenter  # without its network: its labels() is the thresholding step, as in the CLI
    distance: np.ndarray
    labels: np.ndarray
    labels_layer: Labels  # built in the worker: napari's Labels constructor scans the whole array


def segment_job(
    tasks: list[SegmentTask], device: str, tile_size: int | None, peak: float, fill: float, min_size: int
) -> Generator[Progress, None, list[SegmentResult]]:
    """Run each task's model over its image; yields tile progress (cancel points) and returns the results.

    Models come loaded from :data:`~napari_dinocell.jobs.model_cache.MODELS` (read once per file and device).
    """
    warm_first_labels_layer()
    results: list[SegmentResult] = []
    for n, task in enumerate(tasks):
        segmenter = MODELS.segmenter(task.bundle_path, device, tile_size, task.channel)
        distance = None
        for item in segmenter.iter_distance(task.image):
            if isinstance(item, np.ndarray):
                distance = item
            else:
                done, total = item
                yield Progress(done, total, f"image {n + 1}/{len(tasks)}: {task.bundle_path.stem}")
        if distance is None:
            raise RuntimeError(f"{task.bundle_path.name}: inference produced no distance map")
        # the widget keeps a Segmenter per result for re-thresholding (labels() needs only the thresholds): a copy
        # without the network, so a result never keeps a model alive after the cache dropped it
        segmenter = copy.copy(segmenter)
        segmenter.model = None
        labels = threshold_job(segmenter, distance, peak, fill, min_size)
        results.append(SegmentResult(task, segmenter, distance, labels, Labels(labels)))
    return results


def threshold_job(segmenter: Segmenter, distance: np.ndarray, peak: float, fill: float, min_size: int) -> np.ndarray:
    """Labels from a distance map exactly as ``dinocell-core segment`` writes them."""
    from dinocell_core.seg.distance import compact_labels

    return compact_labels(segmenter.labels(distance, peak_threshold=peak, fill_threshold=fill, min_size=min_size))


def warm_segmentation() -> None:
    """The imports a first segmentation needs (torch, the model code, scipy/scikit-image for the labels) and
    napari's first-Labels-layer work, done in a worker when the Segment dock opens: neither the dock's opening nor
    the first Segment click pays them."""
    import dinocell_core.seg.bundle  # noqa: F401
    import dinocell_core.seg.distance  # noqa: F401
    import dinocell_core.seg.inference  # noqa: F401

    warm_first_labels_layer()
