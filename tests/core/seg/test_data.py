"""Dataset readers (Cellpose pairs, images/+masks/, LIVECell COCO, JUMP fixture) and training-tile augmentation."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile

from dinocell_core.io.images import ImageError, prepare_image, select_channel
from dinocell_core.seg.config import SegAugmentConfig, SegDataConfig
from dinocell_core.seg.data import (
    SegDataError,
    SegSample,
    detect_format,
    load_samples,
    prepare_samples,
    random_tile,
    split_samples,
    tile_batch,
)
from dinocell_core.synthetic.fixture import make_jump_fixture


def blobs(shape=(48, 64), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    lab[5:15, 5:20] = 1
    lab[25:40, 30:50] = 2
    img = (rng.normal(100, 5, shape) + 800 * (lab > 0)).astype(np.uint16)
    return img, lab


def test_cellpose_pairs_rgb_channel_choice(tmp_path) -> None:
    img, lab = blobs()
    img8 = (img // 4).astype(np.uint8)
    rgb = np.stack([np.zeros_like(img8), img8, img8 // 2], -1)  # red empty, green = cytoplasm
    cv2.imwrite(str(tmp_path / "000_img.png"), rgb[..., ::-1])  # OpenCV writes BGR
    cv2.imwrite(str(tmp_path / "000_masks.png"), lab.astype(np.uint16))
    assert detect_format(tmp_path) == "pairs"
    with pytest.raises(ImageError, match="choose one with"):
        load_samples(SegDataConfig(format="pairs", path=str(tmp_path)))
    (s,) = load_samples(SegDataConfig(format="pairs", path=str(tmp_path), channel=1))
    assert s.name == "000" and s.image.dtype == np.float32 and s.labels.dtype == np.int32
    np.testing.assert_array_equal(s.labels, lab)
    assert s.image[lab > 0].mean() > 0.9 and s.image[lab == 0].mean() < 0.2


def test_pairs_missing_mask_is_named(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "a_img.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(SegDataError, match="a_img.tif: no matching mask"):
        load_samples(SegDataConfig(format="pairs", path=str(tmp_path)))


def test_images_masks_folders_matched_by_name(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        img, lab = blobs(seed=i)
        tifffile.imwrite(tmp_path / "images" / f"f{i}.tif", img)
        tifffile.imwrite(tmp_path / "masks" / f"f{i}_masks.tif", lab.astype(np.uint16))
    assert detect_format(tmp_path) == "folders"
    samples = load_samples(SegDataConfig(format="folders", path=str(tmp_path)))
    assert [s.name for s in samples] == ["f0", "f1", "f2"]
    train, val = split_samples(samples, 0.34, seed=0)
    assert len(train) == 2 and len(val) == 1 and {s.name for s in train + val} == {"f0", "f1", "f2"}


def test_livecell_coco_with_annotations_as_dict(tmp_path) -> None:
    img = np.full((40, 50), 50, np.uint8)
    img[5:15, 5:25] = 200
    tifffile.imwrite(tmp_path / "A172_Phase_C7_1_00d00h00m_1.tif", img)
    poly_a = [5, 5, 24, 5, 24, 14, 5, 14]  # x, y pairs: a 20×10 box
    poly_b = [30, 20, 45, 20, 45, 35]  # a triangle
    coco = {"images": [{"id": 7, "file_name": "A172_Phase_C7_1_00d00h00m_1.tif", "width": 50, "height": 40}],
            "annotations": {"1": {"id": 1, "image_id": 7, "segmentation": [poly_a], "iscrowd": 0},
                            "2": {"id": 2, "image_id": 7, "segmentation": [poly_b], "iscrowd": 0}}}
    path = tmp_path / "livecell_coco_test.json"
    path.write_text(json.dumps(coco))
    assert detect_format(path) == "livecell"
    (s,) = load_samples(SegDataConfig(format="livecell", path=str(path), images_dir=str(tmp_path)))
    assert s.labels.max() == 2 and 170 <= (s.labels == 1).sum() <= 200  # pycocotools' polygon rasteriser
    assert s.labels[25, 40] == 2 and s.labels[0, 0] == 0


def test_jump_fixture_dna_gives_nuclei_other_channels_cells(tmp_path) -> None:
    info = make_jump_fixture(tmp_path, plates=1, wells=2, sites=1, size=96, seed=0)
    assert detect_format(info.root) == "jump"
    dna = load_samples(SegDataConfig(format="jump", path=str(info.root), channel="DNA"))
    mito = load_samples(SegDataConfig(format="jump", path=str(info.root), channel="Mito"))
    bf = load_samples(SegDataConfig(format="jump", path=str(info.root), channel="brightfield"))
    assert len(dna) == len(mito) == len(bf) == 2
    for n, c in zip(dna, mito):
        assert n.labels.max() > 0 and n.image.shape == (96, 96)
        assert (n.labels > 0).sum() < (c.labels > 0).sum()  # nuclei are smaller than cells
    np.testing.assert_array_equal(mito[0].labels, bf[0].labels)
    with pytest.raises(ValueError, match="needs channel"):
        SegDataConfig(format="jump", path=str(info.root))


def test_select_channel_and_prepare() -> None:
    gray = np.arange(320, dtype=np.uint16).reshape(16, 20)
    rgb_same = np.stack([gray] * 3, -1)
    np.testing.assert_array_equal(select_channel(rgb_same), gray)
    chw = np.stack([gray, gray * 2, gray * 3])
    np.testing.assert_array_equal(select_channel(chw[:, :, :], 2), gray * 3)
    with pytest.raises(ImageError, match="out of range"):
        select_channel(chw, 5)
    out = prepare_image(gray, low=0, high=100)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1


def test_random_tiles_keep_image_and_target_aligned() -> None:
    _, lab = blobs((80, 90))
    img = (lab > 0).astype(np.float32)
    (prep,) = prepare_samples([SegSample("blobs", img, lab)])
    aug = SegAugmentConfig(intensity=0.0, gamma=(1.0, 1.0), scale=(0.8, 1.25))
    rng = np.random.default_rng(0)
    for _ in range(20):
        im, tg, _ = random_tile(prep, 32, rng, aug)
        assert im.shape == tg.shape == (32, 32) and tg.min() >= 0 and tg.max() <= 1
        # the warped image and target agree on what is cell, up to the resampled border
        assert np.mean((im > 0.5) == (tg > 0.05)) > 0.93
    x, y, w = tile_batch([prep], 5, 24, rng, SegAugmentConfig(invert_p=1.0))
    assert x.shape == y.shape == (5, 1, 24, 24) and x.dtype == np.float32


def test_small_image_is_padded_to_the_tile() -> None:
    _, lab = blobs((20, 20))
    (prep,) = prepare_samples([SegSample("small", (lab > 0).astype(np.float32), lab)])
    im, tg, _ = random_tile(prep, 32, np.random.default_rng(1), SegAugmentConfig(scale=(1.0, 1.0)))
    assert im.shape == (32, 32)


def test_uint32_and_uint64_label_files_keep_every_cell(tmp_path) -> None:
    """Label TIFFs with ids ≥ 2³¹ (uint32) and ≥ 2⁴⁰ (uint64): every cell survives (an int32 cast wrapped them
    negative and they vanished from the targets)."""
    img, lab = blobs()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    big32 = np.where(lab > 0, lab.astype(np.uint32) + np.uint32(2**31 + 5), 0).astype(np.uint32)
    big64 = np.where(lab > 0, lab.astype(np.uint64) * np.uint64(2**40), 0).astype(np.uint64)
    for name, mask in (("u32", big32), ("u64", big64)):
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", img)
        tifffile.imwrite(tmp_path / "masks" / f"{name}.tif", mask)
        assert tifffile.imread(tmp_path / "masks" / f"{name}.tif").dtype == mask.dtype
    samples = load_samples(SegDataConfig(format="folders", path=str(tmp_path)))
    for s in samples:
        assert s.labels.dtype == np.int32 and s.labels.min() == 0
        np.testing.assert_array_equal(s.labels, lab)  # same cells, ids renumbered in order
        (prep,) = prepare_samples([s])
        assert all(prep.target[lab == i].max() == 1.0 for i in (1, 2))
