"""The Segment dock's results panel, where results leave the viewer: the results folder, Save labels / Export
measurements of the current image (hand edits included), and every site of a JUMP browser layer's well or plate
segmented to disk; with the file names and table columns those results get."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from napari.layers import Image
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from dinocell_core.jump.channels import channel_number
from napari_dinocell.layer_meta import PLATE, SITE, WELL
from napari_dinocell.layers import STALE
from napari_dinocell.widgets.common import PathEdit
from napari_dinocell.widgets.segment.images import layer_channel

if TYPE_CHECKING:
    from dinocell_core.seg.bundle import BundleInfo


def result_stem(source: Image) -> str:
    """File stem for a source layer's results: plate_well_site_channel for a JUMP field, else the layer name."""
    meta = source.metadata
    name = source.name.removesuffix(STALE)
    if all(meta.get(k) is not None for k in (PLATE, WELL, SITE)):
        name = f"{meta[PLATE]}_{meta[WELL]}_s{meta[SITE]}_{name}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


def object_name(source: Image, model: BundleInfo | None) -> str:
    """The objects a table describes, as segment-plate names them: "Nuclei" for a DNA image (or a DNA model's
    labels), else "Cells"."""
    dna = channel_number("DNA")
    channel = layer_channel(source)
    if channel is None and model is not None:
        try:
            channel = channel_number(model.channel)
        except (ValueError, KeyError):
            channel = None
    return "Nuclei" if channel == dna else "Cells"


def table_constants(source: Image, model_name: str | None) -> dict[str, Any]:
    """The ``Metadata_*`` columns of an exported table: the field (when known), the image and the model."""
    meta = source.metadata
    constants = {f"Metadata_{k.capitalize()}": meta[k] for k in (PLATE, WELL, SITE) if meta.get(k) is not None}
    constants["Metadata_Image"] = source.name
    if model_name is not None:
        constants["Metadata_Model"] = model_name
    return constants


class ResultsExport(QWidget):
    """Folder and buttons; ``save_requested("labels" | "measurements")`` and ``batch_requested("well" | "plate")``
    say what the user asked for (the dock runs it)."""

    save_requested = Signal(str)
    batch_requested = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.folder = PathEdit("results folder (labels TIFF, objects Parquet)", "dir",
                               settings_key="segment/results_folder")
        self.save_btn = QPushButton("Save labels")
        self.save_btn.setToolTip("<results>/<plate>_<well>_s<site>_<channel>_labels.tiff (with hand edits)")
        self.save_btn.clicked.connect(lambda: self.save_requested.emit("labels"))
        self.export_btn = QPushButton("Export measurements")
        self.export_btn.setToolTip("<results>/<plate>_<well>_s<site>_<channel>_objects.parquet, one row per object "
                                   "with CellProfiler's columns (Nuclei_* for a DNA image, else Cells_*): area and "
                                   "shape (px), centre (px), intensities ÷ the image type's maximum (0–1, as "
                                   "CellProfiler), like segment-plate's tables")
        self.export_btn.clicked.connect(lambda: self.save_requested.emit("measurements"))
        self.features = QComboBox()
        self.features.addItems(["minimal", "full"])
        self.features.setToolTip("measurements of Export and of the well/plate runs: minimal (17 per object) or full "
                                 "(CellProfiler's by cp-measure: + texture, granularity, radial distribution, "
                                 "Zernike, Feret; pip install 'dinocell[measure]')")
        self.well_btn = QPushButton("Segment this well → disk")
        self.plate_btn = QPushButton("Segment this plate → disk")
        for btn, scope in ((self.well_btn, "well"), (self.plate_btn, "plate")):
            btn.setToolTip(f"every site of the layer's {scope} (a JUMP browser layer), with this model and these "
                           "thresholds, in the background: segment-plate's labels TIFFs + per-cell Parquet measurements "
                           "in the results folder (fields already there are skipped)")
            btn.clicked.connect(lambda _=False, s=scope: self.batch_requested.emit(s))
        save_row = QHBoxLayout()
        save_row.addWidget(self.save_btn)
        save_row.addWidget(self.export_btn)
        save_row.addWidget(self.features)
        batch_row = QHBoxLayout()
        batch_row.addWidget(self.well_btn)
        batch_row.addWidget(self.plate_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Results"))
        layout.addWidget(self.folder)
        layout.addLayout(save_row)
        layout.addLayout(batch_row)
