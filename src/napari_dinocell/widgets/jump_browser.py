"""JUMP browser: pick a CPJUMP1 root, then plate → well → site; the 8 channels are shown as named layers.

Indexing (a directory scan, cached as CSV by :func:`dinocell_core.jump.index.load_index`; "rescan" refreshes it) and
TIFF reads run in workers. Switching sites replaces each layer's data in place (keeping each channel's contrast);
a newer site request supersedes one still loading. The browser updates only layers it added itself (see
:func:`napari_dinocell.layers.upsert_image`): a user's or the sample data's "DNA" layer is left alone. With a labels
store set (``dinocell-core jump label``), the field's preferred nuclei and cells come as two Labels layers; "Save
corrections" writes the edited layers back into the store atomically as ``source = corrected``: the field's one
labels.csv row then points at them and names the masks they replaced, which stay on disk. Moving to another field
with unsaved edits of those layers asks first: Save (then move), Discard (move) or Cancel (stay).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QWidget,
)

from dinocell_core.jump.channels import ALL_CHANNELS
from dinocell_core.jump.index import Field, barcode_of, load_index
from dinocell_core.labels.store import LabelRow
from napari_dinocell import layer_meta
from napari_dinocell.jobs.gc_pauses import watch as watch_gc_pauses
from napari_dinocell.jobs.browser import (
    LABEL_LAYERS,
    FieldLabels,
    read_field_job,
    read_labels_job,
    save_corrections_job,
)
from napari_dinocell.jobs.runner import start_job
from napari_dinocell.layers import (
    FLUOR_MEAN_NAME,
    channel_layer_kwargs,
    contrast_limits,
    owned_layer,
    upsert_image,
)
from napari_dinocell.status import JobState, JobStatus
from napari_dinocell.ui_steps import UiSteps
from napari_dinocell.widgets.common import PathEdit, scroll_layout

OWNER = "jump_browser"
#: the answers of :func:`ask_unsaved`
SAVE, DISCARD, CANCEL = "save", "discard", "cancel"


def ask_unsaved(parent: QWidget, text: str) -> str:
    """Save / Discard / Cancel for unsaved label corrections (a modal box); returns :data:`SAVE`, :data:`DISCARD` or
    :data:`CANCEL` (also for a closed box)."""
    buttons = QMessageBox.StandardButton
    box = QMessageBox(QMessageBox.Icon.Warning, "Unsaved label corrections", text,
                      buttons.Save | buttons.Discard | buttons.Cancel, parent)
    box.setDefaultButton(buttons.Save)
    box.exec()
    answer = box.standardButton(box.clickedButton()) if box.clickedButton() is not None else buttons.Cancel
    return {buttons.Save: SAVE, buttons.Discard: DISCARD}.get(answer, CANCEL)


class JumpBrowserWidget(QWidget):
    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        watch_gc_pauses(napari_viewer, self)
        self.index_status = JobStatus()
        self.read_status = JobStatus()
        self.fields: list[Field] = []
        self.current: Field | None = None
        self._pending: Field | None = None
        self._reading = False
        self._ui = UiSteps(self)
        self._edited = False  # the Nuclei / Cells layers were edited since they were read or saved
        self._shown_shape: tuple[int, ...] = ()  # (H, W) of the last field shown
        self._placing_labels = False
        #: asks what to do with unsaved corrections when moving away (replaceable: tests answer without a modal)
        self.ask_unsaved: Callable[[str], str] = partial(ask_unsaved, self)

        self.root = PathEdit("CPJUMP1 root (folder holding images/<batch>/…)", "dir", settings_key="browser/root")
        self.load_btn = QPushButton("Load index")
        self.load_btn.clicked.connect(lambda: self.load_root(self.root.text()))
        self.refresh_box = QCheckBox("rescan")
        self.refresh_box.setToolTip("ignore the cached index and scan the folder again")
        root_row = QHBoxLayout()
        root_row.addWidget(self.root, 1)
        root_row.addWidget(self.refresh_box)
        root_row.addWidget(self.load_btn)

        self.plate = QComboBox()
        self.well = QComboBox()
        self.site = QComboBox()
        self.plate.currentIndexChanged.connect(self._plate_changed)
        self.well.currentIndexChanged.connect(self._well_changed)
        self.site.currentIndexChanged.connect(self._site_changed)
        self.prev_btn = QPushButton("◀ Previous")
        self.next_btn = QPushButton("Next ▶")
        self.prev_btn.clicked.connect(lambda: self.step(-1))
        self.next_btn.clicked.connect(lambda: self.step(+1))
        self.fluor_mean = QCheckBox("add fluorescent-mean layer")
        self.fluor_mean.toggled.connect(self._fluor_mean_toggled)
        self.labels_status = JobStatus()
        self._labels_reading = False
        self.labels_store = PathEdit("labels store (dinocell-core jump label … -o LABELS)", "dir",
                                     settings_key="browser/labels_store")
        self.labels_store.changed.connect(self._labels_store_changed)
        self.save_btn = QPushButton("Save corrections")
        self.save_btn.setToolTip("write the Nuclei and Cells layers into the labels store as corrected labels")
        self.save_btn.clicked.connect(lambda: self.save_corrections())
        labels_row = QHBoxLayout()
        labels_row.addWidget(self.labels_store, 1)
        labels_row.addWidget(self.save_btn)

        form = QFormLayout()
        form.addRow("Plate", self.plate)
        form.addRow("Well", self.well)
        form.addRow("Site", self.site)
        nav = QHBoxLayout()
        nav.addWidget(self.prev_btn)
        nav.addWidget(self.next_btn)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.index_status.events.message.connect(lambda text: self.message.setText(str(text)))
        self.read_status.events.message.connect(lambda text: self.message.setText(str(text)))
        self.labels_status.events.message.connect(lambda text: self.message.setText(str(text)))

        layout = scroll_layout(self)
        layout.addLayout(root_row)
        layout.addLayout(form)
        layout.addLayout(nav)
        layout.addWidget(self.fluor_mean)
        layout.addLayout(labels_row)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self._update_enabled()

    # ----------------------------------------------------------------------------- index
    def load_root(self, root: str) -> None:
        if not root:
            self.message.setText("choose a CPJUMP1 root folder first")
            return
        self.root.setText(root)
        self.load_btn.setEnabled(False)
        start_job(load_index, root, refresh=self.refresh_box.isChecked(),
                  status=self.index_status, title=f"Indexing {Path(root).name}",
                  on_returned=self._index_loaded, on_finished=lambda: self.load_btn.setEnabled(True))

    def _index_loaded(self, fields: Sequence[Field]) -> None:
        if not fields:
            raise ValueError(f"no complete CPJUMP1 field found under {self.root.text()}")
        folder = Path(self.root.text()).name
        # a plate folder opened on its own: its fields sit at the top, with no plate folder in their path
        fields = [replace(f, plate=barcode_of(folder), plate_folder=folder) if not f.plate_folder else f
                  for f in fields]
        self.fields = sorted(fields, key=lambda f: (f.plate, f.well, f.site, f.key))
        self._fill(self.plate, sorted({f.plate for f in self.fields}))
        self.index_status.message = f"{len(self.fields)} fields on {self.plate.count()} plates"
        self._update_enabled()

    # ----------------------------------------------------------------------------- navigation
    @staticmethod
    def _fill(combo: QComboBox, items: Sequence[Any]) -> None:
        combo.blockSignals(True)
        combo.clear()
        combo.addItems([str(i) for i in items])
        combo.blockSignals(False)
        combo.setCurrentIndex(0 if items else -1)
        combo.currentIndexChanged.emit(combo.currentIndex())

    def _plate_changed(self, _: int) -> None:
        plate = self.plate.currentText()
        self._fill(self.well, sorted({f.well for f in self.fields if f.plate == plate}))

    def _well_changed(self, _: int) -> None:
        plate, well = self.plate.currentText(), self.well.currentText()
        self._fill(self.site, sorted({f.site for f in self.fields if f.plate == plate and f.well == well}))

    def _site_changed(self, _: int) -> None:
        field = self.selected_field()
        if field is not None:
            self.show_field(field)

    def selected_field(self) -> Field | None:
        plate, well, site = self.plate.currentText(), self.well.currentText(), self.site.currentText()
        return next((f for f in self.fields if f.plate == plate and f.well == well and str(f.site) == site), None)

    def step(self, delta: int) -> None:
        """Go to the previous/next field in plate → well → site order."""
        if not self.fields:
            return
        i = self.fields.index(self.current) if self.current in self.fields else -1
        self.select(self.fields[(i + delta) % len(self.fields)])

    def select(self, field: Field) -> None:
        """Show ``field`` (the combos are set quietly first, so the fields in between are never loaded)."""
        self._show_in_combos(field)
        self.show_field(field)

    def _show_in_combos(self, field: Field | None) -> None:
        """Plate, well and site combos showing ``field``, with their lists, without loading anything."""
        if field is None:
            return
        wells = sorted({f.well for f in self.fields if f.plate == field.plate})
        sites = sorted({f.site for f in self.fields if f.plate == field.plate and f.well == field.well})
        for combo, items, value in ((self.plate, sorted({f.plate for f in self.fields}), field.plate),
                                    (self.well, wells, field.well), (self.site, sites, field.site)):
            combo.blockSignals(True)
            if [combo.itemText(i) for i in range(combo.count())] != [str(i) for i in items]:
                combo.clear()
                combo.addItems([str(i) for i in items])
            combo.setCurrentIndex(combo.findText(str(value)))
            combo.blockSignals(False)

    def _fluor_mean_toggled(self, checked: bool) -> None:
        """Ticked: read the field again with its mean; unticked: remove the mean layer (it would go stale)."""
        if checked:
            self.show_field(self.current)
        else:
            self._remove_fluor_mean()

    def _remove_fluor_mean(self) -> None:
        layer = owned_layer(self.viewer, OWNER, FLUOR_MEAN_NAME)
        if layer is not None:
            self.viewer.layers.remove(layer)

    # ----------------------------------------------------------------------------- loading
    def show_field(self, field: Field | None) -> None:
        if field is None:
            return
        if field != self.current and not self._may_leave(field):
            return
        if self._reading:
            self._pending = field  # the newest request wins; intermediate sites are skipped
            return
        self._reading = True
        self.current = field
        start_job(read_field_job, self.root.text(), field, self.fluor_mean.isChecked(), status=self.read_status,
                  title=f"Reading {field.plate} {field.well} site {field.site}",
                  on_returned=self._show_stack, on_finished=self._read_finished)

    # ----------------------------------------------------------------------------- unsaved corrections
    def unsaved_corrections(self) -> bool:
        """The Nuclei / Cells layers of the shown field hold edits that are not in the store."""
        return self._edited and self.current is not None and all(
            (layer := owned_layer(self.viewer, OWNER, n)) is not None
            and layer.metadata.get(layer_meta.FIELD) == self.current.key for n in LABEL_LAYERS)

    def _may_leave(self, target: Field) -> bool:
        """Whether to go on to ``target`` now: asks Save / Discard / Cancel when the shown labels have unsaved
        edits. Save writes them and moves on once saved; Cancel puts the combos back on the shown field."""
        if not self.unsaved_corrections():
            return True
        field = self.current
        answer = self.ask_unsaved(f"The Nuclei / Cells labels of {field.plate} {field.well} site {field.site} "
                                  "have corrections that are not saved in the labels store.\n\n"
                                  "Save them before showing the next field?")
        if answer == DISCARD:
            self._edited = False
            return True
        if answer != SAVE or not self.save_corrections(then=partial(self.show_field, target)):
            self._show_in_combos(field)
        return False

    def _labels_edited(self, *_: Any) -> None:
        if not self._placing_labels:
            self._edited = True

    def _read_finished(self) -> None:
        self._reading = False
        self._update_enabled()
        pending, self._pending = self._pending, None
        if pending is not None and pending != self.current:
            self.show_field(pending)

    @property
    def busy(self) -> bool:
        """A read in flight, or the channel layers of the last one still being placed (one per event-loop turn)."""
        return self._reading or self._ui.pending or self._labels_reading

    def _show_stack(self, result: tuple[Field, np.ndarray, np.ndarray | None]) -> None:
        field, stack, mean = result
        meta = {layer_meta.FIELD: field.key, layer_meta.PLATE: field.plate, layer_meta.WELL: field.well,
                layer_meta.SITE: field.site,  # and where the field lives, for "segment this well/plate"
                layer_meta.JUMP_ROOT: self.root.text(), layer_meta.PLATE_FOLDER: field.plate_folder}
        for i, ch in enumerate(ALL_CHANNELS):
            self._ui.push(partial(self._place, stack[i], channel_layer_kwargs(ch, stack[i], meta)))
        if mean is None:
            self._remove_fluor_mean()
        else:
            self._ui.push(partial(self._place, mean, {
                "name": FLUOR_MEAN_NAME, "colormap": "gray", "blending": "additive",
                "contrast_limits": contrast_limits(mean), "visible": True,  # ticked to be seen
                "metadata": {**meta, layer_meta.CHANNEL: "fluorescent_mean"}}))
        if stack.shape[-2:] != self._shown_shape:  # the first field, or one of another size: fit it in the view
            self._shown_shape = stack.shape[-2:]
            self._ui.push(self.viewer.reset_view)
        self.read_status.finish(f"{field.plate} {field.well} site {field.site} ({stack.shape[-2]}×{stack.shape[-1]})")
        if self.labels_store.text() and not (field == self.current and self.unsaved_corrections()):
            # (the same field read again, e.g. for its fluorescent mean, keeps the user's unsaved edits)
            self._read_labels(field, stack.shape[-2:])

    # ----------------------------------------------------------------------------- labels overlay
    def _labels_store_changed(self, store: str) -> None:
        """A new labels store: the shown field's labels from it at once (not only from the next site on)."""
        field = self.current
        if not store or field is None or self._reading:
            return  # no field yet, or one loading: its labels are read when its channels arrive
        shown = next((layer for layer in self.viewer.layers if layer.metadata.get(layer_meta.OWNER) == OWNER
                      and layer.metadata.get(layer_meta.FIELD) == field.key
                      and layer.__class__.__name__ == "Image"), None)
        if shown is None:
            return
        if self.unsaved_corrections():
            self.message.setText("the Nuclei / Cells layers have unsaved corrections: kept (save them, or move to "
                                 "another site to read this store's labels)")
            return
        self._read_labels(field, tuple(np.shape(shown.data)[-2:]))

    def _read_labels(self, field: Field, shape: tuple[int, int]) -> None:
        self._labels_reading = True
        start_job(read_labels_job, self.labels_store.text(), field, shape, status=self.labels_status,
                  title=f"Reading labels of {field.plate} {field.well} site {field.site}",
                  on_returned=self._labels_read, on_finished=self._labels_done, show_progress=False)

    def _labels_done(self) -> None:
        self._labels_reading = False

    def _labels_read(self, result: FieldLabels) -> None:
        """Place the labels after the channel layers still queued (one layer per event-loop turn), so they land on
        top of them."""
        if result.field != self.current:
            return  # the user moved on; the newer field's labels follow
        for name in LABEL_LAYERS:
            self._ui.push(partial(self._show_labels, result, name))
        self._ui.push(partial(self._labels_shown, result))

    def _show_labels(self, result: FieldLabels, name: str) -> None:
        """One labels layer: its data replaced in place, or the layer built in the worker added (hidden, finished
        and shown over the next turns), on top of the channels."""
        if result.field != self.current:
            return
        meta = {layer_meta.FIELD: result.field.key, layer_meta.LABELS_SOURCE: result.source}
        new = result.layers[name]
        layer = owned_layer(self.viewer, OWNER, name)
        self._placing_labels = True
        try:
            if layer is not None and layer.__class__.__name__ == "Labels":
                layer.data = new.data
                layer.metadata = {**layer.metadata, **meta}
            else:
                new.metadata = {**meta, layer_meta.OWNER: OWNER, layer_meta.LAYER: name}
                self._ui.add_layer(self.viewer, new)
                new.events.paint.connect(self._labels_edited)  # brush, fill, erase, polygon
                new.events.data.connect(self._labels_edited)  # data replaced (a script, a plugin)
        finally:
            self._placing_labels = False
        self._labels_on_top()

    def _labels_shown(self, result: FieldLabels) -> None:
        if result.field != self.current:
            return
        self._edited = False
        self.labels_status.finish(f"labels: {result.source}" if result.source != "none" else
                                  "this field has no labels in the store yet (draw them, then save)")

    def _labels_on_top(self) -> None:
        """The Nuclei and Cells layers above every channel layer (an overlay under 8 additive channels is not
        seen)."""
        ours = [layer for n in LABEL_LAYERS if (layer := owned_layer(self.viewer, OWNER, n)) is not None]
        if ours and list(self.viewer.layers)[-len(ours):] != ours:
            for layer in ours:
                self.viewer.layers.move(self.viewer.layers.index(layer), len(self.viewer.layers))

    def save_corrections(self, then: Callable[[], None] | None = None) -> bool:
        """Write the Nuclei and Cells layers of the shown field into the store as its corrected labels; ``then``
        runs once they are saved (not if saving fails: the combos go back to the shown field). Returns whether a
        save started."""
        field, store = self.current, self.labels_store.text()
        if field is None or not store:
            self.message.setText("set a labels store and show a field first")
            return False
        layers = [layer for n in LABEL_LAYERS if (layer := owned_layer(self.viewer, OWNER, n)) is not None]
        if len(layers) != 2 or any(layer.metadata.get(layer_meta.FIELD) != field.key for layer in layers):
            self.message.setText(f"the Nuclei and Cells layers do not belong to {field.key}; nothing saved")
            return False

        def finished() -> None:
            self.save_btn.setEnabled(True)
            if then is None:
                return
            if self.labels_status.state == JobState.DONE:
                then()
            else:
                self._show_in_combos(self.current)

        self.save_btn.setEnabled(False)
        start_job(save_corrections_job, store, field, np.asarray(layers[0].data).copy(),
                  np.asarray(layers[1].data).copy(), status=self.labels_status,
                  title=f"Saving corrections of {field.plate} {field.well} site {field.site}",
                  on_returned=self._saved, on_finished=finished, show_progress=False)
        return True

    def _saved(self, row: LabelRow) -> None:
        self._edited = False
        for n in LABEL_LAYERS:
            if (layer := owned_layer(self.viewer, OWNER, n)) is not None:
                layer.metadata = {**layer.metadata, layer_meta.LABELS_SOURCE: "corrected"}
        kept = f" ({row.original_source} masks kept: {row.original_cells})" if row.original_source else ""
        self.labels_status.finish(f"saved corrections: {row.nuclei}, {row.cells}{kept}")

    def _place(self, data: np.ndarray, kwargs: dict[str, Any]) -> None:
        """One channel: in place, or a new layer added hidden and shown on the next turn (napari's layer set-up and
        its first draw then freeze the viewer separately, not 8 layers' worth at once)."""
        new = owned_layer(self.viewer, OWNER, kwargs["name"]) is None
        upsert_image(self.viewer, data, kwargs, owner=OWNER,
                     add=partial(self._ui.add_layer, self.viewer, show=kwargs.get("visible", True)))
        if new:
            self._labels_on_top()

    def _update_enabled(self) -> None:
        has = bool(self.fields)
        for w in (self.plate, self.well, self.site, self.prev_btn, self.next_btn):
            w.setEnabled(has)
