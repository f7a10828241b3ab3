"""The JUMP browser's work: read a field's channels, read its labels from a labels store, save corrected labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dinocell_core.jump.channels import ALL_CHANNELS, FLUORESCENT
from dinocell_core.jump.index import Field
from dinocell_core.labels.store import LabelRow, LabelStore, field_key
from napari_dinocell.jobs.imports import warm_first_labels_layer

if TYPE_CHECKING:
    from napari.layers import Labels

#: the browser's two labels layers, in the order they are drawn (the last on top)
LABEL_LAYERS = ("Nuclei", "Cells")


@dataclass
class FieldLabels:
    """A field's preferred masks from a labels store, as Labels layers built here (not on the GUI thread)."""

    field: Field
    source: str  # "auto" / "corrected"; "none" when the store has none (the layers are then empty)
    layers: dict[str, Labels]  # LABEL_LAYERS name → layer


def read_field_job(root: str, field: Field, fluor_mean: bool) -> tuple[Field, np.ndarray, np.ndarray | None]:
    """Read all 8 channels of a field (and the mean of the normalised fluorescent channels if asked)."""
    from dinocell_core.jump.preprocess import Preprocessor, read_field

    stack = read_field(root, field, ALL_CHANNELS)
    mean = None
    if fluor_mean:
        prep = Preprocessor()
        mean = prep.fluorescent_mean([prep.channel(stack[ALL_CHANNELS.index(c)]) for c in FLUORESCENT])
    return field, stack, mean


def read_labels_job(store_root: str, field: Field, shape: tuple[int, int]) -> FieldLabels:
    """The field's preferred masks from the store (empty ``shape`` masks, source "none", when it has none), as
    Labels layers: napari's Labels constructor scans the whole array, which is done here, off the GUI thread, with
    napari's one-time work for a session's first Labels layer."""
    from napari.layers import Labels

    warm_first_labels_layer()
    store = LabelStore.open(store_root)
    row = store.best(field_key(field))
    if row is None:
        masks = (np.zeros(shape, np.int32), np.zeros(shape, np.int32))
    else:
        masks = store.read_pair(row)
    layers = {name: Labels(data, name=name, opacity=0.4) for name, data in zip(LABEL_LAYERS, masks)}
    return FieldLabels(field, "none" if row is None else row.source, layers)


def save_corrections_job(store_root: str, field: Field, nuclei: np.ndarray, cells: np.ndarray) -> LabelRow:
    """Write edited masks as the field's corrected labels (the automatic ones are kept)."""
    return LabelStore.open(store_root).write_field(field, nuclei, cells, "corrected")
