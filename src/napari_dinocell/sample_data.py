"""Sample data: a synthetic 8-channel Cell Painting field with its nuclei and cell labels (no download).

napari adds a sample's layers back to back on the GUI thread, ~0.1–0.4 s each (vispy visuals, layer controls),
so ten layers froze the viewer for seconds. The sample command returns the DNA channel at once and adds the other
layers one per event-loop turn, so the viewer keeps drawing meanwhile (the longest freeze is one layer's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from dinocell_core.jump.channels import CHANNELS
from dinocell_core.synthetic.fixture import make_field
from napari_dinocell.layer_meta import CHANNEL, FIELD
from napari_dinocell.layers import field_layer_data

if TYPE_CHECKING:
    from napari_dinocell.ui_steps import UiSteps

LayerData = tuple[np.ndarray, dict[str, Any], str]
#: the layers returned to napari directly; the rest follow one per event-loop turn
FIRST = ("DNA",)
_steps: list[UiSteps] = []  # the pending-steps runner (a QObject must outlive this call)


def sample_field(size: int = 512, seed: int = 0) -> list[LayerData]:
    """All layers of the synthetic field: 8 channels (Mito … Brightfield), cells and nuclei ground truth."""
    channels, nuclei, cells = make_field(size=size, seed=seed)
    meta = {FIELD: f"synthetic_seed{seed}"}
    layers = field_layer_data(channels, sorted(CHANNELS), meta)
    layers.append((cells, {"name": "cells (ground truth)", "visible": False}, "labels"))
    layers.append((nuclei, {"name": "nuclei (ground truth)"}, "labels"))
    return layers


def open_sample_field() -> list[LayerData]:
    """The napari sample command: DNA now, the other layers in field order right after."""
    import napari

    from napari_dinocell.ui_steps import UiSteps

    layers = sample_field()
    viewer = napari.current_viewer()
    if viewer is None:
        return layers
    if not _steps:
        _steps.append(UiSteps())
    steps = _steps[0]
    for data, kwargs, kind in layers:
        if kwargs["name"] not in FIRST:
            steps.push(lambda d=data, k=kwargs, t=kind: _add(viewer, d, k, t))
    return [layer for layer in layers if layer[1]["name"] in FIRST]


def _add(viewer: Any, data: np.ndarray, kwargs: dict[str, Any], kind: str) -> None:
    if viewer.window is None or kwargs["name"] in viewer.layers:
        return
    if kind == "labels":  # its editing overlays over the next turns (UiSteps.add_layer)
        from napari.layers import Labels

        _steps[0].add_layer(viewer, Labels(data, **kwargs), show=kwargs.get("visible", True))
        return
    index = _channel_index(viewer, kwargs)
    layer = viewer.add_image(data, **kwargs)
    viewer.layers.move(viewer.layers.index(layer), index)


def _channel_index(viewer: Any, kwargs: dict[str, Any]) -> int:
    """Keep the channels in field order (Mito … Brightfield) below the labels."""
    ch = kwargs["metadata"][CHANNEL]
    images = [i for i, layer in enumerate(viewer.layers) if isinstance(layer.metadata.get(CHANNEL), int)
              and layer.metadata.get(FIELD) == kwargs["metadata"][FIELD]
              and layer.metadata[CHANNEL] < ch]
    return images[-1] + 1 if images else 0


def sample_pending() -> bool:
    """True while sample layers are still being added (tests wait for it)."""
    return bool(_steps) and _steps[0].pending
