"""Backbone features widget: PCA of a checkpoint's patch features on the current image, as an RGB layer.

Shows what pretraining learned (cells vs background, nuclei vs cytoplasm…) and lets two checkpoints of a run be
compared on the same field: each (image, checkpoint) pair gets its own layer, updated in place on re-run. When the
image's data changes (the JUMP browser's next site), its PCA layers are marked stale and hidden, and a result
computed from the previous data is dropped.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)
from superqt.utils import WorkerBase

from napari_dinocell.jobs.gc_pauses import watch as watch_gc_pauses
from napari_dinocell.jobs.features import features_job
from napari_dinocell.jobs.runner import start_job
from napari_dinocell.layer_meta import SOURCE_LAYER
from napari_dinocell.layers import STALE
from napari_dinocell.notify import show_error, show_warning
from napari_dinocell.status import JobStatus
from napari_dinocell.widgets.common import LayerCombo, PathEdit, scroll_layout
from napari_dinocell.widgets.job_progress import JobProgress

if TYPE_CHECKING:
    from dinocell_core.backbones.pca import FeaturePCA

FROM_CHECKPOINT = "from checkpoint"
ARCHS = (FROM_CHECKPOINT, "vit_small", "vit_base", "vit_large", "vit_test")


class FeaturesWidget(QWidget):
    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        watch_gc_pauses(napari_viewer, self)
        self.status = JobStatus()
        self.worker: WorkerBase | None = None
        self._pca: dict[tuple[int, str], Any] = {}  # (id(source layer), checkpoint tag) → PCA layer
        self._watched: set[int] = set()
        self.layer_combo = LayerCombo(napari_viewer)
        self.weights = PathEdit("checkpoint / run folder / .safetensors (empty: random init)", "file",
                                settings_key="features/weights")
        self.arch = QComboBox()
        self.arch.addItems(ARCHS)
        self.arch.setToolTip("'from checkpoint': read from the run/checkpoint/export; official .pth needs a choice")
        self.patch = QSpinBox()
        self.patch.setRange(4, 32)
        self.patch.setValue(8)
        self.arch.currentTextChanged.connect(lambda text: self.patch.setEnabled(text != FROM_CHECKPOINT))
        self.patch.setEnabled(False)
        self.tile = QSpinBox()
        self.tile.setRange(64, 4096)
        self.tile.setSingleStep(64)
        self.tile.setValue(512)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.run_btn = QPushButton("Compute PCA features")
        self.run_btn.clicked.connect(self.compute)
        self.progress = JobProgress(self.status, self.cancel, unit="tiles")
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.status.events.message.connect(lambda text: self.message.setText(str(text)))

        form = QFormLayout()
        form.addRow("Image", self.layer_combo)
        form.addRow("Checkpoint", self.weights)
        form.addRow("Architecture", self.arch)
        form.addRow("Patch size", self.patch)
        form.addRow("Tile (px)", self.tile)
        form.addRow("Device", self.device)
        layout = scroll_layout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_btn)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self._update_enabled()

    def compute(self) -> None:
        layer = self.layer_combo.current_layer()
        if layer is None:
            show_error("choose an image layer first")
            return
        original = layer.data
        data = np.asarray(original)
        if data.ndim != 2 and not layer.rgb:
            show_error(f"layer {layer.name!r} has shape {data.shape}; choose a 2-D image")
            return
        weights = self.weights.text() or None
        source = weakref.ref(layer)
        tag = Path(weights).name if weights else "random init"

        self._watch(layer)

        def show(result: FeaturePCA) -> None:
            src = source()
            if src is None or src not in self.viewer.layers:
                return
            if src.data is not original:
                show_warning(f"dropped the PCA of {src.name!r}: its image changed while computing")
                return
            name = f"{src.name} PCA · {tag}"
            p = result.patch_size
            scale = np.asarray(src.scale[-2:]) * p
            translate = np.asarray(src.translate[-2:]) + (p - 1) / 2 * np.asarray(src.scale[-2:])
            key = (id(src), tag)
            pca = self._pca.get(key)
            if pca is not None and pca in self.viewer.layers:
                pca.data = result.rgb
                pca.name, pca.visible = name, True
            else:
                self._pca[key] = self.viewer.add_image(
                    result.rgb, name=name, rgb=True, scale=scale, translate=translate, blending="translucent",
                    metadata={SOURCE_LAYER: src.name})
            ev = ", ".join(f"{v:.0%}" for v in result.explained)
            self.status.finish(f"{name}: variance explained by PC1–3 {ev}")

        arch = None if self.arch.currentText() == FROM_CHECKPOINT else self.arch.currentText()
        self.worker = start_job(features_job, data, weights, arch, self.patch.value(),
                                self.device.currentText(), self.tile.value(), status=self.status,
                                title="Backbone features", on_returned=show, on_finished=self._finished)
        self._update_enabled()

    def _watch(self, layer: Any) -> None:
        if id(layer) not in self._watched:
            self._watched.add(id(layer))
            layer.events.data.connect(self._source_changed)

    def _source_changed(self, event: Any) -> None:
        """The image changed: its PCA layers no longer show its features."""
        for (sid, _), pca in self._pca.items():
            if sid == id(event.source) and pca in self.viewer.layers and not pca.name.endswith(STALE):
                pca.name += STALE
                pca.visible = False

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _finished(self) -> None:
        self.worker = None
        self._update_enabled()

    def _update_enabled(self) -> None:
        self.run_btn.setEnabled(self.worker is None)
