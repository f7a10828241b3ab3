"""Segment a whole well or plate of a CPJUMP1 tree in the background, writing labels to disk (not the viewer).

One model is loaded once for all fields; each field's channel is read as the JUMP browser shows it, segmented with
:class:`~dinocell_core.seg.inference.Segmenter` (the CLI's code, so each TIFF equals what ``dinocell-core segment``
writes for that image) and written atomically as ``<plate>_<well>_s<site>_<channel>_labels.tiff``; a summary CSV
lists the object count of every field. When the segmentation issue's plate-scale runner lands in
``dinocell_core``, this job should call it instead.
"""

from __future__ import annotations

import csv
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_dinocell.jobs import Progress


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
    from dinocell_core.seg.bundle import load_bundle
    from dinocell_core.seg.distance import compact_labels
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
