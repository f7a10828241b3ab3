"""Pretrain widget: the DINOv3 continued-pretraining config as a form; launches ``dinocell-core pretrain``.

The job runs detached (it survives closing napari), under ``torchrun`` when several GPUs are chosen, or as a
Slurm batch job. Watch it in the Runs widget.
"""

from __future__ import annotations

from typing import Any

from dinocell_core.ssl.config import PretrainConfig
from napari_dinocell.preflight import check_has_images, check_weights, missing_paths
from napari_dinocell.widgets.config_form import ConfigLaunchForm
from napari_dinocell.widgets.value_editor import FormKey

CHANNEL_MODES = ("fluorescent_mean", "fluorescent_single", "fluorescent_stack", "multiview", "brightfield",
                 "channel:5")


class PretrainWidget(ConfigLaunchForm):
    kind = "pretrain"
    config_glob = "pretrain_*.yaml"
    main_keys = (
        FormKey("data.root", "Data root", "dir"),
        FormKey("data.channel_mode", "Channel mode", suggestions=CHANNEL_MODES),
        FormKey("data.second_view", "Second view", suggestions=("same_field", "same_well")),
        FormKey("model.weights", "Backbone weights", "file"),
        FormKey("model.patch_size", "Patch size"),
        FormKey("train.batch_size", "Batch size / GPU"),
        FormKey("train.epochs", "Epochs"),
        FormKey("optim.lr", "Learning rate"),
    )

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, PretrainConfig)

    def preferred_defaults(self) -> str:
        return "pretrain_vits8_jump.yaml"

    def preflight(self, cfg: Any) -> list[str]:
        problems = []
        data = cfg.data
        if data.root is None and data.index is None and data.prepared is None:
            problems.append("data root is empty: choose a CPJUMP1 folder, an s3:// prefix or a load_data CSV")
        problems += missing_paths([("data root", data.root), ("data index", data.index),
                                   ("prepared store", data.prepared), ("backbone weights", cfg.model.weights)])
        problems += check_has_images("data root", data.root)
        problems += check_weights("backbone weights", cfg.model.weights)
        if self.gpus.value() > 1 and cfg.train.device == "cpu":
            problems.append(f"{self.gpus.value()} GPUs chosen but train.device is 'cpu'")
        return problems
