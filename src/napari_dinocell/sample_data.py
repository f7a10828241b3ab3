"""Sample data: a synthetic 8-channel Cell Painting field with its nuclei and cell labels (no download)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dinocell_core.jump.channels import CHANNELS
from dinocell_core.jump.fixture import make_field
from napari_dinocell.layers import field_layer_data


def sample_field(size: int = 512, seed: int = 0) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    channels, nuclei, cells = make_field(size=size, seed=seed)
    meta = {"dinocell_field": f"synthetic_seed{seed}"}
    layers = field_layer_data(channels, sorted(CHANNELS), meta)
    layers.append((cells, {"name": "cells (ground truth)", "visible": False}, "labels"))
    layers.append((nuclei, {"name": "nuclei (ground truth)"}, "labels"))
    return layers
