"""The DINOv3 ViT backbone, its architectures, the one home that loads it from any file, and feature PCA.

Main names are importable from here (loaded on first use, so light modules stay light)."""

from dinocell_core import lazy_exports

_EXPORTS = {
    "ArchSpec": "archs",
    "DinoBackbone": "vit",
    "WeightsError": "vit",
    "backbone_from_weights": "loading",
    "check_backbone": "archs",
    "iter_feature_pca": "pca",
    "load_backbone": "loading",
    "teacher_backbone": "loading",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
