"""napari's sample command for the synthetic field (:mod:`napari_dinocell.sample_data`).

napari calls a sample command on the GUI thread and adds what it returns there (~0.1–0.4 s per layer: vispy visuals,
layer controls), and making the field takes ~0.2 s more. The command therefore returns an empty DNA layer at once,
makes the field in a job, then fills the DNA layer and adds the other layers one per event-loop turn, so the viewer
keeps drawing meanwhile (the longest freeze is one layer's).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from dinocell_core.jump.channels import channel_number
from napari_dinocell.jobs.gc_pauses import watch as watch_gc_pauses
from napari_dinocell.jobs.runner import start_job
from napari_dinocell.layer_meta import CHANNEL, FIELD
from napari_dinocell.layers import channel_layer_kwargs
from napari_dinocell.sample_data import SEED, SIZE, LayerData, field_meta, sample_field
from napari_dinocell.status import JobStatus
from napari_dinocell.ui_steps import UiSteps

#: the channel napari gets from the command itself (empty until the field is made)
FIRST = channel_number("DNA")
_loaders: list[_Loader] = []  # the one pending-work holder (its QObject must outlive the command)


class _Loader:
    """Sample fields being made (jobs) and their layers being added (steps)."""

    def __init__(self) -> None:
        self.steps = UiSteps()
        self.jobs = 0


def open_sample_field() -> list[LayerData]:
    """The napari sample command: an empty DNA layer now, the field made in a job, its layers added after."""
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return sample_field()
    watch_gc_pauses(viewer)
    if not _loaders:
        _loaders.append(_Loader())
    loader = _loaders[0]
    empty = np.zeros((SIZE, SIZE), np.uint16)
    loader.jobs += 1
    start_job(sample_field, status=JobStatus(), title="Sample field", on_returned=partial(_place, viewer, empty),
              on_finished=_job_done)
    return [(empty, channel_layer_kwargs(FIRST, empty, field_meta(SEED)), "image")]


def _job_done() -> None:
    _loaders[0].jobs -= 1


def _place(viewer: Any, empty: np.ndarray, layers: list[LayerData]) -> None:
    """Fill the empty DNA layer first (unless the user removed it), then add the other layers, one per turn."""
    if viewer.window is None:
        return
    steps = _loaders[0].steps
    first = next((layer for layer in viewer.layers if layer.data is empty), None)
    for data, kwargs, kind in layers:
        if kind == "image" and kwargs["metadata"][CHANNEL] == FIRST:
            if first is not None:
                steps.push_next(partial(_fill, first, data, kwargs))
        else:
            steps.push(partial(_add, viewer, data, kwargs, kind))


def _fill(layer: Any, data: np.ndarray, kwargs: dict[str, Any]) -> None:
    layer.data = data
    layer.reset_contrast_limits_range()
    layer.contrast_limits = kwargs["contrast_limits"]


def _add(viewer: Any, data: np.ndarray, kwargs: dict[str, Any], kind: str) -> None:
    if viewer.window is None or kwargs["name"] in viewer.layers:
        return
    if kind == "labels":  # its editing overlays over the next turns (UiSteps.add_layer)
        from napari.layers import Labels

        _loaders[0].steps.add_layer(viewer, Labels(data, **kwargs), show=kwargs.get("visible", True))
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
    """True while a sample field is being made or its layers added (tests and benchmarks wait for it)."""
    return bool(_loaders) and (_loaders[0].jobs > 0 or _loaders[0].steps.pending)
