"""The Segment dock's model picker: the image layer to segment (and the channel of a multichannel one), the models
folder and the model, with what the model is and a warning when it was trained on another channel than the layer
shows. The model follows the layer: choosing a DNA layer selects the DNA model when the folder has one. A
multichannel model (DNA+RNA → cells) is listed under every channel it reads, and reads the field's layers of those
channels (:meth:`ModelPicker.input_layers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Image
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QWidget

from dinocell_core.jump.channels import CHANNELS, channel_number
from dinocell_core.seg.config import bundle_channels
from napari_dinocell.layer_meta import FIELD
from napari_dinocell.jobs.models import ModelListing, scan_models_job
from napari_dinocell.jobs.runner import start_job
from napari_dinocell.layers import is_result
from napari_dinocell.status import JobStatus
from napari_dinocell.widgets.common import LayerCombo, PathEdit, fit_narrow
from napari_dinocell.widgets.segment.images import layer_channel, n_channels

if TYPE_CHECKING:
    import napari

    from dinocell_core.seg.bundle import BundleInfo

WARN_STYLE = "color: #ffb347;"


def bundle_channel(info: BundleInfo) -> int | None:
    """The one JUMP channel a single-channel bundle reads (None for a multichannel or non-JUMP bundle)."""
    try:
        return channel_number(info.channel)
    except (ValueError, KeyError, TypeError):
        return None


def bundle_channel_numbers(info: BundleInfo) -> list[int]:
    """Every JUMP channel a bundle reads, in its input order ([] for a non-JUMP bundle)."""
    try:
        return [channel_number(c) for c in bundle_channels(info.metadata)]
    except (ValueError, KeyError, TypeError):
        return []


def is_multichannel(info: BundleInfo) -> bool:
    return len(bundle_channel_numbers(info)) > 1


def problem_reason(info: BundleInfo) -> str:
    """Why a bundle is unusable, without the path its message starts with."""
    text = info.problem or ""
    return text.removeprefix(f"{info.path}:").strip() or text


def model_summary(info: BundleInfo) -> str:
    """What a bundle is: channel, training data, validation AP, tile size, thresholds (from its metadata)."""
    meta = info.metadata
    chans = bundle_channels(meta)
    parts = [f"<b>{info.name}</b> · " + (f"channels {' + '.join(chans)} (one image each, from this field's layers)"
                                         if len(chans) > 1 else f"channel {info.channel}")]
    tuned = meta.get("finetune")
    if isinstance(tuned, dict) and isinstance(tuned.get("before"), dict) and isinstance(tuned.get("after"), dict):
        b, a = tuned["before"], tuned["after"]
        parts.append(f"fine-tuned from {Path(str(tuned.get('init_bundle', '?'))).name} on corrected fields: "
                     f"AP@0.5 {float(b.get('ap@0.50', 0)):.2f} → {float(a.get('ap@0.50', 0)):.2f}, AP@0.75 "
                     f"{float(b.get('ap@0.75', 0)):.2f} → {float(a.get('ap@0.75', 0)):.2f} on "
                     f"{len(tuned.get('held_out') or [])} held-out corrected fields")
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


class ModelPicker(QWidget):
    """Image, channel, models folder and model; ``model_changed(BundleInfo)`` when another model is chosen,
    ``models_listed`` once a folder's models are in the list."""

    model_changed = Signal(object)
    models_listed = Signal()

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.bundles: list[BundleInfo] = []
        # result layers (labels, distance maps, PCA) are never an input: the Image never follows them
        self.layer_combo = LayerCombo(viewer, accept=lambda layer: not is_result(layer))
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
        self.models_problem = QLabel("")  # unusable files of the models folder, and why
        self.models_problem.setWordWrap(True)
        self.models_problem.setStyleSheet(WARN_STYLE)
        self.listing: ModelListing | None = None
        self.match_warning = QLabel("")
        self.match_warning.setWordWrap(True)
        self.match_warning.setStyleSheet(WARN_STYLE)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Image", self.layer_combo)
        form.addRow("Channel", self.channel_pick)
        form.addRow("Models", self.models_dir)
        form.addRow("Model", self.model_combo)
        form.addRow(self.models_problem)
        form.addRow(self.model_info)
        form.addRow(self.match_warning)
        viewer.layers.selection.events.active.connect(self._follow_selection)
        self._follow_selection()
        self._layer_changed()

    def scan_remembered(self) -> None:
        """List the models folder remembered from the last session, if it still exists."""
        if self.models_dir.text() and Path(self.models_dir.text()).expanduser().is_dir():
            self.scan_models()

    # ------------------------------------------------------------------------- models
    def scan_models(self, folder: str | None = None) -> None:
        if folder is not None:
            self.models_dir.setText(str(folder))
        if not self.models_dir.text():
            return
        start_job(scan_models_job, self.models_dir.text(), status=JobStatus(), title="Scanning models",
                  on_yielded=self._models_listed, on_returned=self._models_listed, show_progress=False)

    def _models_listed(self, listing: ModelListing) -> None:
        """Usable bundles to choose from; unusable files listed after them, greyed, with why as their tooltip
        (first from the headers, then again once every bundle's weights are verified)."""
        if not isinstance(listing, ModelListing) or listing.folder != Path(self.models_dir.text()).expanduser():
            return  # a scan of a folder no longer chosen
        if listing.verified and not listing.bundles:
            raise FileNotFoundError(f"no model bundles in {self.models_dir.text()}")
        self.listing = listing
        chosen = self.model_combo.currentData()
        self.bundles = sorted(listing.usable, key=lambda b: (bundle_channel(b) or 99, b.name))
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        entries = []  # (channel, multichannel last, name): one entry per channel a bundle reads
        for info in self.bundles:
            chans = bundle_channel_numbers(info) or [None]
            for ch in chans:
                text = f"{CHANNELS.get(ch, info.channel)} · {info.name}"
                entries.append(((ch or 99, len(chans) > 1, info.name), text, str(info.path)))
        for _, text, path in sorted(entries):
            self.model_combo.addItem(text, path)
        for info in listing.unusable:
            self.model_combo.addItem(f"⚠ {info.path.name}: unusable", "")
            index = self.model_combo.count() - 1
            self.model_combo.setItemData(index, info.problem, Qt.ItemDataRole.ToolTipRole)
            self.model_combo.model().item(index).setEnabled(False)
        index = self.model_combo.findData(chosen) if chosen else -1
        self.model_combo.setCurrentIndex(index if index >= 0 else (0 if self.bundles else -1))
        self.model_combo.blockSignals(False)
        broken = listing.unusable
        self.models_problem.setText("" if not broken else (
            f"{len(broken)} unusable model file(s) in this folder (greyed; hover for why): "
            + "; ".join(f"{b.path.name}: {problem_reason(b)}" for b in broken[:3])
            + (" …" if len(broken) > 3 else "")))
        self._layer_changed()
        if self.model_combo.currentData() != chosen:  # (a re-listing keeps the model, and the user's thresholds)
            self._model_changed()
        self.models_listed.emit()
        if listing.verified and not self.bundles:
            raise FileNotFoundError(f"no usable model bundle in {listing.folder}: {self.models_problem.text()}")

    def bundle_for_channel(self, channel: int | None) -> BundleInfo | None:
        """The model for a layer of ``channel``: its single-channel model, else a multichannel one reading it."""
        if channel is None:
            return None
        single = next((b for b in self.bundles if bundle_channel(b) == channel), None)
        return single or next((b for b in self.bundles if channel in bundle_channel_numbers(b)), None)

    def input_layers(self, info: BundleInfo, layer: Image) -> list[Image]:
        """The image layers a multichannel model reads for ``layer``'s field, in its channel order (``layer``
        itself for the channel it shows); a ValueError names the channels the viewer lacks."""
        want = bundle_channel_numbers(info)
        field = layer.metadata.get(FIELD)
        found = {}
        for lyr in self.viewer.layers:
            if (isinstance(lyr, Image) and not is_result(lyr) and lyr.metadata.get(FIELD) == field
                    and layer_channel(lyr) in want and n_channels(lyr) == 1):
                found.setdefault(layer_channel(lyr), lyr)
        if layer_channel(layer) in want:
            found[layer_channel(layer)] = layer
        missing = [CHANNELS[c] for c in want if c not in found]
        if missing:
            raise ValueError(f"model {info.name} reads {' + '.join(CHANNELS[c] for c in want)}; open this field's "
                             f"{', '.join(missing)} layer(s) too (the JUMP browser opens a field's channels)")
        return [found[c] for c in want]

    def current_bundle(self) -> BundleInfo | None:
        path = self.model_combo.currentData()
        return next((b for b in self.bundles if str(b.path) == path), None)

    def _model_changed(self, *_: Any) -> None:
        info = self.current_bundle()
        self.model_info.setText("" if info is None else model_summary(info))
        if info is not None:
            self._check_match()
            self.model_changed.emit(info)

    # ------------------------------------------------------------------------- layer and channel
    def current_layer(self) -> Image | None:
        return self.layer_combo.current_layer()

    def _follow_selection(self, event: Any = None) -> None:
        """Make the viewer's active image layer the one to segment (matched by name: a plugin's viewer hands out
        proxies of its selected layers, not the layers themselves); a result layer becoming active (a distance map
        just added) leaves the choice alone."""
        active = self.viewer.layers.selection.active
        if active is None:
            return
        layer = next((lyr for lyr in self.viewer.layers if lyr.name == active.name), None)
        if layer is not None and self.layer_combo.offers(layer):
            self.layer_combo.set_layer(layer)

    def _layer_changed(self, *_: Any) -> None:
        """Auto-select the model trained on the layer's channel; offer a channel picker for multichannel data."""
        layer = self.current_layer()
        n = n_channels(layer) if layer is not None else 1
        self.channel_pick.blockSignals(True)
        self.channel_pick.clear()
        if layer is not None and n > 1:
            names = ["red", "green", "blue", "alpha"] if layer.rgb else []
            self.channel_pick.addItems([names[i] if i < len(names) else f"channel {i}" for i in range(n)])
        self.channel_pick.blockSignals(False)
        self.channel_pick.setEnabled(n > 1)
        current = self.current_bundle()
        reads = bundle_channel_numbers(current) if current is not None else []
        keep = layer is not None and layer_channel(layer) in reads  # e.g. DNA+RNA chosen for the RNA layer stays
        match = self.bundle_for_channel(layer_channel(layer)) if layer is not None and not keep else None
        if match is not None:
            self.model_combo.setCurrentIndex(self.model_combo.findData(str(match.path)))
        self._check_match()

    def selected_channel(self) -> int | None:
        return self.channel_pick.currentIndex() if self.channel_pick.isEnabled() else None

    def mismatch(self) -> str:
        """A warning when the model was trained on another channel than the layer shows ("" if they agree or
        either is unknown)."""
        layer = self.current_layer()
        info = self.current_bundle()
        if layer is None or info is None:
            return ""
        lc, bc = layer_channel(layer), bundle_channel(info)
        if is_multichannel(info):
            reads = bundle_channel_numbers(info)
            if lc is None or lc in reads:
                return ""
            return (f"this model reads {' + '.join(CHANNELS[c] for c in reads)}, but layer {layer.name!r} is "
                    f"{CHANNELS[lc]}: it would segment the field's {' + '.join(CHANNELS[c] for c in reads)} layers")
        if lc is None or bc is None or lc == bc:
            return ""
        return (f"this model was trained on {CHANNELS[bc]}, but layer {layer.name!r} is {CHANNELS[lc]}: "
                f"expect wrong labels (choose the {CHANNELS[lc]} model if there is one)")

    def _check_match(self) -> None:
        self.match_warning.setText(self.mismatch())
