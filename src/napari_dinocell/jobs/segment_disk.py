"""Segmentation results written to disk: one field's labels TIFF and per-object table, or a whole well or plate of
a CPJUMP1 tree.

A well or plate is ``dinocell-core segment-plate``'s own runner (:class:`dinocell_core.seg.plate.PlateRun`): the
same labels layout, Parquet measurements and resumability, with its yields as this job's progress and cancel
points. A single field's table has the same columns, so both aggregate alike.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from napari_dinocell.jobs.runner import Progress

#: what Save writes: the labels TIFF, the per-object table, or both
SaveWhat = Literal["labels", "measurements", "both"]


def units_note(intensity: np.ndarray | None) -> dict[str, str]:
    """What the table's numbers mean (stored in the Parquet file's metadata under ``dinocell_units``)."""
    from dinocell_core.measure.minimal import intensity_scale

    note = {"AreaShape": "pixels (areas in px², lengths in px, Orientation in degrees)",
            "Location": "pixels, x = column and y = row of the image"}
    if intensity is not None:
        scale = intensity_scale(np.asarray(intensity))
        note["Intensity"] = (f"image values ÷ {scale:g} (the {np.asarray(intensity).dtype} maximum), i.e. 0–1 as "
                             "CellProfiler rescales them" if scale != 1 else "image values as they are (float image)")
    return note


def save_job(labels: np.ndarray, intensity: np.ndarray | None, folder: Path, stem: str,
             constants: Mapping[str, Any], what: SaveWhat, channel: str = "image",
             objects: str = "Cells", features: str = "minimal") -> list[Path]:
    """Write the labels TIFF and/or the per-object Parquet table of one field (atomically).

    The table has ``segment-plate``'s columns for ``features`` (:func:`dinocell_core.measure.cells.measure_one`:
    ``ObjectNumber``, ``<objects>_AreaShape_*``, ``<objects>_Location_Center_X/Y``, ``<objects>_Intensity_*_<channel>``
    and, with ``full``, CellProfiler's texture, granularity, radial distribution and Zernike features by cp-measure;
    ``objects`` "Nuclei" for a DNA layer, as segment-plate names them) after the ``Metadata_*`` constants, and is
    Parquet like segment-plate's, so a table exported here and one from the CLI aggregate alike. What the numbers mean
    (:func:`units_note`: intensities ÷ the type's maximum) is in the file's metadata, ``dinocell_units``."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import tifffile

    from dinocell_core.io.fsutil import atomic_path
    from dinocell_core.seg.distance import compact_labels
    from dinocell_core.measure.cells import check_features, measure_one

    if what in ("measurements", "both"):
        check_features(features)  # cp-measure missing: said before anything is written
    written = []
    if what in ("labels", "both"):
        path = folder / f"{stem}_labels.tiff"
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, compact_labels(labels), compression="zlib")
        written.append(path)
    if what in ("measurements", "both"):
        path = folder / f"{stem}_objects.parquet"
        table = measure_one(labels, None if intensity is None else {channel: intensity}, objects, features)
        for i, (key, value) in enumerate(constants.items()):
            table.insert(i, key, value)
        arrow = pa.Table.from_pandas(table, preserve_index=False)
        meta = {**(arrow.schema.metadata or {}), b"dinocell_units": json.dumps(units_note(intensity)).encode()}
        with atomic_path(path) as tmp:
            pq.write_table(arrow.replace_schema_metadata(meta), tmp)
        written.append(path)
    return written


@dataclass
class BatchResult:
    folder: Path  # a segment-plate output folder (seg.plate's layout)
    fields: int  # fields of the well/plate finished in this folder (this run's and earlier ones')
    objects: int  # rows of their measurement parts
    table: Path | None  # the plate's one Parquet table, once every field of the plate is done


def segment_fields_job(root: str, plate_folder: str, well: str | None, channel: int, bundle_path: Path,
                       device: str, tile_size: int | None, peak: float, fill: float, min_size: int,
                       folder: Path, features: str = "minimal") -> Generator[Progress, None, BatchResult]:
    """Every field of ``plate_folder`` (only ``well`` if given) through ``segment-plate`` into ``folder``: the
    bundle segments ``channel`` as nuclei (DNA) or cells (any other channel) with the widget's thresholds and
    measures ``features`` (minimal | full); fields already done there are skipped."""
    from dinocell_core.jump.channels import channel_number
    from dinocell_core.seg.plate import CELLS, NUCLEI, PlateRun

    obj = NUCLEI if channel == channel_number("DNA") else CELLS
    run = PlateRun({obj: bundle_path}, root, folder, plates=[plate_folder], wells=[well] if well else None,
                   device=device, tile_size=tile_size, model_channels={obj: channel},
                   thresholds={obj: {"peak": peak, "fill": fill, "min_size": min_size}}, features=features)
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
