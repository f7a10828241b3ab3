"""Multi-crop geometry and microscopy augmentations on small float32 arrays (NumPy/OpenCV, no PIL).

Crops are cut from the field first and only then resized, so a 96-px local crop never touches the other
~1M pixels of a 1080² field. Augmentations suit fluorescence/brightfield: flips on both axes, 90° rotations,
intensity/contrast/gamma jitter, blur, noise — no hue or colour jitter (the images are single-channel).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from dinocell_core.ssl.config import AugmentConfig


def sample_crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop box (top, left, h, w): area fraction in ``scale``, log-uniform aspect ratio."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def sample_crop_box_px(rng: np.random.Generator, height: int, width: int, side_px: tuple[int, int],
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Crop box (top, left, h, w) whose side (sqrt of the area) is uniform in ``side_px`` field pixels, so a crop
    resized to the network's size shows cells at a known scale (``side_px == size``: native pixels)."""
    side = rng.uniform(side_px[0], side_px[1])
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]))) if side_px[0] != side_px[1] else 1.0
    h = min(height, max(1, int(round(side / math.sqrt(aspect)))))
    w = min(width, max(1, int(round(side * math.sqrt(aspect)))))
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, h, w


def crop_resize(img: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Cut ``box`` and resize to ``size``² (INTER_AREA when shrinking, INTER_LINEAR when enlarging)."""
    top, left, h, w = box
    crop = img[top:top + h, left:left + w]
    interp = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def augment(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, blur_p: float) -> np.ndarray:
    """Random flips/rot90, intensity/contrast/gamma jitter, blur and noise on one [0, 1]-ish float32 crop."""
    if cfg.flips:
        if rng.random() < 0.5:
            img = img[:, ::-1]
        if rng.random() < 0.5:
            img = img[::-1, :]
    if cfg.rot90:
        k = int(rng.integers(0, 4))
        if k:
            img = np.rot90(img, k)
    img = np.ascontiguousarray(img, dtype=np.float32)
    if rng.random() < cfg.intensity_p:
        g_lo, g_hi = cfg.gamma
        gamma = math.exp(rng.uniform(math.log(g_lo), math.log(g_hi))) if g_hi > 0 and g_lo > 0 else 1.0
        if abs(gamma - 1.0) > 1e-3:
            np.clip(img, 0.0, None, out=img)
            cv2.pow(img, gamma, dst=img)
        c = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
        b = rng.uniform(-cfg.brightness, cfg.brightness)
        img = cv2.addWeighted(img, c, img, 0.0, b)
    if rng.random() < blur_p:
        sigma = rng.uniform(*cfg.blur_sigma)
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if rng.random() < cfg.noise_p:
        std = rng.uniform(*cfg.noise_std)
        if std > 0:
            img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(std)
    return img


class MaskingGenerator:
    """BEiT/iBOT block masking as in the official DINOv3 recipe: rectangles of ≥ ``min_num_patches`` patches
    with aspect ratio in [min_aspect, 1/min_aspect], added until the target count, then topped up at random
    positions so the count is exact."""

    def __init__(self, grid: tuple[int, int], max_num_patches: int, min_num_patches: int = 4,
                 min_aspect: float = 0.3, max_aspect: float | None = None) -> None:
        self.height, self.width = grid
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def _block(self, mask: np.ndarray, max_patches: int, rng: np.random.Generator) -> int:
        delta = 0
        for _ in range(10):
            target = rng.uniform(self.min_num_patches, max(max_patches, self.min_num_patches))
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < self.width and h < self.height:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                region = mask[top:top + h, left:left + w]
                n_masked = int(region.sum())
                if 0 < h * w - n_masked <= max_patches:
                    delta += h * w - n_masked
                    region[:] = True
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches: int, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            max_patches = min(num_masking_patches - count, self.max_num_patches)
            delta = self._block(mask, max_patches, rng)
            if delta == 0:
                break
            count += delta
        if count < num_masking_patches:
            free = np.flatnonzero(~mask)
            mask.flat[rng.choice(free, num_masking_patches - count, replace=False)] = True
        return mask


def ibot_masks(n_crops: int, grid: tuple[int, int], probability: float, ratio: tuple[float, float],
               rng: np.random.Generator, generator: MaskingGenerator | None = None) -> np.ndarray:
    """Masks for ``n_crops`` global crops (bool [n, gh, gw]): a ``probability`` share of crops is masked, with
    ratios spread linearly over ``ratio`` across the batch (official collate), the rest unmasked, shuffled."""
    gen = generator or MaskingGenerator(grid, max_num_patches=int(0.5 * grid[0] * grid[1]))
    n_tokens = grid[0] * grid[1]
    n_masked = int(n_crops * probability)
    bounds = np.linspace(ratio[0], ratio[1], n_masked + 1)
    masks = [gen(int(n_tokens * rng.uniform(bounds[i], bounds[i + 1])), rng) for i in range(n_masked)]
    masks += [np.zeros(grid, dtype=bool) for _ in range(n_crops - n_masked)]
    order = rng.permutation(n_crops)
    return np.stack([masks[i] for i in order]) if masks else np.zeros((0, *grid), dtype=bool)
