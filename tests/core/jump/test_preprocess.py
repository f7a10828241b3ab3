"""Normalisation, CellProfiler illumination correction, 16-bit CLAHE and the channel modes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dinocell_core.io.images import apply_clahe, normalize_percentile
from dinocell_core.io.tiffio import BadImageError, read_tiff, write_tiff
from dinocell_core.jump.channels import FLUORESCENT, ChannelMode
from dinocell_core.jump.index import load_index
from dinocell_core.jump.preprocess import Preprocessor, illumination_path, read_field
from dinocell_core.ssl.config import DataConfig
from dinocell_core.ssl.data import SSLFieldDataset, TooManyFailures
from dinocell_core.synthetic.fixture import make_jump_fixture


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_jump_fixture(tmp_path_factory.mktemp("pre"), plates=1, wells=2, sites=1, size=96, seed=4)


def test_normalize_percentile_maps_percentiles_and_handles_flat_images():
    rng = np.random.default_rng(0)
    img = rng.integers(200, 4000, (300, 300)).astype(np.uint16)
    out = normalize_percentile(img, 1.0, 99.0)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    lo, hi = np.percentile(img[::2, ::2], [1.0, 99.0])
    assert abs(float(np.mean(img <= lo)) - 0.01) < 0.005 and abs(float(np.mean(img >= hi)) - 0.01) < 0.005
    assert not normalize_percentile(np.full((50, 50), 700, np.uint16)).any()


def test_16bit_precision_survives_normalisation():
    # A faint structure spanning 40 counts on a 16-bit offset would be 0 levels in an 8-bit (high byte) read.
    img = (np.full((128, 128), 20000) + np.tile(np.arange(128) % 41, (128, 1))).astype(np.uint16)
    assert len(np.unique(img >> 8)) <= 2
    out = normalize_percentile(img, 0.0, 100.0)
    assert len(np.unique(out)) == 41


def test_clahe_works_on_16bit_data():
    ramp = np.linspace(0.40, 0.41, 256 * 256, dtype=np.float32).reshape(256, 256)
    out = apply_clahe(ramp)
    assert out.dtype == np.float32 and len(np.unique(out)) > 256  # an 8-bit CLAHE could give ≤ 256 levels
    assert out.max() - out.min() > ramp.max() - ramp.min()


def test_illumination_correction_cellprofiler_semantics(fx, tmp_path):
    field = load_index(fx.root)[0]
    rel = illumination_path(field, 5)
    assert rel.endswith(f"images/{field.batch}/illum/{field.plate}/{field.plate}_IllumDNA.npy")
    illum = np.load(fx.root / rel)
    raw = read_tiff(fx.root / field.paths[5])
    expected = np.clip((raw / 65535.0) / illum, 0, 1).astype(np.float32)
    pre = Preprocessor(low=0.0, high=100.0, illumination=True)
    inv = (1.0 / (illum * 65535.0)).astype(np.float32)
    got = pre.channel(raw, inv)
    np.testing.assert_allclose(got, normalize_percentile(expected, 0.0, 100.0), atol=1e-5)
    # Through the dataset: the corrected view differs from the uncorrected one and flattens the vignette.
    on = SSLFieldDataset(DataConfig(root=str(fx.root), illumination=True, channel_mode="channel:DNA"), 8, 0)
    off = SSLFieldDataset(DataConfig(root=str(fx.root), illumination=False, channel_mode="channel:DNA"), 8, 0)
    assert not np.allclose(on.view(field, 5), off.view(field, 5))


def test_missing_illumination_file_is_a_bad_image(fx, tmp_path):
    root = tmp_path / "no_illum"
    shutil.copytree(fx.root, root)
    for p in root.rglob("*_IllumDNA.npy"):
        p.unlink()
    ds = SSLFieldDataset(DataConfig(root=str(root), illumination=True, global_size=32, local_size=16,
                                    n_local=1, max_retries=2), 8, 0)
    with pytest.raises(TooManyFailures, match="illumination file not found"):
        ds[(0, 0)]


def test_channel_modes(fx, tmp_path):
    assert ChannelMode.parse("brightfield") == ChannelMode("channel", 8)  # OrigBrightfield, not LowZBF (ch7)
    assert ChannelMode.parse("channel:DNA") == ChannelMode("channel", 5)
    assert str(ChannelMode.parse("channel:3")) == "channel:3"
    assert ChannelMode.parse("multiview").kind == "multiview"
    with pytest.raises(ValueError):
        ChannelMode.parse("average")
    with pytest.raises(ValueError):
        DataConfig(root="x", channel_mode="rgb")

    root = tmp_path / "modes"
    shutil.copytree(fx.root, root)
    field = load_index(root)[0]
    stack = read_field(root, field)
    assert stack.shape == (8, 96, 96) and stack.dtype == np.uint16
    cfg = DataConfig(root=str(root), channel_mode="fluorescent_mean")
    ds = SSLFieldDataset(cfg, 8, 0)
    fmean = ds.view(field, "fluorescent_mean")
    manual = np.mean([normalize_percentile(stack[c - 1]) for c in FLUORESCENT], axis=0)
    np.testing.assert_allclose(fmean, manual, atol=1e-6)
    # Brightfield never enters the fluorescent mean: destroying ch6–8 changes nothing and costs no failure.
    for ch in (6, 7, 8):
        (root / field.paths[ch]).write_bytes(b"broken")
    ds2 = SSLFieldDataset(cfg, 8, 0)
    np.testing.assert_array_equal(ds2.view(field, "fluorescent_mean"), fmean)
    sample = ds2[(0, 0)]
    assert sample["failures"] == []
    # brightfield mode reads ch8 (intact copy: equals the normalised ch8; broken copy: fails naming ch8).
    intact = SSLFieldDataset(DataConfig(root=str(fx.root), channel_mode="brightfield"), 8, 0)
    np.testing.assert_array_equal(intact.view(field, 8), normalize_percentile(stack[7]))
    bf = SSLFieldDataset(DataConfig(root=str(root), channel_mode="brightfield"), 8, 0)
    with pytest.raises(BadImageError, match="ch8sk1fk1fl1.tiff"):
        bf.view(field, 8)


def test_multiview_views_come_from_one_field(fx):
    cfg = DataConfig(root=str(fx.root), channel_mode="multiview", multiview_channels=["DNA", "ch8"],
                     global_size=32, local_size=16, n_local=6)
    ds = SSLFieldDataset(cfg, 8, 0)
    seen = set()
    for i in range(6):
        s = ds[(i, i)]
        assert s["views"][0] == "fluorescent_mean"
        assert set(s["views"][1:]) <= {"5", "8"}
        seen.update(s["views"][1:])
    assert seen == {"5", "8"}


def test_write_tiff_round_trip_keeps_uint16(tmp_path):
    img = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 13
    write_tiff(tmp_path / "a.tiff", img)
    assert np.array_equal(read_tiff(tmp_path / "a.tiff", dtype=np.uint16), img)
