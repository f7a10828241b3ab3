"""The JUMP browser's work: read a field's channels, read its labels from a labels store, save corrected labels."""

from __future__ import annotations

import numpy as np

from dinocell_core.jump.channels import ALL_CHANNELS, FLUORESCENT
from dinocell_core.jump.index import Field
from dinocell_core.jump.preprocess import Preprocessor, read_field
from dinocell_core.labels.store import LabelRow, LabelStore, field_key


def read_field_job(root: str, field: Field, fluor_mean: bool) -> tuple[Field, np.ndarray, np.ndarray | None]:
    """Read all 8 channels of a field (and the mean of the normalised fluorescent channels if asked)."""
    stack = read_field(root, field, ALL_CHANNELS)
    mean = None
    if fluor_mean:
        prep = Preprocessor()
        mean = prep.fluorescent_mean([prep.channel(stack[ALL_CHANNELS.index(c)]) for c in FLUORESCENT])
    return field, stack, mean


def read_labels_job(store_root: str, field: Field) -> tuple[Field, np.ndarray | None, np.ndarray | None, str]:
    """The field's preferred masks from the store (None, None, "none" when it has no labels)."""
    store = LabelStore.open(store_root)
    row = store.best(field_key(field))
    if row is None:
        return field, None, None, "none"
    nuclei, cells = store.read_pair(row)
    return field, nuclei, cells, row.source


def save_corrections_job(store_root: str, field: Field, nuclei: np.ndarray, cells: np.ndarray) -> LabelRow:
    """Write edited masks as the field's corrected labels (the automatic ones are kept)."""
    return LabelStore.open(store_root).write_field(field, nuclei, cells, "corrected")
