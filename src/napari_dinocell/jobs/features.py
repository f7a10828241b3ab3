"""The Backbone features widget's work: load a backbone and compute the PCA of its patch features on one image."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np

from napari_dinocell.jobs.runner import Progress

if TYPE_CHECKING:
    from dinocell_core.backbones.pca import FeaturePCA


def features_job(
    image: np.ndarray, weights: str | None, arch: str | None, patch_size: int, device: str, tile: int
) -> Generator[Progress, None, FeaturePCA | None]:
    """PCA of ``weights``'s patch features on ``image``, tile by tile (``arch`` None: read from the checkpoint)."""
    from dinocell_core.backbones.loading import backbone_from_weights
    from dinocell_core.backbones.pca import FeaturePCA, iter_feature_pca
    from dinocell_core.device import resolve_device

    device = str(resolve_device(device))
    backbone = backbone_from_weights(weights, arch, patch_size)
    result = None
    for item in iter_feature_pca(image, backbone, device=device, tile=tile):
        if isinstance(item, FeaturePCA):
            result = item
        else:
            yield Progress(item[0], item[1], "tiles")
    return result
