"""Per-cell crops from a labels store: the single-cell unit of ``profile embed --units cells``.

Each object of a field's mask (nuclei by default, or cells; the store keeps the same id for a cell and its nucleus)
gives one fixed-size square crop centred on the object's centroid, as DeepProfiler does for CPJUMP1 (96-px boxes
centred on the CellProfiler nuclei, ``mask_objects false``: neighbours stay in the crop). A crop that would leave the
field is handled by ``border``:

- ``pad`` (default): the part outside the field is 0, the normalised background level, and the cell stays centred;
  every object of the mask is one unit.
- ``shift``: the box is moved inside the field (the cell is off-centre); every object is one unit.
- ``skip``: the object is left out (as CellProfiler's border filter would).

The labels row of a field is the store's preferred one (corrected > imported > auto). Fields without labels are
not embedded: :meth:`CellSource.split` returns them so the caller reports them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np

from dinocell_core.jump.index import Field
from dinocell_core.labels.store import LABELS_CSV, LabelRow, LabelStore, field_key
from dinocell_core.profiling.settings import BORDERS, CENTRES
from dinocell_core.profiling.table import ProfileError


def object_centres(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, [n, 2] centroid y, x) of every object of a label image, ids ascending."""
    ys, xs = np.nonzero(mask)
    lab = mask[ys, xs].astype(np.int64)
    if not len(lab):
        return np.zeros(0, np.int64), np.zeros((0, 2), np.float64)
    area = np.bincount(lab)
    ids = np.flatnonzero(area)
    cy = np.bincount(lab, weights=ys)[ids] / area[ids]
    cx = np.bincount(lab, weights=xs)[ids] / area[ids]
    return ids, np.stack([cy, cx], axis=1)


def crop_origins(centres: np.ndarray, shape: tuple[int, int], size: int, border: str) -> tuple[np.ndarray,
                                                                                                np.ndarray]:
    """Top-left corners ([n, 2] int) of ``size`` boxes centred on ``centres`` and the kept indices, by ``border``."""
    h, w = shape
    origin = np.floor(centres + 0.5).astype(np.int64) - size // 2
    keep = np.arange(len(origin))
    if border == "shift":
        if h < size or w < size:
            raise ProfileError(f"field {h}×{w} px is smaller than a {size}-px crop; use --border pad or a smaller "
                               "--crop")
        origin = np.stack([np.clip(origin[:, 0], 0, h - size), np.clip(origin[:, 1], 0, w - size)], axis=1)
    elif border == "skip":
        inside = ((origin >= 0).all(axis=1) & (origin[:, 0] + size <= h) & (origin[:, 1] + size <= w))
        keep, origin = keep[inside], origin[inside]
    elif border != "pad":
        raise ProfileError(f"border must be one of {BORDERS}, got {border!r}")
    return origin, keep


def crop_stack(image: np.ndarray, origins: np.ndarray, size: int) -> np.ndarray:
    """[n, size, size] float32 crops of ``image`` at ``origins``; pixels outside the image are 0."""
    pad = np.pad(image.astype(np.float32, copy=False), size)
    out = np.empty((len(origins), size, size), np.float32)
    for i, (y, x) in enumerate(origins):
        out[i] = pad[y + size:y + 2 * size, x + size:x + 2 * size]
    return out


class CellSource:
    """A labels store read for per-cell embedding: which fields have masks, and each field's crop corners."""

    def __init__(self, root: str | os.PathLike[str], centre: str = "nuclei", size: int = 96,
                 border: str = "pad") -> None:
        if centre not in CENTRES:
            raise ProfileError(f"cell centre must be one of {CENTRES}, got {centre!r}")
        if border not in BORDERS:
            raise ProfileError(f"border must be one of {BORDERS}, got {border!r}")
        self.store = LabelStore.open(root)
        self.centre, self.size, self.border = centre, size, border
        self._rows: dict[tuple[str, str, int], LabelRow] = {}

    def split(self, fields: Sequence[Field]) -> tuple[list[Field], list[Field]]:
        """(fields with labels, fields without); a store matching none of ``fields`` is a LabelsError."""
        pairs = self.store.match(fields)
        self._rows = {field_key(f): row for f, row in pairs}
        return ([f for f in fields if field_key(f) in self._rows],
                [f for f in fields if field_key(f) not in self._rows])

    def origins(self, field: Field, shape: tuple[int, int]) -> np.ndarray:
        """Crop corners of the field's objects (mask checked against the image ``shape``)."""
        row = self._rows.get(field_key(field)) or self.store.best(field_key(field))
        if row is None:
            raise ProfileError(f"{field.key}: no labels in {self.store.root}")
        mask = self.store.read(row, self.centre, shape)
        _, centres = object_centres(mask)
        origin, _ = crop_origins(centres, shape, self.size, self.border)
        return origin

    def identity(self) -> dict[str, object]:
        """What a resumed run must share: the store (and its labels.csv content) and the crop rule."""
        digest = hashlib.sha256((self.store.root / LABELS_CSV).read_bytes()).hexdigest()[:16]
        return {"labels": str(self.store.root.resolve()), "labels_csv": digest, "centre": self.centre,
                "crop": self.size, "border": self.border}
