"""Reader: a CPJUMP1 field (any of its channel TIFFs, or an ``Images/`` / plate folder) or a plain TIFF.

A CPJUMP1 channel file opens the whole field: the sibling files of the same well, site, plane and timepoint become
the named channel layers (Mito … Brightfield) with Cell Painting colours. A folder opens its first field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dinocell_core.tiffio import read_tiff
from napari_dinocell.layers import channel_layer_kwargs, contrast_limits

LayerData = tuple[np.ndarray, dict[str, Any], str]
#: CPJUMP1 file name: r{RR}c{CC}f{FF}p{PP}-ch{N}sk{K}fk{F}fl{L}.tiff
FIELD_FILE = re.compile(r"^(r\d{2}c\d{2}f\d{2}p\d{2})-ch(\d+)(sk\d+fk\d+fl\d+)\.tiff?$", re.IGNORECASE)


def _field_files(path: Path) -> dict[int, Path]:
    """Channel number → file for the field that ``path`` (one channel file) belongs to."""
    m = FIELD_FILE.match(path.name)
    if m is None:
        return {}
    prefix, _, suffix = m.groups()
    files = {}
    for sibling in path.parent.iterdir():
        s = FIELD_FILE.match(sibling.name)
        if s is not None and s.group(1) == prefix and s.group(3) == suffix:
            files[int(s.group(2))] = sibling
    return files


def _first_field_file(folder: Path) -> Path | None:
    images = folder / "Images" if (folder / "Images").is_dir() else folder
    candidates = sorted(p for p in images.iterdir() if FIELD_FILE.match(p.name))
    return candidates[0] if candidates else None


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    if isinstance(path, list):
        return None if not path else napari_get_reader(path[0]) if len(path) == 1 else None
    p = Path(path)
    if p.is_dir():
        return read_field_folder if _first_field_file(p) is not None else None
    if p.suffix.lower() in (".tif", ".tiff"):
        return read_path
    return None


def read_field_folder(path: str) -> list[LayerData]:
    first = _first_field_file(Path(path))
    if first is None:
        raise FileNotFoundError(f"{path} holds no CPJUMP1 field files (r01c01f01p01-ch1sk1fk1fl1.tiff …)")
    return read_path(str(first))


def read_path(path: str | list[str]) -> list[LayerData]:
    p = Path(path[0] if isinstance(path, list) else path)
    files = _field_files(p)
    if files:
        name = FIELD_FILE.match(p.name).group(1)  # type: ignore[union-attr]
        meta = {"dinocell_field": str(p.parent / name), "source_path": str(p.parent)}
        layers = []
        for ch in sorted(files):
            img = read_tiff(files[ch])
            layers.append((img, channel_layer_kwargs(ch, img, meta), "image"))
        return layers
    img = read_tiff(p)
    kwargs: dict[str, Any] = {"name": p.stem, "metadata": {"source_path": str(p)}}
    if img.ndim == 3 and img.shape[0] <= 8 and img.shape[-1] > 8:
        kwargs["channel_axis"] = 0
        kwargs["name"] = [f"{p.stem} [{i}]" for i in range(img.shape[0])]
    else:
        kwargs["contrast_limits"] = contrast_limits(img)
    return [(img, kwargs, "image")]
