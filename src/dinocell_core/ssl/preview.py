"""A picture of what the SSL model sees: global crops with their iBOT masks tinted, then the local crops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

MASK_TINT = np.array([255, 60, 40], dtype=np.float32)  # RGB


def _to_rgb(img: np.ndarray, size: int) -> np.ndarray:
    gray = np.clip(img, 0.0, 1.0)
    if gray.shape[0] != size:
        gray = cv2.resize(gray, (size, size), interpolation=cv2.INTER_NEAREST)
    return np.repeat((gray * 255.0)[..., None], 3, axis=2)


def render_preview(batches: Sequence[dict[str, Any]], max_rows: int = 8, pad: int = 4) -> np.ndarray:
    """uint8 RGB grid: one row per sample; columns = global crops (masked patches tinted red), then locals
    (drawn at their own size, top-aligned)."""
    rows: list[np.ndarray] = []
    for batch in batches:
        glob = batch["global"].numpy().mean(axis=2)  # a stack of planes is shown as their mean
        loc = batch["local"].numpy().mean(axis=2)
        masks = batch["masks"].numpy()
        g, b, hg, _ = glob.shape
        for i in range(b):
            if len(rows) >= max_rows:
                break
            tiles = []
            for j in range(g):
                tile = _to_rgb(glob[j, i], hg)
                m = masks[j, i]
                if m.any():
                    up = cv2.resize(m.astype(np.uint8), (hg, hg), interpolation=cv2.INTER_NEAREST).astype(bool)
                    tile[up] = 0.55 * tile[up] + 0.45 * MASK_TINT
                tiles.append(tile)
            for j in range(loc.shape[0]):
                t = _to_rgb(loc[j, i], loc.shape[-1])
                canvas = np.full((hg, t.shape[1], 3), 40.0, np.float32)
                canvas[: t.shape[0]] = t
                tiles.append(canvas)
            sep = np.full((hg, pad, 3), 255.0, np.float32)
            row = np.concatenate([x for t in tiles for x in (t, sep)][:-1], axis=1)
            rows.append(row)
    if not rows:
        raise ValueError("no samples to preview")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, pad), (0, width - r.shape[1]), (0, 0)), constant_values=255.0) for r in rows]
    return np.concatenate(rows, axis=0).astype(np.uint8)


def write_png(path: str, rgb: np.ndarray) -> None:
    from dinocell_core.io.fsutil import atomic_write_bytes

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())
