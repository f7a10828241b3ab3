"""Segment widget: distance-map decoder on an image layer, instant re-thresholding, per-channel models.

The dock is composed of small views — :class:`.ModelPicker` (image, channel, model), :class:`.Thresholds` (peak,
fill, min size), :class:`.ResultsExport` (results folder, save, a well or plate to disk) — and the result layers'
bookkeeping (:class:`.ResultLayers`); it runs the jobs of :mod:`napari_dinocell.jobs.segment` and
:mod:`napari_dinocell.jobs.segment_disk` with their settings and shows their progress.

The network pass runs in a generator worker that yields between tile batches (progress, ETA and Cancel in the
dock). Labels come from :meth:`dinocell_core.seg.inference.Segmenter.labels`, the same call as
``dinocell-core segment``, and the sliders start from the bundle's recorded thresholds and ``min_size``, so the
widget and the CLI give the same labels on the same image.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtGui import QShowEvent
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QSpinBox, QWidget
from superqt.utils import WorkerBase

from dinocell_core.jump.channels import CHANNELS
from napari_dinocell.jobs.gc_pauses import watch as watch_gc_pauses
from napari_dinocell.jobs.model_cache import preload_job
from napari_dinocell.jobs.runner import start_job
from napari_dinocell.jobs.segment import SegmentResult, SegmentTask, segment_job, threshold_job, warm_segmentation
from napari_dinocell.jobs.segment_disk import BatchResult, SaveWhat, save_job, segment_fields_job
from napari_dinocell.layer_meta import CHANNEL, FIELD, JUMP_ROOT, PLATE, PLATE_FOLDER, WELL
from napari_dinocell.layers import STALE, is_result
from napari_dinocell.notify import show_error, show_info, show_warning
from napari_dinocell.status import JobStatus
from napari_dinocell.widgets.common import scroll_layout
from napari_dinocell.widgets.job_progress import JobProgress
from napari_dinocell.widgets.segment.export import ResultsExport, object_name, result_stem, table_constants
from napari_dinocell.widgets.segment.images import channel_image, layer_channel, n_channels
from napari_dinocell.widgets.segment.finetune import FinetuneBox
from napari_dinocell.widgets.segment.model_picker import ModelPicker, is_multichannel
from napari_dinocell.widgets.segment.outputs import ResultLayers
from napari_dinocell.widgets.segment.thresholds import Thresholds

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

    from dinocell_core.seg.bundle import BundleInfo

#: how long the sliders must rest before a re-threshold starts
DEBOUNCE_MS = 60


class SegmentWidget(QWidget):
    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        watch_gc_pauses(napari_viewer, self)
        self.status = JobStatus()
        self.rethreshold_status = JobStatus()
        self.save_status = JobStatus()
        self.preload_status = JobStatus()
        self.worker: WorkerBase | None = None
        self._thresholding = False
        self._threshold_again = False
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.rethreshold)

        self.picker = ModelPicker(napari_viewer)
        self.thresholds = Thresholds()
        self.export = ResultsExport()
        self.outputs = ResultLayers(napari_viewer, self)
        self._add_run_controls()
        self._lay_out()

        self.picker.model_changed.connect(self._model_changed)
        self.picker.models_listed.connect(self._update_enabled)
        self.thresholds.changed.connect(self._debounce.start)
        self.export.save_requested.connect(self.save)
        self.export.batch_requested.connect(self.segment_batch)
        self.outputs.went_stale.connect(self.message.setText)
        self.status.events.message.connect(lambda text: self.message.setText(str(text)))
        self.status.events.state.connect(lambda _: self._update_enabled())
        self.save_status.events.message.connect(lambda text: self.message.setText(str(text)))
        self._update_enabled()
        self._warmed = False

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt's name)
        """Once the dock is first shown and has painted (a zero timer), list the remembered models folder and load
        torch, the model code and napari's first-Labels work in the background: importing torch (here, or when the
        listed model is preloaded) holds the GIL for ~0.5 s, which would hold back the dock's own first paint."""
        super().showEvent(event)
        if not self._warmed:
            self._warmed = True
            QTimer.singleShot(0, self._first_shown)

    def _first_shown(self) -> None:
        self.picker.scan_remembered()
        start_job(warm_segmentation, status=JobStatus(), title="Preparing segmentation", show_progress=False)

    def _add_run_controls(self) -> None:
        """How to run the model (tile, device), what to show, the Segment buttons and the job's progress."""
        self.tile = QSpinBox()
        self.tile.setRange(0, 8192)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("model default")
        self.tile.setToolTip("tile size in px (the model's recorded tile by default, as in `dinocell-core segment`)")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.currentTextChanged.connect(lambda _: self._preload())
        self.show_distance = QCheckBox("show distance map")
        self.show_distance.toggled.connect(self.outputs.show_distance)
        self.outlines = QCheckBox("outlines only")
        self.outlines.toggled.connect(self.outputs.set_outlines)
        self.run_btn = QPushButton("Segment")
        self.run_btn.clicked.connect(self.segment_current)
        self.all_btn = QPushButton("Segment all channels of this field")
        self.all_btn.clicked.connect(self.segment_field)
        self.progress = JobProgress(self.status, self.cancel, unit="tiles")
        self.overwrite_btn = QPushButton("Overwrite edited labels")
        self.overwrite_btn.setToolTip("re-threshold and replace the hand-edited labels")
        self.overwrite_btn.clicked.connect(lambda: self.rethreshold(force=True))
        self.overwrite_btn.setVisible(False)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.finetune = FinetuneBox(self.picker.current_bundle, self._jump_root, self.device.currentText)
        self.finetune.ended.connect(lambda _: self.picker.scan_models())

    def _lay_out(self) -> None:
        form = QFormLayout()
        form.addRow("Tile size", self.tile)
        form.addRow("Device", self.device)
        display = QHBoxLayout()
        display.addWidget(self.show_distance)
        display.addWidget(self.outlines)
        form.addRow(display)
        layout = scroll_layout(self)
        layout.addWidget(self.picker)
        layout.addWidget(self.thresholds)
        layout.addLayout(form)
        for widget in (self.run_btn, self.all_btn, self.progress, self.overwrite_btn, self.message, self.export,
                       self.finetune):
            layout.addWidget(widget)
        layout.addStretch(1)

    def _jump_root(self) -> str | None:
        """The CPJUMP1 tree of the chosen layer (set by the JUMP browser), which the corrections belong to."""
        layer = self.picker.current_layer()
        root = layer.metadata.get(JUMP_ROOT) if layer is not None else None
        return str(root) if root else None

    def _model_changed(self, info: BundleInfo) -> None:
        """Start from the model's recorded thresholds, min_size and tile, and load the model in the background."""
        self.thresholds.set_values(info.metadata.get("thresholds", {}))
        self.tile.setValue(int(info.metadata.get("tile_size", 0)))
        self._preload()

    def _preload(self) -> None:
        """Load the chosen model on the chosen device in a worker, so the Segment click runs only the network."""
        info = self.picker.current_bundle()
        if info is None or info.problem:
            return
        start_job(preload_job, Path(info.path), self.device.currentText(), status=self.preload_status,
                  title=f"Loading {info.name}", show_progress=False)

    # ------------------------------------------------------------------------- segmentation
    def _tile_size(self) -> int | None:
        return self.tile.value() or None

    def _start(self, tasks: list[SegmentTask]) -> None:
        self.progress.unit = "tiles"
        self.worker = start_job(segment_job, tasks, self.device.currentText(), self._tile_size(),
                                *self.thresholds.values(), status=self.status, title="Segmenting",
                                on_returned=self._show_results, on_finished=self._job_finished)
        self._update_enabled()

    def segment_current(self) -> None:
        layer = self.picker.current_layer()
        path = self.picker.model_combo.currentData()
        if layer is None or not path:
            show_error("choose an image layer and a model (set the models folder first)")
            return
        if n_channels(layer) == 0:
            show_error(f"layer {layer.name!r} has shape {np.shape(layer.data)}; segmentation needs a 2-D image "
                       "or one with a channel axis")
            return
        warning = self.picker.mismatch()
        if warning:
            show_warning(warning)
        info = self.picker.current_bundle()
        if info is not None and is_multichannel(info):
            try:
                inputs = self.picker.input_layers(info, layer)
            except ValueError as exc:
                show_error(str(exc))
                return
            self._start([SegmentTask(weakref.ref(layer), [np.asarray(lyr.data) for lyr in inputs], Path(path),
                                     self.outputs.generation(layer))])
            return
        self._start([SegmentTask(weakref.ref(layer), np.asarray(layer.data), Path(path),
                                 self.outputs.generation(layer), self.picker.selected_channel())])

    def segment_field(self) -> None:
        """Every image layer of the current layer's field that has a model for its channel. When the chosen model
        is a multichannel one (DNA+RNA → cells), it segments the layer of its last channel, fed the field's layers
        of all its channels, in place of that layer's own model."""
        current = self.picker.current_layer()
        if current is None or not self.picker.bundles:
            show_error("choose an image layer and a models folder first")
            return
        field_key = current.metadata.get(FIELD)
        chosen = self.picker.current_bundle()
        multi: tuple[Image, list[Image]] | None = None
        if chosen is not None and is_multichannel(chosen):
            try:
                inputs = self.picker.input_layers(chosen, current)
            except ValueError as exc:
                show_error(str(exc))
                return
            multi = (inputs[-1], inputs)
        tasks = []
        for layer in self.viewer.layers:
            if (layer.__class__.__name__ != "Image" or is_result(layer)  # never a model on a distance map
                    or layer.metadata.get(FIELD) != field_key):
                continue
            if multi is not None and layer is multi[0]:
                tasks.append(SegmentTask(weakref.ref(layer), [np.asarray(lyr.data) for lyr in multi[1]],
                                         Path(chosen.path), self.outputs.generation(layer)))
                continue
            info = self.picker.bundle_for_channel(layer_channel(layer))
            if info is not None and not is_multichannel(info) and n_channels(layer) == 1:
                tasks.append(SegmentTask(weakref.ref(layer), np.asarray(layer.data), Path(info.path),
                                         self.outputs.generation(layer)))
        if not tasks:
            show_error("no layer of this field has a model for its channel")
            return
        show_info(f"segmenting {len(tasks)} channel(s): {', '.join(t.layer_ref().name for t in tasks)}")
        self._start(tasks)

    def segment_batch(self, scope: str) -> None:
        """Every field of the current (browser) layer's well (``scope`` "well") or plate, written to the results
        folder."""
        layer = self.picker.current_layer()
        info = self.picker.current_bundle()
        meta = layer.metadata if layer is not None else {}
        if layer is None or info is None or not meta.get(JUMP_ROOT) or layer_channel(layer) is None:
            show_error("choose a JUMP browser channel layer and a model first")
            return
        if is_multichannel(info):
            show_error(f"{info.name} reads {info.channel}: segment wells and plates with it on the command line "
                       f"(dinocell-core segment-plate MODELS ROOT --cells-channel {info.channel})")
            return
        if not self.export.folder.text():
            show_error("choose a results folder first")
            return
        warning = self.picker.mismatch()
        if warning:
            show_warning(warning)
        self.progress.unit = "fields"
        well = meta[WELL] if scope == "well" else None

        def done(result: BatchResult) -> None:
            where = result.table or result.folder
            self.status.finish(f"{result.objects} objects in {result.fields} fields → {where}")
            show_info(self.status.message)

        self.worker = start_job(
            segment_fields_job, meta[JUMP_ROOT], meta[PLATE_FOLDER], well, layer_channel(layer), Path(info.path),
            self.device.currentText(), self._tile_size(), *self.thresholds.values(),
            Path(self.export.folder.text()).expanduser(), self.export.features.currentText(), status=self.status,
            title=f"Segmenting {meta.get(PLATE)} {well or ''}", on_returned=done, on_finished=self._job_finished)
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
        return self.outputs.pending

    def _show_results(self, results: list[SegmentResult]) -> None:
        kept, dropped = self.outputs.add_results(results)
        text = f"{sum(int(r.labels.max()) for r in kept)} objects in {len(kept)} image(s)"
        if dropped:  # the image changed while the network ran: those results are not its
            text += f"; dropped the result of {', '.join(dropped)}: its image changed while segmenting"
            show_warning(text)
        self.status.finish(text)

    # ------------------------------------------------------------------------- instant re-threshold
    def rethreshold(self, force: bool = False) -> None:
        """Recompute labels of the current layer from its cached distance map (no network pass)."""
        source = self.picker.current_layer()
        out = self.outputs.get(source)
        if out is None or out.stale:
            return
        if self.showing:  # a result is still being placed: its labels would overwrite these
            self._debounce.start()
            return
        if out.edited and not force:
            self.overwrite_btn.setVisible(True)
            text = (f"{source.name} labels were edited by hand: the new thresholds are not applied "
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

        def finished() -> None:
            self._thresholding = False
            if self._threshold_again:
                self._threshold_again = False
                self.rethreshold()

        start_job(threshold_job, out.segmenter, out.distance, *self.thresholds.values(),
                  status=self.rethreshold_status, title="Re-thresholding",
                  on_returned=lambda labels: self.outputs.set_labels(source_ref(), generation, labels),
                  on_finished=finished, show_progress=False)

    # ------------------------------------------------------------------------- results leave the viewer
    def save(self, what: SaveWhat) -> None:
        """Write the current layer's labels (with hand edits) or its per-object table to the results folder."""
        out = self.outputs.get(self.picker.current_layer())
        folder = self.export.folder.text()
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
        info = self.picker.current_bundle()
        constants = table_constants(source, info.name if info is not None else None)

        def done(paths: list[Path]) -> None:
            self.save_status.finish(f"saved {', '.join(p.name for p in paths)} in {folder}")
            show_info(self.save_status.message)

        channel = CHANNELS.get(source.metadata.get(CHANNEL), source.name.removesuffix(STALE))
        start_job(save_job, labels, intensity, Path(folder).expanduser(), result_stem(source), constants, what,
                  channel, object_name(source, info), self.export.features.currentText(), status=self.save_status,
                  title="Saving", on_returned=done)

    def _update_enabled(self) -> None:
        busy = self.worker is not None
        for btn in (self.run_btn, self.all_btn, self.export.well_btn, self.export.plate_btn):
            btn.setEnabled(not busy and bool(self.picker.bundles))
