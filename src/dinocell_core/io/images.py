"""One image file → the 2-D float32 [0, 1] array a model sees: read, pick a channel, scale by percentiles.

Training, inference, evaluation, feature PCA and the napari widgets all call these, so an image is prepared the
same way everywhere. CLAHE runs on the float image (clip limit honoured at any bit depth), never on 8-bit data.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import tifffile

from dinocell_core.errors import DinocellError

log = logging.getLogger(__name__)

#: the largest image read_image decodes (16384² pixels): a small compressed file can declare a huge image
MAX_PIXELS = 2**28
#: above this fraction of NaN/inf pixels an image is refused rather than segmented with them masked
MAX_NONFINITE_FRACTION = 0.25


class ImageError(DinocellError, ValueError):
    """An image file or array is unusable (the message names it and says why)."""


def percentiles(img: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Field percentiles from a regular subsample (every 4th pixel of big images: ~70k values, ~1 ms)."""
    step = 4 if img.size > 512 * 512 else (2 if img.size > 128 * 128 else 1)
    sample = img[::step, ::step] if img.ndim == 2 else img
    lo, hi = np.percentile(sample, [low, high])
    return float(lo), float(hi)


def normalize_percentile(img: np.ndarray, low: float = 1.0, high: float = 99.8, clip: bool = True) -> np.ndarray:
    """Map the ``low``/``high`` percentiles to 0/1 (float32); a flat image becomes all zeros, not NaN."""
    lo, hi = percentiles(img, low, high)
    return scale_to_unit(img, lo, hi, clip)


def scale_to_unit(img: np.ndarray, lo: float, hi: float, clip: bool = True) -> np.ndarray:
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    out = img.astype(np.float32)
    out -= np.float32(lo)
    out *= np.float32(scale)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out


CLAHE_BINS = 256


