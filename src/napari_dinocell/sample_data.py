"""Sample data: a synthetic 8-channel Cell Painting field with its nuclei and cell labels (no download). napari's
sample command, which places these layers, is :mod:`napari_dinocell.widgets.sample_layers`."""

from __future__ import annotations

from typing import Any

import numpy as np

from dinocell_core.jump.channels import CHANNELS
from dinocell_core.synthetic.fixture import make_field
from napari_dinocell.layer_meta import FIELD
from napari_dinocell.layers import field_layer_data

LayerData = tuple[np.ndarray, dict[str, Any], str]
SIZE = 512
SEED = 0


def sample_field(size: int = SIZE, seed: int = SEED) -> list[LayerData]:
    """All layers of the synthetic field: 8 channels (Mito … Brightfield), cells and nuclei ground truth."""
    channels, nuclei, cells = make_field(size=size, seed=seed)
    layers = field_layer_data(channels, sorted(CHANNELS), field_meta(seed))
    layers.append((cells, {"name": "cells (ground truth)", "visible": False}, "labels"))
    layers.append((nuclei, {"name": "nuclei (ground truth)"}, "labels"))
    return layers


def field_meta(seed: int) -> dict[str, str]:
    """The metadata that tells the sample's layers from another field's."""
    return {FIELD: f"synthetic_seed{seed}"}
