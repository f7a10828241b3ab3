"""The SSL stream: shapes, iBOT masks, determinism across workers, resume, sharding, crops per field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinocell_core.config import ConfigError, validate_config
from dinocell_core.ssl.augment import MaskingGenerator, ibot_masks
from dinocell_core.ssl.config import AugmentConfig, DataConfig
from dinocell_core.ssl.data import SSLStreamSampler, build_ssl_dataset, make_ssl_loader
from dinocell_core.synthetic.fixture import make_jump_fixture

PATCH = 8


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_jump_fixture(tmp_path_factory.mktemp("ssl"), plates=2, wells=3, sites=2, size=96, seed=5).root


def _cfg(root, **kw) -> DataConfig:
    base = dict(root=str(root), global_size=48, local_size=24, n_local=3, num_workers=0)
    base.update(kw)
    return DataConfig(**base)


def _stream(cfg, steps, **kw):
    return list(make_ssl_loader(cfg, PATCH, batch_size=4, seed=7, steps=steps, **kw))


def test_batch_layout_and_value_range(root):
    (batch,) = _stream(_cfg(root), 1)
    assert batch["global"].shape == (2, 4, 1, 48, 48) and batch["global"].dtype == torch.float32
    assert batch["local"].shape == (3, 4, 1, 24, 24)
    assert batch["masks"].shape == (2, 4, 6, 6) and batch["masks"].dtype == torch.bool
    assert batch["n_failed"] == 0 and batch["failures"] == []
    g = batch["global"]
    assert torch.isfinite(g).all()
    assert -0.5 < float(g.median()) < 0.6 and float(g.max()) < 2.5  # background ≈ 0, signal ≈ 1 (+ jitter)
    assert float(g.mean()) < 0.7


def test_defaults_follow_the_recipe():
    cfg = DataConfig(root="x")
    assert (cfg.global_size, cfg.local_size, cfg.n_local) == (224, 96, 8)
    assert tuple(cfg.global_scale) == (0.4, 1.0) and tuple(cfg.local_scale) == (0.05, 0.4)
    assert cfg.mask_probability == 0.5 and tuple(cfg.mask_ratio) == (0.1, 0.5)
    assert cfg.channel_mode == "fluorescent_mean" and cfg.augment.flips and cfg.augment.rot90
    with pytest.raises(ConfigError, match="colour_jitter: unknown key"):
        validate_config(DataConfig, {"root": "x", "colour_jitter": 0.4}, "data")
    with pytest.raises(ConfigError, match="augment.hue"):
        validate_config(DataConfig, {"root": "x", "augment": {"hue": 0.1}}, "data")


def test_identical_stream_for_any_worker_count_and_on_resume(root):
    cfg = _cfg(root, crops_per_field=2)
    ref = _stream(cfg, 5)
    with_workers = _stream(cfg, 5, num_workers=2)
    resumed = _stream(cfg, 2, start_step=3)
    for a, b in zip(ref, with_workers):
        assert a["sample_ids"] == b["sample_ids"] and a["fields"] == b["fields"]
        for key in ("global", "local", "masks"):
            assert torch.equal(a[key], b[key]), key
    for a, b in zip(ref[3:], resumed):
        assert a["sample_ids"] == b["sample_ids"]
        for key in ("global", "local", "masks"):
            assert torch.equal(a[key], b[key]), key
    other_seed = list(make_ssl_loader(cfg, PATCH, batch_size=4, seed=8, steps=1))[0]
    assert not torch.equal(other_seed["global"], ref[0]["global"])


def test_ranks_take_disjoint_fields_and_cover_the_index(root):
    cfg = _cfg(root)
    ds = build_ssl_dataset(cfg, PATCH, seed=0)
    n = len(ds)
    seen = {}
    for rank in (0, 1):
        sampler = SSLStreamSampler(batch_size=1, rank=rank, world_size=2, steps=n // 2)
        seen[rank] = [ds.field_for_slot(slot) for batch in sampler for _, slot in batch]
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0] + seen[1])) == 2 * (n // 2)  # one epoch split between the ranks, no repeats
    # Each epoch is a fresh permutation of all fields.
    epoch0 = [ds.field_for_slot(s) for s in range(n)]
    epoch1 = [ds.field_for_slot(s) for s in range(n, 2 * n)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n)) and epoch0 != epoch1


def test_crops_per_field_share_a_decoded_field(root):
    (batch,) = _stream(_cfg(root, crops_per_field=2), 1)
    f = batch["fields"]
    assert f[0] == f[1] and f[2] == f[3] and f[0] != f[2]
    assert not torch.equal(batch["global"][:, 0], batch["global"][:, 1])  # different crop sets


def test_mask_generator_is_block_wise_and_exact():
    gen = MaskingGenerator((28, 28), max_num_patches=int(0.5 * 784))
    rng = np.random.default_rng(0)
    for target in (0, 4, 80, 300, 392):
        m = gen(target, rng)
        assert m.shape == (28, 28) and int(m.sum()) == target
    # Blocks, not salt-and-pepper: most masked patches have a masked 4-neighbour.
    m = gen(200, rng)
    ys, xs = np.nonzero(m)
    pad = np.pad(m, 1)
    neigh = pad[ys, xs + 1] | pad[ys + 2, xs + 1] | pad[ys + 1, xs] | pad[ys + 1, xs + 2]
    assert neigh.mean() > 0.9


def test_ibot_masks_follow_the_official_collate():
    rng = np.random.default_rng(1)
    masks = ibot_masks(64, (28, 28), probability=0.5, ratio=(0.1, 0.5), rng=rng)
    counts = masks.reshape(64, -1).sum(1)
    assert (counts > 0).sum() == 32 and (counts == 0).sum() == 32
    ratios = np.sort(counts[counts > 0]) / 784
    assert ratios.min() >= 0.1 - 1 / 784 and ratios.max() <= 0.5
    # Linearly spread: one crop per sub-interval of [0.1, 0.5].
    edges = np.linspace(0.1, 0.5, 33)
    assert all(edges[i] - 1 / 784 <= ratios[i] <= edges[i + 1] for i in range(32))


def test_augment_config_rejects_bad_ranges():
    with pytest.raises(ValueError):
        AugmentConfig(gamma=(1.5, 0.5))
    with pytest.raises(ValueError):
        AugmentConfig(blur_p=(1.0, 0.1, 1.5))


def test_prepared_store_feeds_the_same_views(root, tmp_path):
    from dinocell_core.ssl.prepare import prepare_fields

    cfg = _cfg(root, channel_mode="multiview", multiview_channels=[5, 8])
    summary = prepare_fields(cfg, tmp_path / "prep", workers=1)
    assert "prepared 11 of 11" in summary
    raw = build_ssl_dataset(cfg, PATCH, 0)
    prep = build_ssl_dataset(cfg.model_copy(update={"prepared": str(tmp_path / "prep")}), PATCH, 0)
    field = raw.fields[0]
    for view in ("fluorescent_mean", 5, 8):
        np.testing.assert_allclose(prep.view(field, view), raw.view(field, view), atol=1.0 / 65535 + 1e-6)
    batch = list(make_ssl_loader(prep.cfg, PATCH, 4, seed=7, steps=1, dataset=prep))[0]
    assert batch["n_failed"] == 0
    with pytest.raises(ValueError, match="needs"):  # the store holds ch1–5 (for the mean) and ch8, not ch7
        build_ssl_dataset(_cfg(root, channel_mode="channel:7", prepared=str(tmp_path / "prep")), PATCH, 0)
    with pytest.raises(ValueError, match="made with"):
        build_ssl_dataset(cfg.model_copy(update={"prepared": str(tmp_path / "prep"), "clahe": True}), PATCH, 0)


def test_preview_cli_writes_a_png(root, tmp_path):
    import os
    import subprocess
    import sys

    import cv2

    cfg = tmp_path / "pretrain.yaml"
    cfg.write_text(f"model:\n  patch_size: 8\ndata:\n  root: {root}\n  global_size: 48\n  local_size: 24\n"
                   "  n_local: 2\n")
    out = tmp_path / "preview.png"
    env = {**os.environ, "PYTHONPATH": str(os.path.join(os.path.dirname(__file__), "..", "src"))}
    r = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "jump", "preview", str(cfg), "n_local=3",
                        "-o", str(out), "--batches", "1", "--batch-size", "3"], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] >= 3 * 48 and img.shape[1] >= 2 * 48 + 3 * 24
    red = (img[..., 2].astype(int) - img[..., 1].astype(int)) > 60
    assert red.any()  # iBOT masks are drawn on the global crops
    r = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "jump", "preview", str(cfg), "bogus_key=1",
                        "-o", str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "bogus_key" in r.stderr


def test_loader_fits_its_prefetch_to_dev_shm(root, monkeypatch, caplog):
    """workers × prefetch_factor batches wait in /dev/shm (a container's default is 64 MB): the loader lowers the
    prefetch with a warning, or refuses with the fix before any data is read."""
    from dinocell_core.ssl import data

    cfg = _cfg(root, num_workers=4, prefetch_factor=4)
    per = data.batch_nbytes(cfg, PATCH, 4) * data.SHM_MARGIN
    assert data.fit_prefetch(cfg, PATCH, 4, 4, None) == 4  # no /dev/shm: nothing to check
    assert data.fit_prefetch(cfg, PATCH, 4, 4, int(16 * per) + 1) == 4
    assert data.fit_prefetch(cfg, PATCH, 4, 0, 0) == 4  # no workers: no shared memory
    monkeypatch.setattr(data, "shm_free_bytes", lambda: int(9 * per))
    with caplog.at_level("WARNING"):
        loader = make_ssl_loader(cfg, PATCH, batch_size=4, seed=7, steps=1)
    assert loader.loader.prefetch_factor == 2 and "--shm-size" in caplog.text
    monkeypatch.setattr(data, "shm_free_bytes", lambda: int(3 * per))
    with pytest.raises(data.SharedMemoryTooSmall, match="--ipc=host"):
        make_ssl_loader(cfg.model_copy(update={"root": "/nonexistent"}), PATCH, batch_size=4, seed=7, steps=1)
    recipe = DataConfig(global_size=224, local_size=96, n_local=8)
    assert 33.4e6 < data.batch_nbytes(recipe, 8, 48) < 35e6  # crops + masks: a default 64 MB holds one such batch
