"""Multi-crop geometry and microscopy augmentations on small float32 arrays (NumPy/OpenCV, no PIL).

Crops are cut from the field first and only then resized, so a 96-px local crop never touches the other
~1M pixels of a 1080² field. Augmentations suit fluorescence/brightfield: gamma/gain/offset jitter of the raw
counts before normalisation (:func:`intensity_curve`), then flips on both axes, 90° rotations, blur, noise — no hue
or colour jitter. Crops are one plane [H, W] or a stack of planes [C, H, W] (geometry shared by the planes).
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
    """Cut ``box`` and resize to ``size``² as float32 (INTER_AREA when shrinking, INTER_LINEAR when enlarging)."""
    top, left, h, w = box
    crop = img[top:top + h, left:left + w].astype(np.float32, copy=False)
    interp = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def intensity_curve(x: np.ndarray, lo: float, hi: float, gamma: float, gain: float, offset: float
                    ) -> tuple[np.ndarray, float, float]:
    """Jitter raw counts ``x`` as another detector response, exposure and offset would: with ``lo``/``hi`` the
    levels that normalise them (dark, bright) and r = hi − lo,

        f(x) = lo + r·(offset + gain·u^gamma),   u = max(x − lo, 0)/r

    (gamma bends the signal above the dark level, as the fixture's detector gamma does). Returns (f(x), f(lo),
    f(hi)): f is increasing, so these are the augmented field's percentiles — per-field normalisation with them gives
    u^gamma whatever the gain and offset."""
    r = max(float(hi) - float(lo), 1e-12)
    u = np.asarray(x, np.float32) - np.float32(lo)
    np.maximum(u, 0.0, out=u)
    u *= np.float32(1.0 / r)
    if abs(gamma - 1.0) > 1e-6:
        cv2.pow(u, gamma, dst=u)
    u *= np.float32(gain * r)
    u += np.float32(lo + offset * r)
    return u, lo + offset * r, lo + (offset + gain) * r


def draw_intensity(rng: np.random.Generator, cfg: AugmentConfig) -> tuple[float, float, float] | None:
    """(gamma, gain, offset) for one plane of one crop (gamma and gain log-uniform), or None (no jitter). Always
    draws the same count of numbers, so the strengths never move the rest of the stream (the crop geometry)."""
    log_uniform = lambda r: math.exp(rng.uniform(math.log(r[0]), math.log(r[1])))  # noqa: E731
    apply = rng.random() < cfg.intensity_p
    jitter = (log_uniform(cfg.gamma), log_uniform(cfg.gain), float(rng.uniform(*cfg.offset)))
    return jitter if apply else None


def augment(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, blur_p: float) -> np.ndarray:
    """Random flips/rot90, blur and noise on one normalised float32 crop [H, W] or [C, H, W] (the intensity jitter
    came before normalisation: :func:`intensity_curve`)."""
    if cfg.flips:
        if rng.random() < 0.5:
            img = img[..., :, ::-1]
        if rng.random() < 0.5:
            img = img[..., ::-1, :]
    if cfg.rot90:
        k = int(rng.integers(0, 4))
        if k:
            img = np.rot90(img, k, axes=(-2, -1))
    img = np.ascontiguousarray(img, dtype=np.float32)
    if rng.random() < blur_p:
        sigma = rng.uniform(*cfg.blur_sigma)
        if sigma > 0:
            planes = img.reshape(-1, *img.shape[-2:])
            img = np.stack([cv2.GaussianBlur(p, (0, 0), sigma) for p in planes]).reshape(img.shape)
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
