"""Reader: a CPJUMP1 field (any of its channel TIFFs, or an ``Images/`` / plate folder) or a plain TIFF.

A CPJUMP1 channel file opens the whole field: the sibling files of the same well, site and timepoint (names
parsed with :data:`dinocell_core.jump.index.FILE_RE`) become the named channel layers (Mito … Brightfield) with Cell
Painting colours. A folder opens its first field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from dinocell_core.io.tiffio import read_tiff
from dinocell_core.jump.index import FILE_RE
from napari_dinocell.layers import channel_layer_kwargs, contrast_limits

LayerData = tuple[np.ndarray, dict[str, Any], str]


def _field_id(name: str) -> tuple[tuple[str, ...], int] | None:
    """(row, col, site, plane, sk) and the channel number of a CPJUMP1 file name, or None."""
    m = FILE_RE.match(name)
    if m is None:
        return None
    r, c, f, p, ch, sk, _, _ = m.groups()
    return (r, c, f, p, sk), int(ch)


def field_files(path: Path) -> dict[int, Path]:
    """Channel number → file of the field that ``path`` (one of its channel files) belongs to."""
    own = _field_id(path.name)
    if own is None:
        return {}
    files = {}
    for sibling in path.parent.iterdir():
        other = _field_id(sibling.name)
        if other is not None and other[0] == own[0]:
            files[other[1]] = sibling
    return files


def _first_field_file(folder: Path) -> Path | None:
    images = folder / "Images" if (folder / "Images").is_dir() else folder
    candidates = sorted(p for p in images.iterdir() if FILE_RE.match(p.name))
    return candidates[0] if candidates else None


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    if isinstance(path, list):
        return napari_get_reader(path[0]) if len(path) == 1 else None
    p = Path(path)
    if p.is_dir():
        return read_field_folder if _first_field_file(p) is not None else None
    if p.suffix.lower() in (".tif", ".tiff"):
        return read_path
    return None


def read_field_folder(path: str | list[str]) -> list[LayerData]:
    folder = Path(path[0] if isinstance(path, list) else path)
    first = _first_field_file(folder)
    if first is None:
        raise FileNotFoundError(f"{folder} holds no CPJUMP1 field files (r01c01f01p01-ch1sk1fk1fl1.tiff …)")
    return read_path(str(first))


def read_path(path: str | list[str]) -> list[LayerData]:
    p = Path(path[0] if isinstance(path, list) else path)
    files = field_files(p)
    if files:
        field_name = p.name.split("-ch")[0]
        meta = {"dinocell_field": str(p.parent / field_name), "source_path": str(p.parent)}
        layers = []
        for ch in sorted(files):
            img = read_tiff(files[ch])
            layers.append((img, channel_layer_kwargs(ch, img, meta), "image"))
        return layers
    img = tifffile.imread(p)  # plain TIFFs may be stacks; CPJUMP1 channel files are always 2-D
    kwargs: dict[str, Any] = {"name": p.stem, "metadata": {"source_path": str(p)}}
    if img.ndim == 3 and img.shape[0] <= 8 and img.shape[-1] > 8:
        kwargs["channel_axis"] = 0
        kwargs["name"] = [f"{p.stem} [{i}]" for i in range(img.shape[0])]
    else:
        kwargs["contrast_limits"] = contrast_limits(img)
    return [(img, kwargs, "image")]
