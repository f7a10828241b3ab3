"""The Segment widget's background work: the network pass over layers, re-thresholding, saving results, and a
whole well or plate of a CPJUMP1 tree to disk. Plain functions and generators run by
:func:`napari_dinocell.jobs.start_job`; no widget code.

Labels always come from :meth:`dinocell_core.seg.inference.Segmenter.labels` + ``compact_labels``, as
``dinocell-core segment`` writes them, so the widget, the batch job and the CLI agree. A batch job writes
``<plate>_<well>_s<site>_<channel>_labels.tiff`` per field and a summary CSV; when the segmentation issue's
plate-scale runner lands in ``dinocell_core``, it should call that instead.
"""

from __future__ import annotations

import csv
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
    summary: Path
    fields: int
    objects: int


def segment_fields_job(root: str, plate_folder: str, well: str | None, channel: int, bundle_path: Path,
                       device: str, tile_size: int | None, peak: float, fill: float, min_size: int,
                       folder: Path) -> Generator[Progress, None, BatchResult]:
    """Every field of ``plate_folder`` (only ``well`` if given) → a labels TIFF each + a summary CSV."""
    import tifffile

    from dinocell_core.io.fsutil import atomic_path
    from dinocell_core.jump.channels import CHANNELS
    from dinocell_core.jump.index import load_index
    from dinocell_core.jump.preprocess import read_field
    from dinocell_core.seg.inference import Segmenter

    fields = sorted((f for f in load_index(root) if f.plate_folder == plate_folder and well in (None, f.well)),
                    key=lambda f: (f.well, f.site))
    if not fields:
        raise FileNotFoundError(f"no fields of {plate_folder}{f' well {well}' if well else ''} in the index of {root}")
    seg = Segmenter(load_bundle(bundle_path), device=device, tile_size=tile_size)
    rows = []
    try:
        for i, f in enumerate(fields):
            image = read_field(root, f, [channel])[0]
            distance = None
            for item in seg.iter_distance(image):
                if isinstance(item, np.ndarray):
                    distance = item
                else:
                    yield Progress(i, len(fields), f"{f.well} site {f.site}: tile {item[0]}/{item[1]}")
            if distance is None:
                raise RuntimeError(f"{bundle_path.name}: inference produced no distance map for {f.key}")
            labels = compact_labels(seg.labels(distance, peak_threshold=peak, fill_threshold=fill,
                                               min_size=min_size))
            path = folder / f"{f.plate}_{f.well}_s{f.site}_{CHANNELS[channel]}_labels.tiff"
            with atomic_path(path) as tmp:
                tifffile.imwrite(tmp, labels, compression="zlib")
            rows.append((f.plate, f.well, f.site, int(len(np.unique(labels)) - (labels.min() == 0)), path.name))
            yield Progress(i + 1, len(fields), f"{f.well} site {f.site}: {rows[-1][3]} objects")
    finally:
        seg.release()
    plate = fields[0].plate
    summary = folder / f"{plate}{'_' + well if well else ''}_{CHANNELS[channel]}_summary.csv"
    with atomic_path(summary) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["plate", "well", "site", "objects", "labels_file"])
        writer.writerows(rows)
    return BatchResult(summary, len(rows), sum(r[3] for r in rows))
