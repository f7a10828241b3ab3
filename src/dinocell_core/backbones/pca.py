"""PCA of a backbone's patch features shown as an RGB image: a quick look at what pretraining learned.

The first three principal components of the patch tokens of one image become R, G, B (robustly scaled per
component). Any backbone that :func:`dinocell_core.backbones.loading.backbone_from_weights` loads works, so two checkpoints of
one run can be compared on the same field. Large images are processed in tiles (attention cost grows with the
square of the token count); the result has one pixel per patch. A ``fluorescent_stack`` backbone (5 input planes)
looks at the five fluorescent channels of a field, [5, H, W] in CPJUMP1 order (Mito, AGP, RNA, ER, DNA).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class FeaturePCA:
    rgb: np.ndarray  # [h, w, 3] float32 in [0, 1], one pixel per patch
    patch_size: int
    explained: np.ndarray  # fraction of variance of each of the 3 components


def feature_image(image: np.ndarray) -> np.ndarray:
    """2-D float32 image robustly scaled to background≈0, signal≈1 (the training data convention)."""
    from dinocell_core.io.images import normalize_percentile

    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] in (3, 4) and img.shape[0] > 4:
        img = img[..., :3].mean(axis=-1)
    if img.ndim == 3:
        img = img.mean(axis=0)
    if img.ndim != 2:
        raise ValueError(f"feature PCA needs a 2-D image (or channels × H × W), got shape {image.shape}")
    return normalize_percentile(img.astype(np.float32))


def feature_stack(image: np.ndarray, planes: int) -> np.ndarray:
    """[planes, H, W] float32, each plane robustly scaled on its own (the training data convention of a stack)."""
    from dinocell_core.io.images import normalize_percentile

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[0] != planes:
        raise ValueError(f"this backbone takes {planes} input planes (the fluorescent channels as [{planes}, H, W]), "
                         f"got an image of shape {img.shape}")
    return np.stack([normalize_percentile(p.astype(np.float32)) for p in img])


def iter_patch_features(
    backbone: Any, image: np.ndarray, tile: int = 512, device: str = "cpu"
) -> Iterator[tuple[int, int] | np.ndarray]:
    """Yield (done, total) after each tile, then the feature grid [ceil(H/p), ceil(W/p), D] float32.

    A generator so a GUI can show progress and cancel between tiles.
    """
    import torch

    p = int(backbone.patch_size)
    planes = int(getattr(backbone, "in_chans", 3))
    img = feature_image(image)[None] if planes == 3 else feature_stack(image, planes)
    h, w = img.shape[-2:]
    gh, gw = -(-h // p), -(-w // p)
    padded = np.pad(img, ((0, 0), (0, gh * p - h), (0, gw * p - w)), mode="reflect" if min(h, w) > 1 else "edge")
    tile = max(p, (int(tile) // p) * p)
    boxes = [(y, x) for y in range(0, gh * p, tile) for x in range(0, gw * p, tile)]
    grid = np.zeros((gh, gw, int(backbone.embed_dim)), np.float32)
    backbone = backbone.to(device).eval()
    with torch.inference_mode():
        for i, (y, x) in enumerate(boxes):
            crop = padded[:, y : y + tile, x : x + tile]
            th, tw = crop.shape[1] // p, crop.shape[2] // p
            t = torch.from_numpy(np.ascontiguousarray(crop))[None].to(device)
            tokens = backbone.forward_tokens(backbone.normalize_input(t))["patches"]
            grid[y // p : y // p + th, x // p : x // p + tw] = (
                tokens[0].float().reshape(th, tw, -1).cpu().numpy()
            )
            yield (i + 1, len(boxes))
    yield grid


def pca_rgb(features: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[np.ndarray, np.ndarray]:
    """Project [h, w, D] features on their 3 main components → ([h, w, 3] in [0, 1], explained variance)."""
    h, w, d = features.shape
    x = features.reshape(-1, d).astype(np.float64)
    x -= x.mean(axis=0, keepdims=True)
    cov = x.T @ x / max(1, x.shape[0] - 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:3]
    vecs = vecs[:, order]
    # eigenvector signs are arbitrary: fix them so the same features always give the same colours
    vecs *= np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
    proj = x @ vecs
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo = np.percentile(proj, low, axis=0)
    hi = np.percentile(proj, high, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1).astype(np.float32)
    total = max(float(vals.sum()), 1e-12)
    explained = np.zeros(3, np.float32)
    explained[: len(order)] = vals[order] / total
    return rgb.reshape(h, w, 3), explained


def iter_feature_pca(
    image: np.ndarray, backbone: Any, device: str = "cpu", tile: int = 512
) -> Iterator[tuple[int, int] | FeaturePCA]:
    """Yield tile progress, then the :class:`FeaturePCA` of ``image``; frees GPU cache memory at the end."""
    try:
        features = None
        for item in iter_patch_features(backbone, image, tile=tile, device=device):
            if isinstance(item, np.ndarray):
                features = item
            else:
                yield item
        if features is None:
            raise RuntimeError("no features were computed")
        rgb, explained = pca_rgb(features)
        yield FeaturePCA(rgb=rgb, patch_size=int(backbone.patch_size), explained=explained)
    finally:
        if str(device).startswith("cuda"):
            import torch

            backbone.to("cpu")
            torch.cuda.empty_cache()
