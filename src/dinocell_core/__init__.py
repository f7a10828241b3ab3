"""DINOCell core: JUMP Cell Painting data, DINOv3 ViT-S/8 pretraining and distance-map segmentation (no Qt)."""

__version__ = "0.1.0"
