"""From raw uint16 channels to the 1-channel float32 views the model sees.

Each channel is robust-normalised on its own (percentiles of the whole field, so crops keep their brightness
relative to the field and a cell-free crop stays dark) before anything is combined: brightfield (~20k counts)
is never averaged with fluorescence (~300–3,000). Illumination correction follows CellProfiler
(CorrectIlluminationApply, Divide): ``clip((raw / 65535) / illum, 0, 1)``. CLAHE, when asked, runs on a
16-bit rendering of the normalised image (:mod:`dinocell_core.io.images`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dinocell_core.io.images import apply_clahe, percentiles, scale_to_unit
from dinocell_core.io.tiffio import BadImageError, odd_shape, read_tiff
from dinocell_core.jump.channels import ALL_CHANNELS, CHANNELS
from dinocell_core.jump.index import Field, join_path


def illumination_path(field: Field, ch: int) -> str:
    """``images/<batch>/illum/<barcode>/<barcode>_Illum<Name>.npy`` beside the plate's ``images/`` folder."""
    rel = field.paths[ch]
    marker = f"/images/{field.plate_folder}/"
    cut = rel.rfind(marker)
    if cut < 0 and rel.startswith(f"images/{field.plate_folder}/"):
        cut, marker = -1, ""
    if cut < 0 and marker:
        raise FileNotFoundError(f"cannot place the illumination folder for {rel} (not under images/<plate>/)")
    base = rel[:cut] if cut >= 0 else ""
    prefix = f"{base}/" if base else ""
    return f"{prefix}illum/{field.plate}/{field.plate}_Illum{CHANNELS[ch]}.npy"


class IlluminationCache:
    """Per-process LRU of inverse illumination functions (float32, one per plate and channel)."""

    def __init__(self, max_items: int = 40, storage: Any = None) -> None:
        self.max_items = max_items
        self.storage = storage
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def inverse(self, root: str, field: Field, ch: int, shape: tuple[int, int]) -> np.ndarray:
        path = join_path(root, illumination_path(field, ch))
        inv = self._items.get(path)
        if inv is None:
            inv = _load_inverse_illum(path, shape, self.storage)
            self._items[path] = inv
            if len(self._items) > self.max_items:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(path)
        return inv


def _load_inverse_illum(path: str, shape: tuple[int, int], storage: Any) -> np.ndarray:
    import io

    try:
        if "://" in path:
            illum = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
        else:
            illum = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BadImageError(path, "illumination file not found") from None
    except Exception as exc:
        raise BadImageError(path, f"cannot read illumination file ({type(exc).__name__}: {exc})") from None
    if illum.shape != tuple(shape):
        raise BadImageError(path, f"illumination shape {illum.shape} does not match image shape {tuple(shape)}")
    illum = illum.astype(np.float32)
    if not np.all(np.isfinite(illum)) or float(illum.min()) <= 0:
        raise BadImageError(path, "illumination function has non-positive or non-finite values")
    return (1.0 / (illum * 65535.0)).astype(np.float32)


@dataclass
class Preprocessor:
    """Per-channel correction + normalisation settings (the ``data`` config's preprocessing keys)."""

    low: float = 1.0
    high: float = 99.8
    illumination: bool = False
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8

    def corrected(self, raw: np.ndarray, inv_illum: np.ndarray | None = None) -> np.ndarray:
        """One raw uint16 channel before normalisation: as stored, or illumination-corrected (float32 in [0, 1])."""
        if inv_illum is None:
            return raw
        img = raw.astype(np.float32)
        img *= inv_illum
        np.clip(img, 0.0, 1.0, out=img)
        return img

    def references(self, img: np.ndarray) -> tuple[float, float]:
        """The field's normalisation levels: its ``low``/``high`` percentiles (mapped to 0 and 1)."""
        return percentiles(img, self.low, self.high)

    def finish(self, img: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """A corrected channel → float32 in [0, 1]: ``lo``/``hi`` mapped to 0/1, then CLAHE when asked."""
        out = scale_to_unit(img, lo, hi)
        if self.clahe:
            out = apply_clahe(out, self.clahe_clip_limit, self.clahe_tile_grid)
        return out

    def channel(self, raw: np.ndarray, inv_illum: np.ndarray | None = None) -> np.ndarray:
        """One raw uint16 channel → float32 in [0, 1] (the field's own levels)."""
        img = self.corrected(raw, inv_illum)
        return self.finish(img, *self.references(img))

    def fluorescent_mean(self, normalised: Sequence[np.ndarray]) -> np.ndarray:
        """Mean of the separately normalised fluorescent channels (ch1–5 only)."""
        acc = np.zeros_like(normalised[0], dtype=np.float32)
        for img in normalised:
            acc += img
        acc *= np.float32(1.0 / len(normalised))
        return acc


def read_field(root: str | os.PathLike[str], field: Field, channels: Sequence[int] = ALL_CHANNELS,
               storage: Any = None, dtype: Any = np.uint16) -> np.ndarray:
    """Read ``channels`` of a field as [C, H, W] uint16; all channels must share one shape."""
    arrays: dict[str, np.ndarray] = {}
    for ch in channels:
        if ch not in field.paths:
            raise BadImageError(f"{field.key} ch{ch}", "channel missing from the index")
        path = str(field.path(root, ch))
        arrays[path] = read_tiff(path, storage=storage, dtype=dtype)
    bad = odd_shape({p: a.shape for p, a in arrays.items()})
    if bad is not None:
        raise bad
    return np.stack(list(arrays.values()))
