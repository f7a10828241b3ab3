"""Segment widget: distance-map decoder on an image layer, instant re-thresholding, per-channel models.

The network pass runs in a generator worker that yields between tile batches (progress bar + cancel). The
distance map is cached per source layer, so moving the peak/fill sliders only re-runs the cheap
distance → labels step. Each result is tied to the layer it was computed from, not to whatever layer is
selected when it arrives.
"""

from __future__ import annotations

import weakref
from collections.abc import Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from dinocell_core.jump.channels import CHANNELS, channel_number
from dinocell_core.seg.bundle import BundleInfo, list_bundles, load_bundle
from dinocell_core.seg.distance import compact_labels, labels_from_distance
from napari_dinocell.jobs import Progress, start_job
from napari_dinocell.status import JobStatus
from napari_dinocell.widgets.common import LayerCombo, PathEdit, UiSteps

DEFAULT_PEAK = 0.47
DEFAULT_FILL = 0.09


def layer_channel(layer: Any) -> int | None:
    """Channel number of a layer: from metadata (browser, reader, sample data) or from its name ("DNA")."""
    meta = layer.metadata.get("channel") if hasattr(layer, "metadata") else None
    if isinstance(meta, int):
        return meta
    try:
        return channel_number(layer.name.split(" ")[0])
    except (ValueError, KeyError):
        return None


def bundle_channel(info: BundleInfo) -> int | None:
    try:
        return channel_number(info.channel)
    except (ValueError, KeyError, TypeError):
        return None


def image_2d(layer: Any) -> np.ndarray:
    data = np.asarray(layer.data)
    if layer.rgb or data.ndim != 2:
        raise ValueError(f"layer {layer.name!r} has shape {data.shape}; segmentation needs a single-channel 2-D image")
    return data


@dataclass
class SegmentTask:
    layer_ref: weakref.ref
    image: np.ndarray
    bundle_path: Path


@dataclass
class SegmentResult:
    layer_ref: weakref.ref
    bundle_path: Path
    distance: np.ndarray
    labels: np.ndarray
    labels_layer: Labels  # built in the worker: napari's Labels constructor scans the whole array


def segment_job(
    tasks: list[SegmentTask], device: str, tile_size: int | None, peak: float, fill: float
) -> Generator[Progress, None, list[SegmentResult]]:
    """Run each task's model over its image; yields tile progress (cancel points) and returns the results.

    The model is released (GPU memory freed) after each task, also when cancelled or failed.
    """
    from dinocell_core.seg.inference import Segmenter

    warm_first_labels_layer()
    results: list[SegmentResult] = []
    for n, task in enumerate(tasks):
        segmenter = Segmenter(load_bundle(task.bundle_path), device=device, tile_size=tile_size)
        try:
            distance = None
            for item in segmenter.iter_distance(task.image):
                if isinstance(item, np.ndarray):
                    distance = item
                else:
                    done, total = item
                    yield Progress(done, total, f"model {n + 1}/{len(tasks)}: {task.bundle_path.stem}")
            if distance is None:
                raise RuntimeError(f"{task.bundle_path.name}: inference produced no distance map")
        finally:
            segmenter.release()
        labels = threshold_job(distance, peak, fill)
        results.append(SegmentResult(task.layer_ref, task.bundle_path, distance, labels, Labels(labels)))
    return results


def threshold_job(distance: np.ndarray, peak: float, fill: float) -> np.ndarray:
    return compact_labels(labels_from_distance(distance, peak_threshold=peak, fill_threshold=fill))


def warm_first_labels_layer() -> None:
    """Do here, in the worker, the one-time work napari would do on the GUI thread when the session's first Labels
    layer is added: lazy imports (pandas alone takes ~0.2 s) and vispy's dash-pattern cache, which the first
    anti-aliased line (the layer's polygon-tool overlay) fills in ~80 ms of Python loops."""
    import napari._qt.layer_controls.qt_labels_controls  # noqa: F401
    import napari._vispy.layers.labels  # noqa: F401
    import pandas  # noqa: F401
    from vispy.visuals.line.dash_atlas import DashAtlas

    DashAtlas()


