"""One-off preparation: each field's normalised views stored as uint16 ``.npy`` (memory-mappable).

Decoding 5 LZW TIFFs (~60–75 ms per 1080² field on one core) is the floor of the raw loader; a prepared field is
one uncompressed read of ~2.3 MB per view. Values are the [0, 1] views of :mod:`dinocell_core.preprocess` scaled
to 0..65535, so 16-bit precision is kept. The store records the preprocessing settings and refuses a config
that asks for different ones (a stale store must not silently feed other data).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from dinocell_core.fsutil import atomic_path, atomic_write_json
from dinocell_core.jump import Field
from dinocell_core.tiffio import BadImageError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FMEAN = "fluorescent_mean"


def views_for(cfg: Any) -> list[str]:
    """View names a channel mode needs: ``fluorescent_mean`` and/or channel numbers as strings."""
    from dinocell_core.preprocess import parse_channel_mode

    kind, ch = parse_channel_mode(cfg.channel_mode)
    if kind == "channel":
        return [str(ch)]
    if kind == FMEAN:
        return [FMEAN]
    return [FMEAN] + [str(c) for c in cfg.multiview_channels]


def settings_of(cfg: Any) -> dict[str, Any]:
    return {"norm_percentiles": list(cfg.norm_percentiles), "illumination": cfg.illumination,
            "clahe": cfg.clahe, "clahe_clip_limit": cfg.clahe_clip_limit}


def field_file(out: str | os.PathLike[str], field: Field) -> Path:
    digest = hashlib.sha1(field.key.encode()).hexdigest()
    return Path(out) / "fields" / digest[:2] / f"{digest}.npy"


class PreparedStore:
    """Reads prepared views; the dataset uses it instead of decoding TIFFs when ``data.prepared`` is set."""

    def __init__(self, path: str | os.PathLike[str], cfg: Any) -> None:
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

    def view(self, field: Field, view: Any) -> np.ndarray:
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


_WORKER: dict[str, Any] = {}


def _init(cfg_json: str, out: str, fields: Sequence[Field]) -> None:
    from dinocell_core.ssl_data import DataConfig, SSLFieldDataset

    cfg = DataConfig.model_validate_json(cfg_json)
    # patch size 1: preparing views does not depend on the model's patch grid.
    _WORKER.update(ds=SSLFieldDataset(cfg, 1, 0, fields=fields), out=out, views=views_for(cfg))


def _prepare_one(i: int) -> tuple[int, str | None]:
    ds = _WORKER["ds"]
    field = ds.fields[i]
    target = field_file(_WORKER["out"], field)
    if target.is_file():
        return i, None
    try:
        stack = np.stack([ds._view(field, v if v == FMEAN else int(v)) for v in _WORKER["views"]])
    except BadImageError as exc:
        return i, f"{exc.path}: {exc.reason}"
    u16 = (np.clip(stack, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.save(fh, u16)
    return i, None


def prepare_fields(cfg: Any, out: str | os.PathLike[str], workers: int = 1) -> str:
    """Prepare every indexed field of ``cfg`` into ``out`` (resumable: finished fields are skipped)."""
    from tqdm import tqdm

    from dinocell_core.ssl_data import SSLFieldDataset, load_ssl_fields

    if cfg.prepared:
        raise ValueError("data.prepared must be unset when preparing (the store is built from the raw images)")
    ds = SSLFieldDataset(cfg, 1, 0, fields=load_ssl_fields(cfg, cfg.storage()))
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    args = (cfg.model_dump_json(), str(out_p), ds.fields)
    if workers > 1:
        with get_context("spawn").Pool(workers, initializer=_init, initargs=args) as pool:
            for _i, err in tqdm(pool.imap_unordered(_prepare_one, range(len(ds.fields)), chunksize=4),
                                total=len(ds.fields), unit="field", desc="prepare"):
                if err:
                    failures.append(err)
    else:
        _init(*args)
        for i in tqdm(range(len(ds.fields)), unit="field", desc="prepare"):
            _i, err = _prepare_one(i)
            if err:
                failures.append(err)
    for err in failures:
        log.warning("not prepared: %s", err)
    atomic_write_json(out_p / MANIFEST, {"views": views_for(cfg), "settings": settings_of(cfg),
                                          "root": cfg.root, "fields": len(ds.fields) - len(failures),
                                          "failed": failures[:1000], "n_failed": len(failures)})
    return (f"prepared {len(ds.fields) - len(failures)} of {len(ds.fields)} fields into {out_p} (views "
            f"{', '.join(views_for(cfg))})" + (f"; {len(failures)} failed, e.g. {failures[0]}" if failures else ""))
