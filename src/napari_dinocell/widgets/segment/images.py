"""What segmentation reads from an image layer: its Cell Painting channel, how many channels it holds, the plane."""

from __future__ import annotations

import numpy as np
from napari.layers import Image

from dinocell_core.jump.channels import channel_number
from napari_dinocell.layer_meta import CHANNEL


def layer_channel(layer: Image) -> int | None:
    """Channel number of a layer: from metadata (browser, reader, sample data) or from its name ("DNA")."""
    meta = layer.metadata.get(CHANNEL)
    if isinstance(meta, int):
        return meta
    try:
        return channel_number(layer.name.split(" ")[0])
    except (ValueError, KeyError):
        return None


def n_channels(layer: Image) -> int:
    """Channels of a multichannel layer (RGB, or [C, H, W] / [H, W, C] as ``select_channel`` reads them); 1 if
    it is a plain 2-D image, 0 if it cannot be segmented."""
    shape = np.shape(layer.data)
    if len(shape) == 2 and not layer.rgb:
        return 1
    if len(shape) == 3:
        return shape[-1] if (layer.rgb or shape[-1] <= 4) else shape[0]
    return 0


def channel_image(data: np.ndarray, channel: int | None) -> np.ndarray:
    """The 2-D plane that segmentation reads (``select_channel``'s axis convention)."""
    from dinocell_core.io.images import select_channel

    return select_channel(np.asarray(data), channel)
