"""Segment widget: distance-map decoder on an image layer, instant re-thresholding, per-channel models.

The network pass runs in a generator worker that yields between tile batches (progress, ETA and Cancel in the
dock). Labels come from :meth:`dinocell_core.seg.inference.Segmenter.labels`, the same call as
``dinocell-core segment``, and the sliders start from the bundle's recorded thresholds and ``min_size``, so the
widget and the CLI give the same labels on the same image.

Results are tied to the data they came from: each source layer has a data generation that its ``data`` event
bumps (the JUMP browser switching site, a user edit); a result computed from an older generation is dropped, and
the result layers of a source whose data changed are marked stale (renamed, hidden) and lose their cached distance
map, so the sliders never re-threshold the previous field onto the new one.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from dinocell_core.jump.channels import CHANNELS, channel_number
from dinocell_core.seg.bundle import BundleInfo, list_bundles
from napari_dinocell.jobs import start_job
from napari_dinocell.segment_jobs import (
    SegmentResult,
    SegmentTask,
    save_job,
    segment_fields_job,
    segment_job,
    threshold_job,
)
from napari_dinocell.status import JobStatus
from napari_dinocell.widgets.common import (
    LayerCombo,
    PathEdit,
    UiSteps,
    fit_narrow,
    scroll_layout,
)
from napari_dinocell.widgets.job_progress import JobProgress

STALE = " [stale]"
WARN_STYLE = "color: #ffb347;"


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


def n_channels(layer: Any) -> int:
    """Channels of a multichannel layer (RGB, or [C, H, W] / [H, W, C] as ``select_channel`` reads them); 1 if
    it is a plain 2-D image, 0 if it cannot be segmented."""
    shape = np.shape(layer.data)
    if len(shape) == 2 and not layer.rgb:
        return 1
    if len(shape) == 3:
        return shape[-1] if (layer.rgb or shape[-1] <= 4) else shape[0]
    return 0


def channel_image(data: np.ndarray, channel: int | None) -> np.ndarray:
    """The 2-D plane that segmentation reads (``select_channel``'s axis convention)."""
    from dinocell_core.io.images import select_channel

    return select_channel(np.asarray(data), channel)


def result_stem(source: Any) -> str:
    """File stem for a source layer's results: plate_well_site_channel for a JUMP field, else the layer name."""
    meta = source.metadata
    name = source.name.removesuffix(STALE)
    if all(meta.get(k) is not None for k in ("plate", "well", "site")):
        name = f"{meta['plate']}_{meta['well']}_s{meta['site']}_{name}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


@dataclass
class Output:
    """The results of one source layer."""

    source: weakref.ref
    generation: int
    segmenter: Any
    distance: np.ndarray | None
    channel: int | None
    layers: dict[str, Any] = field(default_factory=dict)  # "labels" / "distance" → layer
    edited: bool = False

    @property
    def stale(self) -> bool:
        return self.distance is None


class SegmentWidget(QWidget):
    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.status = JobStatus()
        self.rethreshold_status = JobStatus()
        self.save_status = JobStatus()
        self.bundles: list[BundleInfo] = []
        self.worker: Any = None
        self.outputs: dict[int, Output] = {}  # id(source layer) → its results
        # id(source layer) → (the layer, its data generation); the weakref tells a recycled id from the layer
        self._generation: dict[int, tuple[weakref.ref, int]] = {}
        self._thresholding = False
        self._threshold_again = False
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(60)
        self._debounce.timeout.connect(self.rethreshold)

        self.layer_combo = LayerCombo(napari_viewer)
        self.layer_combo.currentIndexChanged.connect(self._layer_changed)
        self.channel_pick = QComboBox()
        self.channel_pick.setToolTip("the channel of a multichannel / RGB layer to segment")
        self.channel_pick.currentIndexChanged.connect(lambda _: self._check_match())
        self.models_dir = PathEdit("models folder (decoder bundles)", "dir", settings_key="segment/models_folder")
        self.models_dir.edit.editingFinished.connect(self.scan_models)
        self.model_combo = QComboBox()
        fit_narrow(self.model_combo)
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        self.match_warning = QLabel("")
        self.match_warning.setWordWrap(True)
        self.match_warning.setStyleSheet(WARN_STYLE)
        self.peak = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.fill = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        for slider, low in ((self.peak, 0.01), (self.fill, 0.0)):
            slider.setRange(low, 1.0)
            slider.setDecimals(2)
            slider.valueChanged.connect(self._schedule_rethreshold)
        self.peak.valueChanged.connect(lambda _: self._keep_fill_below_peak(moved="peak"))
        self.fill.valueChanged.connect(lambda _: self._keep_fill_below_peak(moved="fill"))
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 1_000_000)
        self.min_size.setSuffix(" px")
        self.min_size.setToolTip("objects smaller than this are dropped (the bundle's min_size by default)")
        self.min_size.valueChanged.connect(self._schedule_rethreshold)
        self._set_thresholds({"peak": 0.47, "fill": 0.09, "min_size": 0})
        self.tile = QSpinBox()
        self.tile.setRange(0, 8192)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("model default")
        self.tile.setToolTip("tile size in px (the model's recorded tile by default, as in `dinocell-core segment`)")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.show_distance = QCheckBox("show distance map")
        self.show_distance.toggled.connect(self._toggle_distance)
        self.outlines = QCheckBox("outlines only")
        self.outlines.toggled.connect(self._apply_outlines)

        self.run_btn = QPushButton("Segment")
        self.run_btn.clicked.connect(self.segment_current)
        self.all_btn = QPushButton("Segment all channels of this field")
        self.all_btn.clicked.connect(self.segment_field)
        self.well_btn = QPushButton("Segment this well → disk")
        self.plate_btn = QPushButton("Segment this plate → disk")
        for btn, scope in ((self.well_btn, "well"), (self.plate_btn, "plate")):
            btn.setToolTip(f"every site of the layer's {scope} (a JUMP browser layer), with this model and these "
                           "thresholds, in the background: segment-plate's labels TIFFs + per-cell Parquet measurements "
                           "in the results folder (fields already there are skipped)")
            btn.clicked.connect(partial(self.segment_batch, scope))
        self.progress = JobProgress(self.status, self.cancel, unit="tiles")
        self.overwrite_btn = QPushButton("Overwrite edited labels")
        self.overwrite_btn.setToolTip("re-threshold and replace the hand-edited labels")
        self.overwrite_btn.clicked.connect(lambda: self.rethreshold(force=True))
        self.overwrite_btn.setVisible(False)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.status.events.message.connect(lambda text: self.message.setText(str(text)))
        self.status.events.state.connect(lambda _: self._update_enabled())

        self.results_dir = PathEdit("results folder (labels TIFF, objects CSV)", "dir",
                                    settings_key="segment/results_folder")
        self.save_btn = QPushButton("Save labels")
        self.save_btn.setToolTip("<results>/<plate>_<well>_s<site>_<channel>_labels.tiff (with hand edits)")
        self.save_btn.clicked.connect(lambda: self.save("labels"))
        self.export_btn = QPushButton("Export measurements (CSV)")
        self.export_btn.setToolTip("one row per object: area, centroid, bbox, shape, intensity")
        self.export_btn.clicked.connect(lambda: self.save("measurements"))
        self.save_status.events.message.connect(lambda text: self.message.setText(str(text)))

        form = QFormLayout()
        form.addRow("Image", self.layer_combo)
        form.addRow("Channel", self.channel_pick)
        form.addRow("Models", self.models_dir)
        form.addRow("Model", self.model_combo)
        form.addRow(self.model_info)
        form.addRow(self.match_warning)
        form.addRow("Peak threshold", self.peak)
        form.addRow("Fill threshold", self.fill)
        form.addRow("Min size", self.min_size)
        form.addRow("Tile size", self.tile)
        form.addRow("Device", self.device)
        display = QHBoxLayout()
        display.addWidget(self.show_distance)
        display.addWidget(self.outlines)
        form.addRow(display)
        save_row = QHBoxLayout()
        save_row.addWidget(self.save_btn)
        save_row.addWidget(self.export_btn)
        layout = scroll_layout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_btn)
        layout.addWidget(self.all_btn)
        layout.addWidget(self.progress)
        layout.addWidget(self.overwrite_btn)
        layout.addWidget(self.message)
        layout.addWidget(QLabel("Results"))
        layout.addWidget(self.results_dir)
        layout.addLayout(save_row)
        batch_row = QHBoxLayout()
        batch_row.addWidget(self.well_btn)
        batch_row.addWidget(self.plate_btn)
        layout.addLayout(batch_row)
        layout.addStretch(1)

        self._ui = UiSteps(self)
        napari_viewer.layers.selection.events.active.connect(self._follow_selection)
        self._follow_selection()
        self._layer_changed()
        self._update_enabled()
        if self.models_dir.text() and Path(self.models_dir.text()).expanduser().is_dir():
            self.scan_models()  # the folder remembered from the last session

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
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for info in self.bundles:
            ch = bundle_channel(info)
            self.model_combo.addItem(f"{CHANNELS.get(ch, info.channel)} · {info.name}", str(info.path))
        self.model_combo.blockSignals(False)
        self._layer_changed()
        self._model_changed()
        self._update_enabled()

    def bundle_for_channel(self, channel: int | None) -> BundleInfo | None:
        return next((b for b in self.bundles if channel is not None and bundle_channel(b) == channel), None)

    def current_bundle(self) -> BundleInfo | None:
        path = self.model_combo.currentData()
        return next((b for b in self.bundles if str(b.path) == path), None)

    def _model_changed(self, *_: Any) -> None:
        """Start from the model's recorded thresholds, min_size and tile; show what the model is."""
        info = self.current_bundle()
        if info is None:
            self.model_info.setText("")
            return
        meta = info.metadata
        self._set_thresholds(meta.get("thresholds", {}))
        self.tile.setValue(int(meta.get("tile_size", 0)))
        self.model_info.setText(model_summary(info))
        self._check_match()

    def _set_thresholds(self, th: dict[str, Any]) -> None:
        """Set the sliders without re-thresholding on every one of them (one re-threshold at the end)."""
        for w in (self.peak, self.fill, self.min_size):
            w.blockSignals(True)
        self.peak.setValue(float(th.get("peak", self.peak.value())))
        self.fill.setValue(float(th.get("fill", self.fill.value())))
        self.min_size.setValue(int(th.get("min_size", 0)))
        for w in (self.peak, self.fill, self.min_size):
            w.blockSignals(False)
        self._schedule_rethreshold()

    def _keep_fill_below_peak(self, moved: str) -> None:
        """The fill threshold must stay below the peak threshold (labels_from_distance's rule): the slider not
        being moved gives way."""
        if self.fill.value() >= self.peak.value():
            if moved == "peak":
                self.fill.setValue(max(0.0, round(self.peak.value() - 0.01, 2)))
            else:
                self.peak.setValue(min(1.0, round(self.fill.value() + 0.01, 2)))

    # ------------------------------------------------------------------------- layer and channel
    def _follow_selection(self, event: Any = None) -> None:
        """Make the viewer's active image layer the one to segment (matched by name: a plugin's viewer hands out
        proxies of its selected layers, not the layers themselves)."""
        active = self.viewer.layers.selection.active
        if active is None:
            return
        layer = next((lyr for lyr in self.viewer.layers if lyr.name == active.name), None)
        if layer is not None and layer.__class__.__name__ == "Image":
            self.layer_combo.set_layer(layer)

    def _layer_changed(self, *_: Any) -> None:
        """Auto-select the model trained on the layer's channel; offer a channel picker for multichannel data."""
        layer = self.layer_combo.current_layer()
        n = n_channels(layer) if layer is not None else 1
        self.channel_pick.blockSignals(True)
        self.channel_pick.clear()
        if layer is not None and n > 1:
            names = ["red", "green", "blue", "alpha"] if layer.rgb else []
            self.channel_pick.addItems([names[i] if i < len(names) else f"channel {i}" for i in range(n)])
        self.channel_pick.blockSignals(False)
        self.channel_pick.setEnabled(n > 1)
        match = self.bundle_for_channel(layer_channel(layer)) if layer is not None else None
        if match is not None:
            self.model_combo.setCurrentIndex(self.model_combo.findData(str(match.path)))
        self._check_match()

    def selected_channel(self) -> int | None:
        return self.channel_pick.currentIndex() if self.channel_pick.isEnabled() else None

    def mismatch(self) -> str:
        """A warning when the model was trained on another channel than the layer shows ("" if they agree or
        either is unknown)."""
        layer = self.layer_combo.current_layer()
        info = self.current_bundle()
        if layer is None or info is None:
            return ""
        lc, bc = layer_channel(layer), bundle_channel(info)
        if lc is None or bc is None or lc == bc:
            return ""
        return (f"this model was trained on {CHANNELS[bc]}, but layer {layer.name!r} is {CHANNELS[lc]}: "
                f"expect wrong labels (choose the {CHANNELS[lc]} model if there is one)")

    def _check_match(self) -> None:
        self.match_warning.setText(self.mismatch())

    # ------------------------------------------------------------------------- data generations
    def generation(self, layer: Any) -> int:
        """The layer's data generation; starts watching its ``data`` event on first use."""
        key = id(layer)
        entry = self._generation.get(key)
        if entry is None or entry[0]() is not layer:
            entry = self._generation[key] = (weakref.ref(layer), 0)
            layer.events.data.connect(self._source_data_changed)
        return entry[1]

    def _source_data_changed(self, event: Any) -> None:
        layer = event.source
        key = id(layer)
        self._generation[key] = (weakref.ref(layer), self.generation(layer) + 1)
        out = self.outputs.get(key)
        if out is not None and out.source() is layer and not out.stale:
            self._mark_stale(out, layer)

    def _mark_stale(self, out: Output, source: Any) -> None:
        out.distance = None
        for layer in out.layers.values():
            if layer in self.viewer.layers:
                if not layer.name.endswith(STALE):
                    layer.name = layer.name + STALE
                layer.visible = False
        self.message.setText(f"results of {source.name!r} are stale (its image changed): press Segment")

    # ------------------------------------------------------------------------- segmentation
    def _tile_size(self) -> int | None:
        return self.tile.value() or None

    def _start(self, tasks: list[SegmentTask]) -> None:
        self.progress.unit = "tiles"
        self.worker = start_job(segment_job, tasks, self.device.currentText(), self._tile_size(),
                                self.peak.value(), self.fill.value(), self.min_size.value(), status=self.status,
                                title="Segmenting", on_returned=self._show_results, on_finished=self._job_finished)
        self._update_enabled()

    def segment_current(self) -> None:
        layer = self.layer_combo.current_layer()
        path = self.model_combo.currentData()
        if layer is None or not path:
            show_error("choose an image layer and a model (set the models folder first)")
            return
        if n_channels(layer) == 0:
            show_error(f"layer {layer.name!r} has shape {np.shape(layer.data)}; segmentation needs a 2-D image "
                       "or one with a channel axis")
            return
        warning = self.mismatch()
        if warning:
            show_warning(warning)
        self._start([SegmentTask(weakref.ref(layer), np.asarray(layer.data), Path(path), self.generation(layer),
                                 self.selected_channel())])

    def segment_field(self) -> None:
        """Every image layer of the current layer's field that has a model for its channel."""
        current = self.layer_combo.current_layer()
        if current is None or not self.bundles:
            show_error("choose an image layer and a models folder first")
            return
        field_key = current.metadata.get("dinocell_field")
        tasks = []
        for layer in self.viewer.layers:
            if layer.__class__.__name__ != "Image" or layer.metadata.get("dinocell_field") != field_key:
                continue
            info = self.bundle_for_channel(layer_channel(layer))
            if info is not None and n_channels(layer) == 1:
                tasks.append(SegmentTask(weakref.ref(layer), np.asarray(layer.data), Path(info.path),
                                         self.generation(layer)))
        if not tasks:
            show_error("no layer of this field has a model for its channel")
            return
        show_info(f"segmenting {len(tasks)} channel(s): {', '.join(t.layer_ref().name for t in tasks)}")
        self._start(tasks)

    def segment_batch(self, scope: str) -> None:
        """Every field of the current (browser) layer's well or plate, written to the results folder."""
        layer = self.layer_combo.current_layer()
        info = self.current_bundle()
        meta = layer.metadata if layer is not None else {}
        if layer is None or info is None or not meta.get("jump_root") or layer_channel(layer) is None:
            show_error("choose a JUMP browser channel layer and a model first")
            return
        if not self.results_dir.text():
            show_error("choose a results folder first")
            return
        warning = self.mismatch()
        if warning:
            show_warning(warning)
        self.progress.unit = "fields"

        def done(result: Any) -> None:
            where = result.table or result.folder
            self.status.finish(f"{result.objects} objects in {result.fields} fields → {where}")
            show_info(self.status.message)

        self.worker = start_job(
            segment_fields_job, meta["jump_root"], meta["plate_folder"], meta["well"] if scope == "well" else None,
            layer_channel(layer), Path(info.path), self.device.currentText(), self._tile_size(), self.peak.value(),
            self.fill.value(), self.min_size.value(), Path(self.results_dir.text()).expanduser(),
            status=self.status, title=f"Segmenting {meta.get('plate')} {meta['well'] if scope == 'well' else ''}",
            on_returned=done, on_finished=self._job_finished)
        self._update_enabled()

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
        kept: list[SegmentResult] = []
        dropped: list[str] = []
        for res in results:
            source = res.task.layer_ref()
            if source is None or source not in self.viewer.layers:
                continue  # the source layer was deleted meanwhile: its result has nowhere to go
            if self.generation(source) != res.task.generation:
                dropped.append(source.name)  # the image changed while the network ran: this result is not its
                continue
            out = self.outputs.get(id(source))
            if out is None or out.source() is not source:
                out = self.outputs[id(source)] = Output(res.task.layer_ref, res.task.generation, res.segmenter,
                                                        res.distance, res.task.channel)
            out.generation, out.segmenter, out.distance, out.channel = (
                res.task.generation, res.segmenter, res.distance, res.task.channel)
            out.edited = False
            self._ui.push(partial(self._place, out, "labels", res.labels, res.labels_layer))
            if self.show_distance.isChecked():
                self._ui.push(partial(self._place, out, "distance", res.distance))
            kept.append(res)
        text = f"{sum(int(r.labels.max()) for r in kept)} objects in {len(kept)} image(s)"
        if dropped:
            text += f"; dropped the result of {', '.join(dropped)}: its image changed while segmenting"
            show_warning(text)
        self.status.finish(text)

    def _place(self, out: Output, key: str, data: np.ndarray, prebuilt: Labels | None = None) -> None:
        """Update a previous result layer in place (re-run), or add one aligned with its source.

        A new layer is added hidden and shown on the next event-loop turn, so napari's layer set-up and the first
        texture upload are two short freezes instead of one long one. A layer built in the worker is only named and
        placed here.
        """
        source = out.source()
        if source is None or source not in self.viewer.layers:
            return
        name = f"{source.name} {'labels' if key == 'labels' else 'distance'}"
        layer = out.layers.get(key)
        if layer is not None and layer in self.viewer.layers:
            layer.data = data
            layer.name = name  # drops a stale mark
            layer.visible = True
            return
        kwargs = {"name": name, "scale": source.scale[-2:], "translate": source.translate[-2:],
                  "metadata": {"dinocell_source": source.name}, "visible": False}
        if prebuilt is not None:
            layer = prebuilt
            for attr, value in kwargs.items():
                setattr(layer, attr, value)
            if self.outlines.isChecked():  # the setter refreshes the layer: not for nothing on the GUI thread
                layer.contour = 2
            self.viewer.add_layer(layer)
            layer.events.paint.connect(self._labels_edited)
        else:
            layer = self.viewer.add_image(data, colormap="viridis", blending="additive", **kwargs)
        out.layers[key] = layer
        self._ui.show_next(layer)

    def _labels_edited(self, event: Any) -> None:
        """A hand edit (paint, fill, erase) of a result: a re-threshold must not silently replace it."""
        for out in self.outputs.values():
            if out.layers.get("labels") is event.source:
                out.edited = True

    # ------------------------------------------------------------------------- display options
    def _toggle_distance(self, checked: bool) -> None:
        """Show the cached distance maps (no re-run) or hide them."""
        for out in self.outputs.values():
            layer = out.layers.get("distance")
            if checked and out.distance is not None:
                if layer is not None and layer in self.viewer.layers:
                    layer.visible = True
                else:
                    self._ui.push(partial(self._place, out, "distance", out.distance))
            elif layer is not None and layer in self.viewer.layers:
                layer.visible = False

    def _apply_outlines(self, checked: bool) -> None:
        for out in self.outputs.values():
            layer = out.layers.get("labels")
            if layer is not None and layer in self.viewer.layers:
                layer.contour = 2 if checked else 0

    # ------------------------------------------------------------------------- instant re-threshold
    def _schedule_rethreshold(self, *_: Any) -> None:
        self._debounce.start()

    def current_output(self) -> Output | None:
        layer = self.layer_combo.current_layer()
        out = self.outputs.get(id(layer)) if layer is not None else None
        return out if out is not None and out.source() is layer else None

    def rethreshold(self, force: bool = False) -> None:
        """Recompute labels of the current layer from its cached distance map (no network pass)."""
        out = self.current_output()
        if out is None or out.stale:
            return
        if self.showing:  # a result is still being placed: its labels would overwrite these
            self._debounce.start()
            return
        if out.edited and not force:
            self.overwrite_btn.setVisible(True)
            text = (f"{out.source().name} labels were edited by hand: the new thresholds are not applied "
                    "(press 'Overwrite edited labels' to replace the edits)")
            if self.message.text() != text:
                self.message.setText(text)
                show_warning(text)
            return
        if self._thresholding:
            self._threshold_again = True
            return
        self._thresholding = True
        self.overwrite_btn.setVisible(False)
        source_ref, generation = out.source, out.generation

        def apply(labels: np.ndarray) -> None:
            source = source_ref()
            target = self.outputs.get(id(source)) if source is not None else None
            if target is None or target.stale or target.generation != generation:
                return  # the image changed meanwhile
            layer = target.layers.get("labels")
            if layer is not None and layer in self.viewer.layers:
                layer.data = labels
                target.edited = False

        def finished() -> None:
            self._thresholding = False
            if self._threshold_again:
                self._threshold_again = False
                self.rethreshold()

        start_job(threshold_job, out.segmenter, out.distance, self.peak.value(), self.fill.value(),
                  self.min_size.value(), status=self.rethreshold_status, title="Re-thresholding",
                  on_returned=apply, on_finished=finished, show_progress=False)

    # ------------------------------------------------------------------------- results leave the viewer
    def save(self, what: str) -> None:
        """Write the current layer's labels (with hand edits) or its per-object table to the results folder."""
        out = self.current_output()
        folder = self.results_dir.text()
        if out is None or out.layers.get("labels") not in self.viewer.layers:
            show_error("segment the chosen image first")
            return
        if out.stale:
            show_error("these labels are stale (the image changed): segment again before saving")
            return
        if not folder:
            show_error("choose a results folder first")
            return
        source = out.source()
        labels = np.asarray(out.layers["labels"].data)
        intensity = channel_image(source.data, out.channel) if what != "labels" else None
        meta = source.metadata
        constants = {f"Metadata_{k.capitalize()}": meta[k] for k in ("plate", "well", "site")
                     if meta.get(k) is not None}
        constants["Metadata_Image"] = source.name
        info = self.current_bundle()
        if info is not None:
            constants["Metadata_Model"] = info.name

        def done(paths: list[Path]) -> None:
            self.save_status.finish(f"saved {', '.join(p.name for p in paths)} in {folder}")
            show_info(self.save_status.message)

        channel = CHANNELS.get(meta.get("channel"), source.name.removesuffix(STALE))
        start_job(save_job, labels, intensity, Path(folder).expanduser(), result_stem(source), constants, what,
                  channel, status=self.save_status, title="Saving", on_returned=done)

    def _update_enabled(self) -> None:
        busy = self.worker is not None
        for btn in (self.run_btn, self.all_btn, self.well_btn, self.plate_btn):
            btn.setEnabled(not busy and bool(self.bundles))


def model_summary(info: BundleInfo) -> str:
    """What a bundle is: channel, training data, validation AP, tile size, thresholds (from its metadata)."""
    meta = info.metadata
    parts = [f"<b>{info.name}</b> · channel {info.channel}"]
    data = meta.get("training_data") or {}
    if data:
        train = data.get("train") or {}
        parts.append(f"trained on {data.get('format', '?')} data {Path(str(data.get('path', '?'))).name} "
                     f"({train.get('images', '?')} images, {train.get('cells', '?')} cells, "
                     f"{meta.get('step', '?')} steps)")
    val = meta.get("validation_metrics") or {}
    scores = [f"{k} {float(v):.2f}" for k, v in val.items() if k in ("ap@0.50", "ap_mean", "f1@0.50")]
    parts.append("validation " + ", ".join(scores) if scores else "no validation scores recorded")
    th = meta.get("thresholds", {})
    parts.append(f"tile {meta.get('tile_size')} px · peak {th.get('peak')} · fill {th.get('fill')} · "
                 f"min size {th.get('min_size', 0)} px")
    return "<br>".join(parts)
