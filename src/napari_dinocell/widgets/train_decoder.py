"""Train decoder widget: the distance-map decoder config as a form; launches ``dinocell-core train-decoder``.

One model is trained per ticked channel (the config's ``channels`` list); each ends as a bundle in the run's
models folder, which the Segment widget lists. A config's multichannel entries (``[DNA, RNA]``: one model reading
both) are kept as they are and shown under the ticks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFormLayout, QLabel, QListWidget, QListWidgetItem

from dinocell_core.jump.channels import CHANNELS, channel_number
from dinocell_core.seg.config import DecoderConfig
from napari_dinocell.preflight import check_has_images, check_weights, missing_paths
from napari_dinocell.widgets.config_form import ConfigLaunchForm
from napari_dinocell.widgets.value_editor import FormKey


class TrainDecoderWidget(ConfigLaunchForm):
    kind = "decoder"
    config_glob = "decoder_*.yaml"
    main_keys = (
        FormKey("data.path", "Training data", "dir"),
        FormKey("data.format", "Data format"),
        FormKey("data.labels", "Labels store (jump)", "dir"),
        FormKey("data.corrected_only", "Corrected labels only"),
        FormKey("backbone.weights", "Backbone weights", "file"),
        FormKey("backbone.arch", "Architecture"),
        FormKey("backbone.patch_size", "Patch size"),
        FormKey("train.steps", "Steps / channel"),
        FormKey("train.batch_size", "Batch size"),
        FormKey("train.tile_size", "Tile size"),
        FormKey("train.lr", "Learning rate"),
    )

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, DecoderConfig)
        self.run_controls.gpus.setMaximum(1)  # the decoder trainer is single-device (launch refuses torchrun for it)
        self.run_controls.gpus.setToolTip("0 = the config's train.device; 1 = one GPU")

    def preferred_defaults(self) -> str:
        return "decoder_demo.yaml"

    def _add_extra_rows(self, form: QFormLayout) -> None:
        self.channel_list = QListWidget()
        self.channel_list.setMaximumHeight(150)
        for ch, name in sorted(CHANNELS.items()):
            item = QListWidgetItem(name)
            item.setData(Qt.ItemDataRole.UserRole, ch)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
            self.channel_list.addItem(item)
        form.addRow("Channels (one model each)", self.channel_list)
        self.multichannel: list[list[str]] = []  # the config's multichannel models, kept as loaded
        self.multichannel_note = QLabel("")
        form.addRow(self.multichannel_note)

    def checked_channels(self) -> list[str]:
        items = [self.channel_list.item(i) for i in range(self.channel_list.count())]
        return [it.text() for it in items if it.checkState() == Qt.CheckState.Checked]

    def set_channels(self, names: Sequence[str | list[str]]) -> None:
        self.multichannel = [list(n) for n in names if isinstance(n, list)]
        self.multichannel_note.setText("" if not self.multichannel else "also multichannel models: " + ", ".join(
            "+".join(m) for m in self.multichannel))
        wanted = {channel_number(n) for n in names if not isinstance(n, list)}
        for i in range(self.channel_list.count()):
            item = self.channel_list.item(i)
            checked = item.data(Qt.ItemDataRole.UserRole) in wanted
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)

    def extra_keys(self) -> Sequence[str]:
        return ("channels",)

    def preflight(self, cfg: Any) -> list[str]:
        sources = [("training data", cfg.data.path), ("backbone weights", cfg.backbone.weights),
                   ("labels store", cfg.data.labels)]
        if cfg.val_data is not None:
            sources.append(("validation data", cfg.val_data.path))
        problems = missing_paths(sources)
        problems += check_has_images("training data", cfg.data.path)
        if cfg.val_data is not None:
            problems += check_has_images("validation data", cfg.val_data.path)
        problems += check_weights("backbone weights", cfg.backbone.weights)
        if not cfg.backbone.weights and cfg.backbone.arch != "vit_test":
            problems.append(f"backbone weights are empty: a decoder on a randomly initialised {cfg.backbone.arch} "
                            "learns little; choose a pretraining run, a checkpoint or DINOv3 weights")
        return problems

    def extra_values(self) -> dict[str, Any]:
        return {"channels": [*self.checked_channels(), *self.multichannel] or None}

    def set_extra_values(self, data: dict[str, Any]) -> None:
        self.set_channels(data.get("channels") or [])
