"""Writing a ``jump prepare`` store (format and reader: :mod:`dinocell_core.ssl.prepared_store`).

Decoding 5 LZW TIFFs (~60–75 ms per 1080² field on one core) is the floor of the raw loader; a prepared field is
one uncompressed read of ~2.3 MB per view.
"""

from __future__ import annotations

import logging
import os
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from dinocell_core.io.fsutil import atomic_path, atomic_write_json
from dinocell_core.io.tiffio import BadImageError
from dinocell_core.ssl.config import DataConfig
from dinocell_core.ssl.data import SSLFieldDataset, load_ssl_fields
from dinocell_core.ssl.prepared_store import (
    MANIFEST,
    field_file,
    settings_of,
    views_for,
)

log = logging.getLogger(__name__)

_WORKER: dict[str, Any] = {}


def _init(ds: SSLFieldDataset, out: str) -> None:
    """A worker gets the dataset itself: its field table and, with plate normalisation, the levels computed once."""
    _WORKER.update(ds=ds, out=out, views=views_for(ds.cfg))


def _prepare_one(i: int) -> tuple[int, str | None]:
    ds = _WORKER["ds"]
    field = ds.fields[i]
    target = field_file(_WORKER["out"], field)
    if target.is_file():
        return i, None
    try:
        stack = np.stack([ds.view(field, int(v)) for v in _WORKER["views"]])
    except BadImageError as exc:
        return i, f"{exc.path}: {exc.reason}"
    u16 = (np.clip(stack, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.save(fh, u16)
    return i, None


def prepare_fields(cfg: DataConfig, out: str | os.PathLike[str], workers: int = 1) -> str:
    """Prepare every indexed field of ``cfg`` into ``out`` (resumable: finished fields are skipped)."""
    from tqdm import tqdm

    if cfg.prepared:
        raise ValueError("data.prepared must be unset when preparing (the store is built from the raw images)")
    # patch size 1: preparing views does not depend on the model's patch grid.
    ds = SSLFieldDataset(cfg, 1, 0, fields=load_ssl_fields(cfg, cfg.storage()))
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    args = (ds, str(out_p))
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
