"""Checks a training form runs before Launch: what would otherwise fail in the job's first minute, or train on
nothing, and be seen only later in the Runs widget (no Qt, no torch: the forms stay light).

Each check returns a list of messages naming the key and the path; an empty list means fine. Remote paths
(``s3://`` and other URLs) are left to the job.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")
#: folder entries looked at before giving up on finding an image (a big tree is assumed to hold some)
SCAN_LIMIT = 20_000


def _local(path: str | None) -> Path | None:
    if not path or "://" in str(path):
        return None
    return Path(str(path)).expanduser()


def missing_paths(paths: Sequence[tuple[str, str | None]]) -> list[str]:
    """A message for each labelled local path that does not exist (URLs and empty values are left alone)."""
    out = []
    for label, path in paths:
        p = _local(path)
        if p is not None and not p.exists():
            out.append(f"{label} {p.resolve()} does not exist")
    return out


def check_weights(label: str, path: str | None) -> list[str]:
    """An existing weights path must be a non-empty file, or a folder (run / checkpoints) holding weight files."""
    p = _local(path)
    if p is None or not p.exists():
        return []
    if p.is_file():
        return [f"{label} {p} is empty (0 bytes)"] if p.stat().st_size == 0 else []
    found = _find(p, WEIGHT_SUFFIXES)
    return [] if found is not False else [f"{label} {p} is a folder without any checkpoint or weights file "
                                          f"({', '.join(WEIGHT_SUFFIXES)})"]


def check_has_images(label: str, path: str | None) -> list[str]:
    """A local data folder must hold at least one image file (anywhere below it)."""
    p = _local(path)
    if p is None or not p.is_dir():
        return []
    if _find(p, IMAGE_SUFFIXES) is False:
        return [f"{label} {p} holds no images ({', '.join(IMAGE_SUFFIXES)} files)"]
    return []


def _find(root: Path, suffixes: tuple[str, ...]) -> bool | None:
    """True if a file with one of ``suffixes`` is below ``root``; False if none is; None if the scan limit was
    reached first (undecided: not reported)."""
    seen = 0
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    seen += 1
                    if seen > SCAN_LIMIT:
                        return None
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.name.lower().endswith(suffixes):
                        return True
        except OSError:
            continue
    return False
