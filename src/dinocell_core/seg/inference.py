"""Tiled inference: any image size → distance map → instance labels, with bounded memory.

The image is reflect-padded by the overlap so every tile edge (where a ViT has the least context) falls in the
padding or under another tile's centre; tiles are blended with separable raised-cosine weights floored at ε (so
no pixel ever has zero total weight). Only the float32 output and weight maps of the whole image are kept:
features live for one batch of tiles, so an 8000×8000 image needs no more network memory than a 256² one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import numpy as np
import torch

from dinocell_core.device import resolve_device, resolve_precision
from dinocell_core.io.images import prepare_image
from dinocell_core.seg.bundle import MAX_TILE, Bundle, load_bundle
from dinocell_core.seg.distance import labels_with, resolve_thresholds

EPS_WEIGHT = 1e-3
Progress = tuple[int, int]
#: tiles per network call on a CPU: a larger batch computes no faster there and only holds more memory
CPU_BATCH = 4
#: tile pixels per network call on CUDA (32 tiles of 256²): a GPU needs that many tokens in flight to fill its
#: tensor cores, and the decoder's full-resolution maps (≈ 1 KiB per pixel under bf16 autocast) stay near 2 GiB
CUDA_BATCH_PIXELS = 32 * 256 * 256
CUDA_BYTES_PER_PIXEL = 1024
MAX_CUDA_BATCH = 64


def default_batch_size(device: torch.device, tile: int) -> int:
    """Tiles per network call when none is given: :data:`CPU_BATCH` on a CPU; on CUDA
    :data:`CUDA_BATCH_PIXELS` worth of ``tile``² tiles (32 at 256, 8 at 512), fewer when half the GPU's free
    memory would not hold them (a laptop GPU beside napari), at least 1."""
    if device.type != "cuda":
        return CPU_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    pixels = min(CUDA_BATCH_PIXELS, free // 2 // CUDA_BYTES_PER_PIXEL)
    return max(1, min(MAX_CUDA_BATCH, pixels // (tile * tile)))


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """[tile, tile] float32 weights: raised-cosine ramps over ``overlap`` px at each edge, 1 inside, ≥ ε."""
    w = np.ones(tile, np.float32)
    if overlap > 0:
        i = np.arange(overlap, dtype=np.float32)
        ramp = 0.5 * (1.0 - np.cos(np.pi * (i + 0.5) / overlap))
        w[:overlap] = ramp
        w[tile - overlap :] = np.minimum(w[tile - overlap :], ramp[::-1])
    w = np.maximum(w, EPS_WEIGHT)
    return np.outer(w, w).astype(np.float32)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering ``length`` (≥ tile); the last tile is aligned to the far edge."""
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def iter_tiled(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int, overlap: int,
               batch_size: int, multiple: int = 1,
               timings: dict[str, float] | None = None) -> Generator[Progress | np.ndarray, None, np.ndarray]:
    """Blend ``predict`` ([B, C, T, T] float32 → [B, 1, T, T]) over a normalised [H, W] image (C = 1) or
    [C, H, W] channel stack.

    Yields (done, total) tile counts after each batch, then the [H, W] float32 result (also returned).
    ``multiple``: the padded size is rounded up so tiles stay a multiple of it (the ViT patch size).
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"expected a normalised [H, W] image or [C, H, W] stack, got shape {image.shape}")
    stack = image if image.ndim == 3 else image[None]
    if tile % multiple or tile <= 2 * overlap:
        raise ValueError(f"tile size {tile} must be a multiple of {multiple} and larger than 2×overlap {overlap}")
    t = timings if timings is not None else {}
    t0 = time.perf_counter()
    h, w = stack.shape[-2:]
    tile = min(tile, fitted_tile(h, w, overlap, multiple))
    ph, pw = max(h + 2 * overlap, tile), max(w + 2 * overlap, tile)
    padded = np.pad(stack, ((0, 0), (overlap, ph - h - overlap), (overlap, pw - w - overlap)), mode="reflect")
    out = np.zeros((ph, pw), np.float32)
    wsum = np.zeros((ph, pw), np.float32)
    win = blend_window(tile, overlap)
    stride = tile - 2 * overlap if overlap else tile
    boxes = [(y, x) for y in tile_starts(ph, tile, stride) for x in tile_starts(pw, tile, stride)]
    t["blending"] = t.get("blending", 0.0) + time.perf_counter() - t0
    total = len(boxes)
    for b in range(0, total, batch_size):
        chunk = boxes[b : b + batch_size]
        t0 = time.perf_counter()
        batch = np.stack([padded[:, y : y + tile, x : x + tile] for y, x in chunk])
        t1 = time.perf_counter()
        pred = predict(batch)
        t2 = time.perf_counter()
        for (y, x), p in zip(chunk, pred[:, 0]):
            out[y : y + tile, x : x + tile] += p * win
            wsum[y : y + tile, x : x + tile] += win
        t3 = time.perf_counter()
        t["blending"] = t.get("blending", 0.0) + (t1 - t0) + (t3 - t2)
        t["network"] = t.get("network", 0.0) + (t2 - t1)
        yield (min(b + batch_size, total), total)
    t0 = time.perf_counter()
    del padded
    res = out[overlap : overlap + h, overlap : overlap + w]
    res /= wsum[overlap : overlap + h, overlap : overlap + w]
    res = np.ascontiguousarray(res)
    t["blending"] = t.get("blending", 0.0) + time.perf_counter() - t0
    yield res
    return res


def _last(gen: Generator[Progress | np.ndarray, None, np.ndarray]) -> np.ndarray:
    """Drain a progress generator; its last item is the result."""
    result = None
    for item in gen:
        result = item
    if not isinstance(result, np.ndarray):
        raise RuntimeError("tiled inference produced no result")
    return result


def run_tiled(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int, overlap: int,
              batch_size: int, multiple: int = 1) -> np.ndarray:
    return _last(iter_tiled(predict, image, tile, overlap, batch_size, multiple))


class Segmenter:
    """A loaded bundle ready to segment images of any size.

    ``tile_size`` / ``overlap`` default to the bundle's; ``channel`` picks a channel of multichannel input
    (default: the bundle's preprocessing channel, else the image must be grayscale). A multichannel bundle
    (``channels``, e.g. DNA + RNA) takes one image per channel it reads, in that order. ``model``: this bundle's
    network already built on ``device`` (the plugin keeps loaded models between clicks); built here when None.
    ``batch_size``: tiles per network call (default :func:`default_batch_size`: 4 on a CPU, more on CUDA);
    ``precision``: auto | fp32 | bf16 (:func:`~dinocell_core.device.resolve_precision`: auto is bf16 autocast on a
    CUDA GPU, fp32 on a CPU).
    """

    def __init__(self, bundle: Bundle | str | os.PathLike[str], device: str = "cpu", tile_size: int | None = None,
                 overlap: int | None = None, batch_size: int | None = None, channel: int | None = None,
                 model: torch.nn.Module | None = None, precision: str = "auto") -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle))
        meta = self.bundle.metadata
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model: torch.nn.Module | None = model if model is not None else self.bundle.build_model(self.device)
        self.patch_size = int(meta["backbone"]["patch_size"])
        self.tile_size = int(tile_size if tile_size is not None else meta["tile_size"])
        self.overlap = int(overlap if overlap is not None else meta.get("overlap", self.tile_size // 8))
        if not 1 <= self.tile_size <= MAX_TILE or self.tile_size % self.patch_size:
            raise ValueError(f"{self.bundle.path}: tile size {self.tile_size} must be a multiple of the patch size "
                             f"{self.patch_size} in [{self.patch_size}, {MAX_TILE}]")
        if not 0 <= 2 * self.overlap < self.tile_size:
            raise ValueError(f"{self.bundle.path}: overlap {self.overlap} must be ≥ 0 and below half the tile size "
                             f"{self.tile_size}")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be ≥ 1")
        self.batch_size = batch_size if batch_size is not None else default_batch_size(self.device, self.tile_size)
        pre = meta["preprocessing"]
        self.low, self.high = float(pre["low"]), float(pre["high"])
        self.channel = channel
        self.channels: list[str] = self.bundle.channels
        self.thresholds = resolve_thresholds(self.bundle.thresholds)  # the bundle's, defaults for keys it lacks
        self.timings: dict[str, float] = {}

    def preprocess(self, image: np.ndarray | Sequence[np.ndarray], name: str = "image") -> np.ndarray:
        """The training preprocessing: channel selection + whole-image percentile normalisation (``name`` is the
        file named in errors and NaN warnings). A multichannel model takes a sequence of one image per channel it
        reads (each normalised on its own, as in training) and returns their [C, H, W] stack."""
        t0 = time.perf_counter()
        if len(self.channels) == 1:
            if not isinstance(image, np.ndarray):
                raise ValueError(f"{name}: model {self.bundle.name} reads one channel, got {len(image)} images")
            out = prepare_image(image, self.channel, self.low, self.high, name)
        else:
            if isinstance(image, np.ndarray) or len(image) != len(self.channels):
                got = "one image" if isinstance(image, np.ndarray) else f"{len(image)} images"
                raise ValueError(f"{name}: model {self.bundle.name} reads {len(self.channels)} channels "
                                 f"({', '.join(self.channels)}), one image each; got {got}")
            planes = [prepare_image(im, None, self.low, self.high, f"{name} ({c})")
                      for im, c in zip(image, self.channels)]
            if any(p.shape != planes[0].shape for p in planes):
                raise ValueError(f"{name}: the {', '.join(self.channels)} images differ in size "
                                 f"({[p.shape for p in planes]})")
            out = np.stack(planes)
        self.timings["preprocessing"] = self.timings.get("preprocessing", 0.0) + time.perf_counter() - t0
        return out

    @torch.no_grad()
    def _predict(self, batch: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("this Segmenter was released")
        x = self.precision.to_device(torch.from_numpy(batch))
        with self.precision.autocast():
            y = self.model(x)
        return y.float().cpu().numpy()

    def iter_distance(self, image: np.ndarray | Sequence[np.ndarray]) -> Generator[Progress | np.ndarray, None, np.ndarray]:
        """Yields (done, total) after each tile batch (cancel points), then the float32 distance map."""
        return (yield from self.iter_prepared(self.preprocess(image)))

    def iter_prepared(self, image01: np.ndarray) -> Generator[Progress | np.ndarray, None, np.ndarray]:
        """As :meth:`iter_distance` for an image already through :meth:`preprocess`."""
        return (yield from iter_tiled(self._predict, image01, self.tile_size, self.overlap, self.batch_size,
                                      self.patch_size, self.timings))

    def predict_prepared(self, image01: np.ndarray) -> np.ndarray:
        return _last(self.iter_prepared(image01))

    def predict_distance(self, image: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        return _last(self.iter_distance(image))

    def labels(self, distance: np.ndarray, peak_threshold: float | None = None,
               fill_threshold: float | None = None, min_size: int | None = None,
               grow_threshold: float | None = None, ring: float | None = None,
               slope: float | None = None) -> np.ndarray:
        """Instance labels from a (cached) distance map — no network pass; unset thresholds use the bundle's."""
        t0 = time.perf_counter()
        th = resolve_thresholds(self.thresholds, peak=peak_threshold, fill=fill_threshold, min_size=min_size,
                                grow=grow_threshold, ring=ring, slope=slope)
        out = labels_with(distance, th)
        self.timings["postprocessing"] = self.timings.get("postprocessing", 0.0) + time.perf_counter() - t0
        return out

    def segment(self, image: np.ndarray | Sequence[np.ndarray], **thresholds: float) -> np.ndarray:
        return self.labels(self.predict_distance(image), **thresholds)

    def n_tiles(self, shape: tuple[int, int]) -> int:
        return tiles_for(shape, self.tile_size, self.overlap, self.patch_size)

    def release(self) -> None:
        """Drop the network and free cached GPU memory (napari calls this after each job / on model swap)."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def fitted_tile(h: int, w: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile (a multiple of ``multiple``) that holds a whole ``h``×``w`` image with its overlap: a tile
    larger than that only adds reflected padding, and a ViT's cost grows with the square of its tokens (tile 4096
    on a 192² image ran for minutes at 3 GB)."""
    side = max(h, w) + 2 * overlap
    return -(-side // multiple) * multiple


def tiles_for(shape: tuple[int, int], tile: int, overlap: int, multiple: int = 1) -> int:
    """Number of tiles a ``shape`` image needs (for progress totals and benchmarks)."""
    tile = min(tile, fitted_tile(shape[0], shape[1], overlap, multiple))
    stride = tile - 2 * overlap if overlap else tile
    ph, pw = max(shape[0] + 2 * overlap, tile), max(shape[1] + 2 * overlap, tile)
    return len(tile_starts(ph, tile, stride)) * len(tile_starts(pw, tile, stride))

