"""Tiled inference: blending weights, tiled == untiled for a local network, bounded memory, Segmenter API."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from dinocell_core.backbones.loading import load_backbone
from dinocell_core.seg.decoder import DistanceDecoder
from dinocell_core.seg.inference import (
    Segmenter,
    blend_window,
    iter_tiled,
    run_tiled,
    tile_starts,
)
from tests.helpers.bundles import tiny_dna_bundle


def test_blend_window() -> None:
    w = blend_window(64, 16)
    assert w.shape == (64, 64) and w.min() >= 1e-3 * 1e-3 and w[32, 32] == 1.0
    np.testing.assert_allclose(w, w[::-1, ::-1])
    assert np.all(np.diff(w[32, :17]) > 0)


def test_tile_starts_cover_and_align_last_tile() -> None:
    assert tile_starts(100, 64, 32) == [0, 32, 36]
    assert tile_starts(64, 64, 32) == [0]


def conv_net(seed: int = 0) -> torch.nn.Module:
    """A local network (receptive field 7 px) with zero padding, like the decoder's convolutions."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv2d(4, 1, 3, padding=1), torch.nn.Sigmoid()).eval()


def test_tiled_equals_untiled_away_from_borders() -> None:
    net = conv_net()
    img = np.random.default_rng(0).random((150, 130), dtype=np.float32)

    @torch.no_grad()
    def predict(batch: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(batch)).numpy()

    whole = predict(img[None, None])[0, 0]
    tiled = run_tiled(predict, img, tile=48, overlap=12, batch_size=5)
    assert tiled.shape == img.shape
    inner = (slice(4, -4), slice(4, -4))  # the untiled result itself has zero-padding effects at the border
    np.testing.assert_allclose(tiled[inner], whole[inner], atol=2e-3)
    # a pointwise network is reproduced exactly everywhere
    exact = run_tiled(lambda b: b * 2.0, img, tile=48, overlap=12, batch_size=3)
    np.testing.assert_allclose(exact, img * 2.0, rtol=1e-6)


def test_progress_then_result_and_bounded_memory() -> None:
    img = np.zeros((1500, 1300), np.float32)
    items = list(iter_tiled(lambda b: b + 0.5, img, tile=256, overlap=32, batch_size=4, multiple=8))
    progress, result = items[:-1], items[-1]
    assert all(isinstance(p, tuple) for p in progress) and progress[-1][0] == progress[-1][1]
    assert [p[0] for p in progress] == sorted(p[0] for p in progress)
    np.testing.assert_allclose(result, 0.5)
    tracemalloc.start()
    run_tiled(lambda b: b, img, tile=256, overlap=32, batch_size=4, multiple=8)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # padded image + output + weight maps (~3 images) + one batch; never per-tile copies of the whole image
    assert peak < 4.5 * img.nbytes




@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return tiny_dna_bundle(tmp_path_factory.mktemp("b"), "t")


def test_decoder_output_size_equals_input_size() -> None:
    model = DistanceDecoder(load_backbone("vit_test", patch_size=8), width=32, stem_width=8).eval()
    for shape in ((64, 64), (128, 64), (70, 45)):
        with torch.no_grad():
            y = model(torch.rand(2, 1, *shape))
        assert y.shape == (2, 1, *shape) and float(y.min()) >= 0 and float(y.max()) <= 1


def test_segmenter_any_size_channels_and_rethreshold(bundle_path) -> None:
    seg = Segmenter(bundle_path, device="cpu", batch_size=3)
    rng = np.random.default_rng(0)
    for shape in ((100, 77), (30, 20)):
        img = rng.integers(0, 4000, shape).astype(np.uint16)
        items = list(seg.iter_distance(img))
        dist = items[-1]
        assert isinstance(dist, np.ndarray) and dist.shape == shape and dist.dtype == np.float32
        assert items[-2][0] == items[-2][1] == seg.n_tiles(shape)
    img = rng.integers(0, 4000, (90, 90)).astype(np.uint16)
    stack = np.stack([np.zeros_like(img), img, img // 3])
    np.testing.assert_allclose(Segmenter(bundle_path, channel=1).predict_distance(stack), seg.predict_distance(img),
                               atol=1e-5)
    with pytest.raises(ValueError, match="channel"):
        seg.predict_distance(stack)
    dist = seg.predict_distance(img)
    seg.release()
    lab = seg.labels(dist, peak_threshold=0.3, fill_threshold=0.1)  # cached map, no network
    assert lab.shape == img.shape and lab.dtype == np.int32
    with pytest.raises(RuntimeError, match="released"):
        seg.predict_distance(img)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        Segmenter(bundle_path, tile_size=60)


def test_segment_and_models_list_commands(bundle_path, tmp_path, capsys) -> None:
    import tifffile

    from dinocell_core.cli import main

    rng = np.random.default_rng(2)
    tifffile.imwrite(tmp_path / "a.tif", rng.integers(0, 4000, (70, 90)).astype(np.uint16))
    tifffile.imwrite(tmp_path / "rgb.tif", rng.integers(0, 255, (60, 50, 3)).astype(np.uint8))
    out = tmp_path / "out"
    assert main(["segment", str(bundle_path), str(tmp_path / "a.tif"), "-o", str(out), "--save-distance",
                 "--device", "cpu", "--peak", "0.5", "--fill", "0.2"]) == 0
    labels = tifffile.imread(out / "a_labels.tiff")
    dist = tifffile.imread(out / "a_distance.tiff")
    assert labels.shape == dist.shape == (70, 90) and dist.dtype == np.float32
    # several inputs: post-processing of one overlaps the network pass of the next; results are the same
    tifffile.imwrite(tmp_path / "b.tif", rng.integers(0, 4000, (64, 64)).astype(np.uint16))
    many = tmp_path / "many"
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 truncated")
    assert main(["segment", str(bundle_path), str(tmp_path / "a.tif"), str(tmp_path / "broken.tif"),
                 str(tmp_path / "b.tif"), "-o", str(many), "--device", "cpu", "--peak", "0.5", "--fill", "0.2"]) == 1
    np.testing.assert_array_equal(tifffile.imread(many / "a_labels.tiff"), labels)
    assert tifffile.imread(many / "b_labels.tiff").shape == (64, 64)  # the bad file in between stopped nothing
    err = capsys.readouterr().err
    assert "broken.tif: skipped" in err and "1 of 3 inputs could not be segmented" in err
    assert main(["segment", str(bundle_path), str(tmp_path / "rgb.tif"), "-o", str(out), "--channel", "2"]) == 0
    assert tifffile.imread(out / "rgb_labels.tiff").shape == (60, 50)
    assert main(["segment", str(bundle_path), str(tmp_path / "rgb.tif"), "-o", str(out)]) == 1  # which channel?
    assert "choose one with" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["models", "list", str(bundle_path.parent), "--channel", "DNA"]) == 0
    assert "t " in capsys.readouterr().out
    assert main(["models", "list", str(bundle_path.parent), "--channel", "Mito"]) == 0
    assert "no model bundles" in capsys.readouterr().out
