"""Reader: a CPJUMP1 field (any of its channel TIFFs, or several of them), a CPJUMP1 root or plate folder (opens
the JUMP browser on it), a label TIFF (as a Labels layer) or a plain TIFF.

A CPJUMP1 channel file opens the whole field: the sibling files of the same well, site and timepoint (names
parsed with :data:`dinocell_core.jump.index.FILE_RE`) become the named channel layers (Mito … Brightfield) with Cell
Painting colours. napari reads a multi-file selection one file at a time, so a field already open in the viewer
is not opened again: selecting a field's 8 files gives one field, not 8 × 8 layers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from dinocell_core.io.tiffio import read_tiff
from dinocell_core.jump.index import FILE_RE, parse_file_name
from napari_dinocell.layer_meta import CHANNEL, FIELD, SOURCE_PATH
from napari_dinocell.layers import channel_layer_kwargs, contrast_limits

LayerData = tuple[Any, ...]
#: napari's "read, nothing to add" answer
NOTHING = [(None,)]
#: file stems of label images: the CLI's <name>_labels.tiff, ground truth r01c01f01_{nuclei,cells}.tiff, Cellpose
#: *_masks / *_cp_masks, *_mask, *_seg
LABEL_STEM = re.compile(r"(?:^|[_\-. ])(labels?|masks?|cp_masks|nuclei|cells|seg)$", re.IGNORECASE)
#: how deep below a dropped folder to look for CPJUMP1 ``Images`` folders
SEARCH_DEPTH = 5


def _field_id(name: str) -> tuple[tuple[int, ...], int] | None:
    """(row, col, site, plane, sk) and the channel number of a CPJUMP1 file name, or None."""
    parts = parse_file_name(name)
    return None if parts is None else (parts.field, parts.channel)


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


def _field_files_here(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if FILE_RE.match(p.name)) if folder.is_dir() else []


def is_jump_tree(folder: Path) -> bool:
    """A CPJUMP1 root or plate folder: field files in an ``Images`` folder somewhere below (not directly in it)."""
    level = [folder]
    for _ in range(SEARCH_DEPTH):
        nxt = []
        for d in level:
            try:
                with os.scandir(d) as it:
                    subdirs = [Path(e.path) for e in it
                               if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
            except OSError:
                continue
            for sub in subdirs:
                if sub.name == "Images" and any(FILE_RE.match(n) for n in os.listdir(sub)):
                    return True
            nxt += subdirs
        level = nxt
    return False


def is_label_file(path: Path) -> bool:
    return bool(LABEL_STEM.search(path.name.split(".")[0]))


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    if isinstance(path, list):
        if not path:
            return None
        ids = {_field_id(Path(p).name)[0] if _field_id(Path(p).name) else None for p in path}
        parents = {Path(p).parent for p in path}
        if len(ids) == 1 and None not in ids and len(parents) == 1:
            return read_path  # one field's channel files (napari's stack mode): one field
        return napari_get_reader(path[0]) if len(path) == 1 else None
    p = Path(path)
    if p.is_dir():
        if _field_files_here(p):
            return read_field_folder
        return open_in_browser if is_jump_tree(p) else None
    if p.suffix.lower() in (".tif", ".tiff"):
        return read_path
    return None


def open_in_browser(path: str | list[str]) -> list[LayerData]:
    """A CPJUMP1 root or plate folder: index it in the JUMP browser (a dock of the current viewer)."""
    import napari

    folder = str(path[0] if isinstance(path, list) else path)
    viewer = napari.current_viewer()
    if viewer is None:
        raise RuntimeError(f"{folder} is a CPJUMP1 folder: open it in the JUMP browser of a napari viewer")
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    widget.load_root(folder)
    return NOTHING


def read_field_folder(path: str | list[str]) -> list[LayerData]:
    """An ``Images`` folder: its first field."""
    folder = Path(path[0] if isinstance(path, list) else path)
    files = _field_files_here(folder)
    if not files:
        raise FileNotFoundError(f"{folder} holds no CPJUMP1 field files (r01c01f01p01-ch1sk1fk1fl1.tiff …)")
    return read_path(str(files[0]))


def _already_open(field_key: str, channels: set[int]) -> bool:
    """True if the current viewer shows every channel of this field, as opened by this reader."""
    try:
        import napari

        viewer = napari.current_viewer()
    except ImportError:
        return False
    if viewer is None:
        return False
    shown = {layer.metadata.get(CHANNEL) for layer in viewer.layers if layer.metadata.get(FIELD) == field_key}
    return channels <= shown


def read_path(path: str | list[str]) -> list[LayerData]:
    p = Path(path[0] if isinstance(path, list) else path)
    files = field_files(p)
    if files:
        field_name = p.name.split("-ch")[0]
        key = str(p.parent / field_name)
        if _already_open(key, set(files)):
            return NOTHING  # another file of a field opened a moment ago (a multi-file selection)
        meta = {FIELD: key, SOURCE_PATH: str(p.parent)}
        layers: list[LayerData] = []
        for ch in sorted(files):
            img = read_tiff(files[ch])
            layers.append((img, channel_layer_kwargs(ch, img, meta), "image"))
        return layers
    img = tifffile.imread(p)  # plain TIFFs may be stacks; CPJUMP1 channel files are always 2-D
    meta = {SOURCE_PATH: str(p)}
    if is_label_file(p) and np.issubdtype(img.dtype, np.integer) and img.ndim in (2, 3):
        return [(img, {"name": p.stem, "metadata": meta}, "labels")]
    kwargs: dict[str, Any] = {"name": p.stem, "metadata": meta}
    if img.ndim == 3 and img.shape[0] <= 8 and img.shape[-1] > 8:
        kwargs["channel_axis"] = 0
        kwargs["name"] = [f"{p.stem} [{i}]" for i in range(img.shape[0])]
    else:
        kwargs["contrast_limits"] = contrast_limits(img)
    return [(img, kwargs, "image")]