def apply_clahe(img01: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a [0, 1] image at full (float) precision.

    Why not OpenCV's 16-bit CLAHE: it spreads each tile over 65,536 bins, so the absolute clip
    (``clip_limit · tile area / 65536``) floors to 1 count on 1080² fields and every clip limit gives the same
    output. Here the clip limit means what it means for 8-bit images in OpenCV — a multiple of the mean count
    of 256 bins per tile, excess spread evenly — but a pixel between two of the 256 levels is mapped linearly
    between their LUT values (a continuous mapping), so faint 16-bit detail is not posterised. Tile
    mappings are blended bilinearly between tile centres, edges reflect-padded, as OpenCV does.
    """
    if clip_limit <= 0:
        raise ValueError(f"clip_limit must be > 0, got {clip_limit}")
    if tile_grid < 1:
        raise ValueError(f"tile_grid must be ≥ 1, got {tile_grid}")
    x = np.clip(np.asarray(img01, np.float32), 0.0, 1.0)
    if x.ndim != 2:
        raise ValueError(f"apply_clahe expects a 2-D image, got shape {x.shape}")
    h, w = x.shape
    g = tile_grid
    th, tw = -(-h // g), -(-w // g)
    padded = np.pad(x, ((0, th * g - h), (0, tw * g - w)), mode="reflect") if (th * g > h or tw * g > w) else x
    bins = np.rint(padded * (CLAHE_BINS - 1)).astype(np.int64)  # the 8-bit level each pixel is nearest to
    tile_id = (np.arange(th * g) // th)[:, None] * g + (np.arange(tw * g) // tw)[None, :]
    hist = np.bincount((tile_id * CLAHE_BINS + bins).ravel(), minlength=g * g * CLAHE_BINS)
    hist = hist.reshape(g * g, CLAHE_BINS).astype(np.float64)
    area = float(th * tw)
    limit = max(clip_limit * area / CLAHE_BINS, 1.0)
    excess = np.clip(hist - limit, 0.0, None).sum(1, keepdims=True)
    hist = np.minimum(hist, limit) + excess / CLAHE_BINS
    cdf = np.cumsum(hist, axis=1) / area  # OpenCV's LUT at the 256 levels, 0 … 1

    pos = x.astype(np.float64) * (CLAHE_BINS - 1)  # between two levels: linear between their LUT values
    b = np.minimum(pos.astype(np.int64), CLAHE_BINS - 2)
    f = pos - b

    def axis(n: int, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = (np.arange(n) + 0.5) / t - 0.5  # position in tile-centre units
        i0 = np.clip(np.floor(c).astype(np.int64), 0, g - 1)
        i1 = np.minimum(i0 + 1, g - 1)
        wgt = np.clip(c - i0, 0.0, 1.0)
        return i0, i1, wgt

    y0, y1, wy = axis(h, th)
    x0, x1, wx = axis(w, tw)

    def mapped(ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        t = ty[:, None] * g + tx[None, :]
        lo = cdf[t, b]
        return lo + f * (cdf[t, b + 1] - lo)

    top = mapped(y0, x0) * (1 - wx)[None, :] + mapped(y0, x1) * wx[None, :]
    bottom = mapped(y1, x0) * (1 - wx)[None, :] + mapped(y1, x1) * wx[None, :]
    return (top * (1 - wy)[:, None] + bottom * wy[:, None]).astype(np.float32)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Any 2-D or multichannel image as stored (TIFF via tifffile, others via OpenCV with RGB channel order)."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: file not found")
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(p) as tif:
                if not tif.series:
                    raise ImageError(f"{p}: TIFF has no images")
                check_size(tif.series[0].shape, p)  # from the header, before anything is decoded
                arr = tif.series[0].asarray()
        else:
            arr = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise ImageError(f"{p}: OpenCV cannot decode this image")
            if arr.ndim == 3 and arr.shape[2] in (3, 4):
                arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{p}: cannot read image ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def check_size(shape: tuple[int, ...], name: object) -> None:
    """Refuse an image that declares more than :data:`MAX_PIXELS` pixels (a decompression bomb or a mistake)."""
    n = int(np.prod([int(x) for x in shape], dtype=np.float64))
    if n > MAX_PIXELS:
        raise ImageError(f"{name}: declares {n:,} pixels (shape {tuple(shape)}), more than the {MAX_PIXELS:,} "
                         "DINOCell decodes; crop or tile it first")


def real_pixels(img: np.ndarray, name: str = "image") -> np.ndarray:
    """``img`` with a numeric real pixel type: bool becomes 0/1 (uint8); complex or non-numeric is refused."""
    a = np.asarray(img)
    if a.dtype == np.bool_:
        return a.view(np.uint8)
    if a.dtype.kind == "c":
        raise ImageError(f"{name}: complex-valued pixels ({a.dtype}); save the magnitude or phase as a real image")
    if a.dtype.kind not in "uif":
        raise ImageError(f"{name}: pixel type {a.dtype} is not a numeric image")
    return a


def select_channel(img: np.ndarray, channel: int | None = None, name: str = "image") -> np.ndarray:
    """A 2-D view of ``img``: itself if grayscale, else channel ``channel`` (channels-last if the last axis has
    ≤ 4 entries, else channels-first). A multichannel image needs ``channel`` unless all channels are equal
    (gray saved as RGB): mixing e.g. cytoplasm and nuclei stains silently is what SAMCell did wrong."""
    a = np.asarray(img)
    if a.ndim == 2:
        if channel not in (None, 0):
            raise ImageError(f"{name}: a grayscale image (one channel, shape {a.shape}) has no channel {channel}; "
                             "leave the channel out")
        return a
    if a.ndim != 3:
        raise ImageError(f"{name}: expected a 2-D image or one with a channel axis, got shape {a.shape}")
    stack = np.moveaxis(a, -1, 0) if a.shape[-1] <= 4 else a
    if channel is None:
        if all(np.array_equal(stack[0], s) for s in stack[1:]):
            return stack[0]
        raise ImageError(f"{name}: has {stack.shape[0]} different channels (shape {a.shape}); choose one with "
                           "channel / --channel")
    if not 0 <= channel < stack.shape[0]:
        raise ImageError(f"{name}: channel {channel} out of range (image has {stack.shape[0]} channels)")
    return stack[channel]


def prepare_image(img: np.ndarray, channel: int | None = None, low: float = 1.0, high: float = 99.8,
                  name: str = "image") -> np.ndarray:
    """Raw image → float32 [0, 1] by whole-image percentiles (a subsample on big images); used by training and
    inference alike. Any real pixel type works; NaN/inf pixels (up to :data:`MAX_NONFINITE_FRACTION`) are masked:
    percentiles come from the finite pixels and masked pixels read as background, with a warning naming them."""
    plane = select_channel(real_pixels(img, name), channel, name)
    if plane.dtype.kind != "f":
        return normalize_percentile(plane, low, high)
    finite = np.isfinite(plane)
    n_bad = int(plane.size - np.count_nonzero(finite))
    if n_bad == 0:
        return normalize_percentile(plane, low, high)
    if n_bad == plane.size:
        raise ImageError(f"{name}: every pixel is NaN or infinite")
    if n_bad > MAX_NONFINITE_FRACTION * plane.size:
        raise ImageError(f"{name}: {n_bad / plane.size:.1%} of the pixels are NaN or infinite (more than "
                         f"{MAX_NONFINITE_FRACTION:.0%}); fix the image before segmenting it")
    log.warning("%s: %d NaN/inf pixels (%.2f%%) masked as background", name, n_bad, 100.0 * n_bad / plane.size)
    lo, hi = (float(v) for v in np.percentile(plane[finite], [low, high]))
    return scale_to_unit(np.where(finite, plane, np.float32(lo)), lo, hi)
