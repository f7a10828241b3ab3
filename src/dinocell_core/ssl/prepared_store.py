"""Reading a ``jump prepare`` store: each field's normalised views as uint16 ``.npy`` (memory-mappable).

Values are the [0, 1] normalised channels of :mod:`dinocell_core.jump.preprocess` scaled to 0..65535, so 16-bit
precision is kept; crops from a store get their intensity jitter on these (with levels 0 and 1: the same result as on
raw counts under per-field normalisation). The store records the preprocessing settings and refuses a config that
asks for different ones (a stale store must not silently feed other data). The writer is
:mod:`dinocell_core.ssl.prepare`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dinocell_core.io.tiffio import BadImageError
from dinocell_core.jump.channels import FLUORESCENT
from dinocell_core.jump.index import Field
from dinocell_core.ssl.config import DataConfig

MANIFEST = "manifest.json"


def views_for(cfg: DataConfig) -> list[str]:
    """The channels a channel mode needs, as strings: crops combine channels only after each one's intensity jitter,
    so the fluorescent modes need all five fluorescent channels (not their mean)."""
    mode = cfg.mode
    if mode.kind == "channel":
        return [str(mode.channel)]
    channels = set(FLUORESCENT) | (set(cfg.multiview_channels) if mode.kind == "multiview" else set())
    return [str(c) for c in sorted(channels)]


def settings_of(cfg: DataConfig) -> dict[str, Any]:
    settings = {"norm_percentiles": list(cfg.norm_percentiles), "illumination": cfg.illumination,
                "clahe": cfg.clahe, "clahe_clip_limit": cfg.clahe_clip_limit}
    if cfg.normalization != "field":  # stores of per-field levels (the default) predate the key
        settings.update(normalization=cfg.normalization, plate_norm_fields=cfg.plate_norm_fields)
    return settings


def field_file(out: str | os.PathLike[str], field: Field) -> Path:
    digest = hashlib.sha1(field.key.encode()).hexdigest()
    return Path(out) / "fields" / digest[:2] / f"{digest}.npy"


class PreparedStore:
    """Reads prepared views; the dataset uses it instead of decoding TIFFs when ``data.prepared`` is set."""

    def __init__(self, path: str | os.PathLike[str], cfg: DataConfig) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"data.prepared={self.path}: no {MANIFEST} (run `dinocell-core jump prepare`)")
        meta = json.loads(manifest.read_text())
        self.views: list[str] = meta["views"]
        missing = [v for v in views_for(cfg) if v not in self.views]
        if missing:
            raise ValueError(f"data.prepared={self.path} holds views {self.views}; channel_mode "
                             f"{cfg.channel_mode!r} needs {missing} too: prepare again with this config")
        if meta["settings"] != settings_of(cfg):
            raise ValueError(f"data.prepared={self.path} was made with {meta['settings']}, the config asks for "
                             f"{settings_of(cfg)}: prepare again or change the config")

    def view(self, field: Field, view: int | str) -> np.ndarray:
        path = field_file(self.path, field)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise BadImageError(str(path), f"prepared field {field.key} missing (failed or not prepared)") from None
        except Exception as exc:
            raise BadImageError(str(path), f"cannot read prepared field ({type(exc).__name__}: {exc})") from None
        if arr.ndim != 3 or arr.shape[0] != len(self.views) or arr.dtype != np.uint16:
            raise BadImageError(str(path), f"prepared field has shape {arr.shape} {arr.dtype}, expected "
                                           f"({len(self.views)}, H, W) uint16")
        out = np.asarray(arr[self.views.index(str(view))], dtype=np.float32)
        out *= np.float32(1.0 / 65535.0)
        return out
