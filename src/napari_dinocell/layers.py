"""How a Cell Painting channel looks in napari, and in-place layer updates shared by browser, reader, sample data.

Updating ``layer.data`` of an existing layer (instead of adding a new one) keeps the user's layer order,
visibility and contrast tweaks when switching sites, and stops layers piling up. Only layers the updater added
itself are updated: they carry an owner and a key in their metadata, so a user's own "DNA" layer (or the sample
data's) is never overwritten, whatever its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dinocell_core.jump.channels import BRIGHTFIELD, CHANNELS
from napari_dinocell.layer_meta import CHANNEL, LAYER, OWNER, SOURCE_LAYER

#: Cell Painting colours: Mito magenta, AGP red, RNA yellow, ER green, DNA blue; brightfield planes gray
COLORMAPS = {1: "magenta", 2: "red", 3: "yellow", 4: "green", 5: "blue", 6: "gray", 7: "gray", 8: "gray"}
FLUOR_MEAN_NAME = "Fluorescent mean"
#: the mark a result layer's name gets when the image it was computed from changes
STALE = " [stale]"


def contrast_limits(image: np.ndarray, low: float = 0.5, high: float = 99.8) -> tuple[float, float]:
    """Percentile limits on a strided subsample (fast on 2k × 2k images); never an empty range."""
    arr = np.asarray(image)
    step = max(1, int(np.sqrt(arr.size / 250_000)))
    sample = arr[::step, ::step] if arr.ndim == 2 else arr.reshape(-1)[:: step * step]
    lo, hi = np.percentile(sample, (low, high))
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def channel_layer_kwargs(channel: int, image: np.ndarray, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """napari ``add_image`` keyword arguments for channel ``channel`` (1–8) of a field."""
    bright = channel in BRIGHTFIELD
    return {
        "name": CHANNELS[channel],
        "colormap": COLORMAPS[channel],
        "blending": "translucent" if bright else "additive",
        "contrast_limits": contrast_limits(image),
        "visible": not bright,  # brightfield would wash out the additive fluorescent overlay
        "metadata": {CHANNEL: channel, **(metadata or {})},
    }


def field_layer_data(
    stack: np.ndarray, channels: list[int], metadata: dict[str, Any] | None = None
) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """napari layer-data tuples for a [C, H, W] stack of the given channel numbers."""
    return [(stack[i], channel_layer_kwargs(ch, stack[i], metadata), "image") for i, ch in enumerate(channels)]


def is_result(layer: Any) -> bool:
    """A layer computed from another image (labels, distance map, PCA features): never an input to segment."""
    return SOURCE_LAYER in layer.metadata


def owned_layer(viewer: Any, owner: str, key: str) -> Any:
    """The layer ``owner`` added under ``key`` (None if there is none, e.g. the user deleted it)."""
    return next((layer for layer in viewer.layers
                 if layer.metadata.get(OWNER) == owner and layer.metadata.get(LAYER) == key), None)


def upsert_image(viewer: Any, data: np.ndarray, kwargs: dict[str, Any], owner: str = "dinocell",
                 add: Callable[[Any], None] | None = None) -> Any:
    """Replace the data of the image layer ``owner`` added as ``kwargs["name"]`` in place, or add it (with ``add``
    when given, e.g. :meth:`UiSteps.add_layer`, else ``viewer.add_layer``).

    An updated layer keeps its contrast limits (the user's per-channel setting survives a site change). A new
    layer takes the name if it is free; napari suffixes it (" [1]") if the user already has a layer of that name.
    """
    key = kwargs["name"]
    layer = owned_layer(viewer, owner, key)
    if layer is not None and layer.__class__.__name__ == "Image":
        limits = tuple(layer.contrast_limits)
        layer.data = data
        if layer.contrast_limits_range[0] > limits[0] or layer.contrast_limits_range[1] < limits[1]:
            layer.contrast_limits_range = (min(limits[0], layer.contrast_limits_range[0]),
                                           max(limits[1], layer.contrast_limits_range[1]))
        layer.contrast_limits = limits
        layer.metadata = {**layer.metadata, **kwargs.get("metadata", {})}
        return layer
    from napari.layers import Image

    layer = Image(data, **{**kwargs, "metadata": {**kwargs.get("metadata", {}), OWNER: owner, LAYER: key}})
    (add or viewer.add_layer)(layer)
    return layer