class SegmentWidget(QWidget):
    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.status = JobStatus()
        self.rethreshold_status = JobStatus()
        self.bundles: list[BundleInfo] = []
        self.worker: Any = None
        # id(source layer) → (weakref to source, distance map, labels layer, distance layer)
        self.outputs: dict[int, dict[str, Any]] = {}
        self._thresholding = False
        self._threshold_again = False

        self.layer_combo = LayerCombo(napari_viewer)
        self.layer_combo.currentIndexChanged.connect(self._layer_changed)
        self.models_dir = PathEdit("models folder (decoder bundles)", "dir")
        self.models_dir.edit.editingFinished.connect(self.scan_models)
        self.model_combo = QComboBox()
        self.peak = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.fill = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        for slider, value in ((self.peak, DEFAULT_PEAK), (self.fill, DEFAULT_FILL)):
            slider.setRange(0.0, 1.0)
            slider.setDecimals(2)
            slider.setValue(value)
            slider.valueChanged.connect(self._schedule_rethreshold)
        self.tile = QSpinBox()
        self.tile.setRange(0, 8192)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("model default")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.show_distance = QCheckBox("show distance map")

        self.run_btn = QPushButton("Segment")
        self.run_btn.clicked.connect(self.segment_current)
        self.all_btn = QPushButton("Segment all channels of this field")
        self.all_btn.clicked.connect(self.segment_field)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.clicked.connect(self.cancel)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.status.events.message.connect(lambda text: self.message.setText(str(text)))
        self.status.events.state.connect(lambda _: self._update_enabled())

        form = QFormLayout()
        form.addRow("Image", self.layer_combo)
        form.addRow("Models", self.models_dir)
        form.addRow("Model", self.model_combo)
        form.addRow("Peak threshold", self.peak)
        form.addRow("Fill threshold", self.fill)
        form.addRow("Tile size", self.tile)
        form.addRow("Device", self.device)
        form.addRow(self.show_distance)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.all_btn)
        layout.addWidget(self.message)
        layout.addStretch(1)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(60)
        self._debounce.timeout.connect(self.rethreshold)
        self._ui = UiSteps(self)
        self._update_enabled()

    # ------------------------------------------------------------------------- models
    def scan_models(self, folder: str | None = None) -> None:
        if folder is not None:
            self.models_dir.setText(str(folder))
        if not self.models_dir.text():
            return
        start_job(list_bundles, self.models_dir.text(), status=JobStatus(), title="Scanning models",
                  on_returned=self._models_listed, show_progress=False)

    def _models_listed(self, bundles: list[BundleInfo]) -> None:
        if not bundles:
            raise FileNotFoundError(f"no model bundles in {self.models_dir.text()}")
        self.bundles = sorted(bundles, key=lambda b: (bundle_channel(b) or 99, b.name))
        self.model_combo.clear()
        for info in self.bundles:
            ch = bundle_channel(info)
            self.model_combo.addItem(f"{CHANNELS.get(ch, info.channel)} · {info.name}", str(info.path))
        self._layer_changed()
        self._update_enabled()

    def bundle_for_channel(self, channel: int | None) -> BundleInfo | None:
        return next((b for b in self.bundles if channel is not None and bundle_channel(b) == channel), None)

    def _layer_changed(self, *_: Any) -> None:
        """Auto-select the model trained on the layer's channel."""
        layer = self.layer_combo.current_layer()
        match = self.bundle_for_channel(layer_channel(layer)) if layer is not None else None
        if match is not None:
            self.model_combo.setCurrentIndex(self.model_combo.findData(str(match.path)))

    # ------------------------------------------------------------------------- segmentation
    def _tile_size(self) -> int | None:
        return self.tile.value() or None

    def _start(self, tasks: list[SegmentTask]) -> None:
        self.worker = start_job(segment_job, tasks, self.device.currentText(), self._tile_size(),
                                self.peak.value(), self.fill.value(), status=self.status, title="Segmenting",
                                on_returned=self._show_results, on_finished=self._job_finished)
        self._update_enabled()

    def segment_current(self) -> None:
        layer = self.layer_combo.current_layer()
        path = self.model_combo.currentData()
        if layer is None or not path:
            show_error("choose an image layer and a model (set the models folder first)")
            return
        try:
            image = image_2d(layer)
        except ValueError as exc:
            show_error(str(exc))
            return
        self._start([SegmentTask(weakref.ref(layer), image, Path(path))])

    def segment_field(self) -> None:
        """Every image layer of the current layer's field that has a model for its channel."""
        current = self.layer_combo.current_layer()
        if current is None or not self.bundles:
            show_error("choose an image layer and a models folder first")
            return
        field = current.metadata.get("dinocell_field")
        tasks = []
        for layer in self.viewer.layers:
            if layer.__class__.__name__ != "Image" or layer.metadata.get("dinocell_field") != field:
                continue
            info = self.bundle_for_channel(layer_channel(layer))
            if info is not None and not layer.rgb and np.ndim(layer.data) == 2:
                tasks.append(SegmentTask(weakref.ref(layer), np.asarray(layer.data), Path(info.path)))
        if not tasks:
            show_error("no layer of this field has a model for its channel")
            return
        show_info(f"segmenting {len(tasks)} channel(s): {', '.join(t.layer_ref().name for t in tasks)}")
        self._start(tasks)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _job_finished(self) -> None:
        self.worker = None
        self._update_enabled()

    @property
    def showing(self) -> bool:
        """Result layers still being placed in the viewer (one per event-loop turn)."""
        return self._ui.pending

    def _show_results(self, results: list[SegmentResult]) -> None:
        for res in results:
            source = res.layer_ref()
            if source is None or source not in self.viewer.layers:
                continue  # the source layer was deleted meanwhile: its result has nowhere to go
            out = self.outputs.setdefault(id(source), {"source": res.layer_ref})
            out["distance"] = res.distance
            self._ui.push(partial(self._place, out, "labels", res.labels, res.labels_layer))
            if self.show_distance.isChecked():
                self._ui.push(partial(self._place, out, "distance_layer", res.distance))
        n = sum(int(r.labels.max()) for r in results)
        self.status.finish(f"{n} objects in {len(results)} image(s)")

    def _place(self, out: dict[str, Any], key: str, data: np.ndarray, prebuilt: Labels | None = None) -> None:
        """Update a previous result layer in place (re-run), or add one aligned with its source.

        A new layer is added hidden and shown on the next event-loop turn, so napari's layer set-up and the first
        texture upload are two short freezes instead of one long one. A layer built in the worker is only named and
        placed here.
        """
        source = out["source"]()
        if source is None or source not in self.viewer.layers:
            return
        layer = out.get(key)
        if layer is not None and layer in self.viewer.layers:
            layer.data = data
            return
        kwargs = {"name": f"{source.name} {'labels' if key == 'labels' else 'distance'}", "scale": source.scale,
                  "translate": source.translate, "metadata": {"dinocell_source": source.name}, "visible": False}
        if prebuilt is not None:
            layer = prebuilt
            for name, value in kwargs.items():
                setattr(layer, name, value)
            self.viewer.add_layer(layer)
        else:
            layer = self.viewer.add_image(data, colormap="viridis", blending="additive", **kwargs)
        out[key] = layer
        self._ui.show_next(layer)

    # ------------------------------------------------------------------------- instant re-threshold
    def _schedule_rethreshold(self, *_: Any) -> None:
        self._debounce.start()

    def rethreshold(self) -> None:
        """Recompute labels of the current layer from its cached distance map (no network pass)."""
        layer = self.layer_combo.current_layer()
        out = self.outputs.get(id(layer)) if layer is not None else None
        if out is None or "distance" not in out or out["source"]() is not layer:
            return
        if self.showing:  # a result is still being placed: its labels would overwrite these
            self._debounce.start()
            return
        if self._thresholding:
            self._threshold_again = True
            return
        self._thresholding = True
        source_ref = out["source"]

        def apply(labels: np.ndarray) -> None:
            source = source_ref()
            target = self.outputs.get(id(source)) if source is not None else None
            if target is not None and target.get("labels") in self.viewer.layers:
                target["labels"].data = labels

        def finished() -> None:
            self._thresholding = False
            if self._threshold_again:
                self._threshold_again = False
                self.rethreshold()

        start_job(threshold_job, out["distance"], self.peak.value(), self.fill.value(),
                  status=self.rethreshold_status, title="Re-thresholding", on_returned=apply,
                  on_finished=finished, show_progress=False)

    def _update_enabled(self) -> None:
        busy = self.worker is not None
        self.run_btn.setEnabled(not busy and bool(self.bundles))
        self.all_btn.setEnabled(not busy and bool(self.bundles))
        self.cancel_btn.setEnabled(busy)
