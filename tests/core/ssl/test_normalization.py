"""Per-plate normalisation levels (``data.normalization: plate``): pooled from negcon wells, once per plate."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from dinocell_core.io.images import percentiles
from dinocell_core.jump.channels import FLUORESCENT
from dinocell_core.jump.index import load_index
from dinocell_core.jump.preprocess import read_field
from dinocell_core.ssl.config import DataConfig
from dinocell_core.ssl.data import SSLFieldDataset
from dinocell_core.ssl.normalization import STRIDE, plate_levels
from dinocell_core.synthetic.fixture import make_jump_fixture, well_treatment

PLAIN = {"flips": False, "rot90": False, "blur_p": (0.0, 0.0, 0.0), "noise_p": 0.0}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_jump_fixture(tmp_path_factory.mktemp("plates"), plates=2, wells=3, sites=2, size=96, seed=1).root


def _cfg(root, **kw) -> DataConfig:
    base = dict(root=str(root), global_size=48, local_size=24, n_local=2, num_workers=0, normalization="plate",
                plate_norm_fields=100)
    base.update(kw)
    return DataConfig(**base)


def _pooled(root, fields, ch):
    px = [read_field(root, f, [ch])[0][::STRIDE, ::STRIDE].ravel() for f in fields]
    return percentiles(np.concatenate(px), 1.0, 99.8)


def test_plate_levels_come_from_negcon_wells(root):
    """Each plate's levels are the percentiles of its negcon wells' pixels (the plate map's DMSO wells), the same
    for every field of the plate; crops are scaled with them, not with their field's own percentiles."""
    ds = SSLFieldDataset(_cfg(root), 8, 0)
    fields = load_index(root)
    negcon = {f"A{i + 1:02d}" for i in range(3) if well_treatment(i).control_type == "negcon"}
    assert negcon == {"A01", "A03"}
    assert sorted(ds.levels) == sorted({f.plate_folder for f in fields})
    for folder, levels in ds.levels.items():
        controls = [f for f in fields if f.plate_folder == folder and f.well in negcon]
        for ch in FLUORESCENT:
            np.testing.assert_allclose(levels[ch], _pooled(root, controls, ch), rtol=1e-6)
    field = fields[3]
    plane = ds.plane(field, 1)
    assert (plane.lo, plane.hi) == ds.levels[field.plate_folder][1] and not plane.per_field
    own = percentiles(read_field(root, field, [1])[0].astype(np.float32), 1.0, 99.8)
    assert (plane.lo, plane.hi) != pytest.approx(own)


def test_plate_levels_are_computed_once_per_plate(root):
    """One pass per plate, bounded by plate_norm_fields; workers get the levels with the dataset (no recompute)."""
    fields = load_index(root)
    reads = []

    def read(field, ch):
        reads.append((field.plate_folder, ch))
        return read_field(root, field, [ch])[0]

    levels = plate_levels(fields, [1, 5], read, 1.0, 99.8, n_fields=2, meta_dir=None)
    assert len(levels) == 2 and len(reads) == 2 * 2 * 2  # plates × fields × channels
    ds = SSLFieldDataset(_cfg(root, plate_norm_fields=2), 8, 0)
    assert pickle.loads(pickle.dumps(ds)).levels == ds.levels


def test_without_a_plate_map_levels_come_from_all_wells(root, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(root, bare)
    shutil.rmtree(next(bare.rglob("workspace")) / "metadata")
    ds = SSLFieldDataset(_cfg(bare), 8, 0)
    fields = load_index(bare)
    folder = fields[0].plate_folder
    np.testing.assert_allclose(ds.levels[folder][2], _pooled(bare, [f for f in fields if f.plate_folder == folder], 2),
                               rtol=1e-6)


def test_plate_levels_keep_a_jittered_gain(root):
    """Per-field levels cancel a gain applied to raw counts; plate levels keep it — the crop is twice as bright."""
    def crop(normalization, gain):
        cfg = _cfg(root, normalization=normalization, channel_mode="channel:1",
                   augment={**PLAIN, "intensity_p": 1.0, "gamma": (1.0, 1.0), "gain": (gain, gain), "offset": (0, 0)})
        return SSLFieldDataset(cfg, 8, 0)[(2, 2)]["global"][0]

    np.testing.assert_allclose(crop("field", 2.0), crop("field", 1.0), atol=1e-5)
    plain = crop("plate", 1.0)
    np.testing.assert_allclose(crop("plate", 2.0), np.clip(2.0 * plain, 0.0, 1.0), atol=1e-5)
    assert plain.max() > 0.2
