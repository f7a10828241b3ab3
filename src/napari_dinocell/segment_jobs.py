"""The Segment widget's background work: the network pass over layers, re-thresholding, saving results, and a
whole well or plate of a CPJUMP1 tree to disk. Plain functions and generators run by
:func:`napari_dinocell.jobs.start_job`; no widget code.

Labels always come from :meth:`dinocell_core.seg.inference.Segmenter.labels` + ``compact_labels``, as
``dinocell-core segment`` writes them, so the widget, the batch job and the CLI agree. A well or plate to disk is
``dinocell-core segment-plate``'s own runner (:class:`dinocell_core.seg.plate.PlateRun`): the same labels layout,
Parquet measurements and resumability, with its yields as this job's progress and cancel points.
"""

from __future__ import annotations

import weakref
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels

from dinocell_core.seg.bundle import load_bundle
from dinocell_core.seg.distance import compact_labels
from napari_dinocell.jobs import Progress


@dataclass
class SegmentTask:
    layer_ref: weakref.ref
    image: np.ndarray
    bundle_path: Path
    generation: int
    channel: int | None = None


@dataclass
class SegmentResult:
    task: SegmentTask
    segmenter: Any  # a released Segmenter: its labels() is the thresholding step, as in the CLI
    distance: np.ndarray
    labels: np.ndarray
    labels_layer: Labels  # built in the worker: napari's Labels constructor scans the whole array


def segment_job(
    tasks: list[SegmentTask], device: str, tile_size: int | None, peak: float, fill: float, min_size: int
) -> Generator[Progress, None, list[SegmentResult]]:
    """Run each task's model over its image; yields tile progress (cancel points) and returns the results.

    The model is released (GPU memory freed) after each task, also when cancelled or failed.
    """
    from dinocell_core.seg.inference import Segmenter

    warm_first_labels_layer()
    results: list[SegmentResult] = []
    for n, task in enumerate(tasks):
        segmenter = Segmenter(load_bundle(task.bundle_path), device=device, tile_size=tile_size,
                              channel=task.channel)
        try:
            distance = None
            for item in segmenter.iter_distance(task.image):
                if isinstance(item, np.ndarray):
                    distance = item
                else:
                    done, total = item
                    yield Progress(done, total, f"image {n + 1}/{len(tasks)}: {task.bundle_path.stem}")
            if distance is None:
                raise RuntimeError(f"{task.bundle_path.name}: inference produced no distance map")
        finally:
            segmenter.release()
            # the widget keeps this Segmenter for re-thresholding (labels() needs only the thresholds): drop the
            # bundle's weights too, or each result would hold a copy of its model in memory
            segmenter.bundle = replace(segmenter.bundle, state_dict={})
        labels = threshold_job(segmenter, distance, peak, fill, min_size)
        results.append(SegmentResult(task, segmenter, distance, labels, Labels(labels)))
    return results


def threshold_job(segmenter: Any, distance: np.ndarray, peak: float, fill: float, min_size: int) -> np.ndarray:
    """Labels from a distance map exactly as ``dinocell-core segment`` writes them."""
    return compact_labels(segmenter.labels(distance, peak_threshold=peak, fill_threshold=fill, min_size=min_size))


def save_job(labels: np.ndarray, intensity: np.ndarray | None, folder: Path, stem: str,
             constants: dict[str, Any], what: str, channel: str = "image") -> list[Path]:
    """Write the labels TIFF and/or the per-object CSV of one field (atomically).

    The CSV has ``segment-plate``'s columns (:func:`dinocell_core.seg.measure.measure_objects`: ``ObjectNumber``,
    ``Cells_AreaShape_*``, ``Cells_Intensity_*_<channel>``) after the ``Metadata_*`` constants, so a table exported
    here and one from the CLI aggregate alike."""
    import tifffile

    from dinocell_core.io.fsutil import atomic_path
    from dinocell_core.seg.measure import measure_objects

    written = []
    if what in ("labels", "both"):
        path = folder / f"{stem}_labels.tiff"
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, compact_labels(labels), compression="zlib")
        written.append(path)
    if what in ("measurements", "both"):
        path = folder / f"{stem}_objects.csv"
        table = measure_objects(labels, None if intensity is None else {channel: intensity})
        for i, (key, value) in enumerate(constants.items()):
            table.insert(i, key, value)
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        written.append(path)
    return written


def warm_first_labels_layer() -> None:
    """Do here, in the worker, the one-time work napari would do on the GUI thread when the session's first Labels
    layer is added: lazy imports (pandas alone takes ~0.2 s) and vispy's dash-pattern cache, which the first
    anti-aliased line (the layer's polygon-tool overlay) fills in ~80 ms of Python loops."""
    import napari._qt.layer_controls.qt_labels_controls  # noqa: F401
    import napari._vispy.layers.labels  # noqa: F401
    import pandas  # noqa: F401
    from vispy.visuals.line.dash_atlas import DashAtlas

    DashAtlas()



@dataclass
class BatchResult:
    folder: Path  # a segment-plate output folder (seg.plate's layout)
    fields: int  # fields of the well/plate finished in this folder (this run's and earlier ones')
    objects: int  # rows of their measurement parts
    table: Path | None  # the plate's one Parquet table, once every field of the plate is done


def segment_fields_job(root: str, plate_folder: str, well: str | None, channel: int, bundle_path: Path,
                       device: str, tile_size: int | None, peak: float, fill: float, min_size: int,
                       folder: Path) -> Generator[Progress, None, BatchResult]:
    """Every field of ``plate_folder`` (only ``well`` if given) through ``segment-plate`` into ``folder``: the
    bundle segments ``channel`` as nuclei (DNA) or cells (any other channel) with the widget's thresholds; fields
    already done there are skipped."""
    from dinocell_core.jump.channels import channel_number
    from dinocell_core.seg.plate import CELLS, NUCLEI, PlateRun

    obj = NUCLEI if channel == channel_number("DNA") else CELLS
    run = PlateRun({obj: bundle_path}, root, folder, plates=[plate_folder], wells=[well] if well else None,
                   device=device, tile_size=tile_size, model_channels={obj: channel},
                   thresholds={obj: {"peak": peak, "fill": fill, "min_size": min_size}})
    for step in run.iter_run():
        text = f"{step.field}: tile {step.tile}/{step.tiles}" if step.tiles else f"{step.done}/{step.total} fields"
        yield Progress(step.done, step.total, text)
    res = run.result
    assert res is not None
    if res.failed:
        raise RuntimeError(f"{len(res.failed)} field(s) failed (the others are written; run again to retry): "
                           + "; ".join(res.failed[:3]))
    table = run.layout.plate_table(plate_folder)
    return BatchResult(folder, res.done, run.objects(), table if table.is_file() else None)
