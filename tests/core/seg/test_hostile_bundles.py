"""Hostile model bundles and `segment` / `models list` inputs (issue 25 rows 7, 8, 13, 14, 15, 17): bundles with
valid digests whose settings, weights or tensor table were edited, a FIFO in the models folder, a flipped weight
byte, an unrelated file where `segment` writes, a channel a grayscale image lacks. Each is refused with one line
naming the file, before the model is built or a tensor is read; no file of the user's is replaced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from dinocell_core.cli import main
from dinocell_core.io.tiffio import write_tiff
from dinocell_core.seg import bundle as bundle_module
from dinocell_core.seg.bundle import BundleError, load_bundle, save_bundle, unique_state
from dinocell_core.seg.inference import Segmenter
from tests.helpers.bundles import crafted_bundle, meta, tiny_model
from tests.helpers.hostile import files_under, one_error_line
from tests.helpers.pretrain import subprocess_env


def _image(path: Path, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    img = rng.integers(100, 300, (size, size)).astype(np.uint16)
    yy, xx = np.mgrid[:size, :size]
    for cy, cx in ((16, 16), (16, 46), (46, 30)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 49] = 3000
    write_tiff(path, img)
    return path


def _state(**edits: torch.Tensor) -> dict[str, torch.Tensor]:
    state = dict(unique_state(tiny_model().state_dict())[0])
    state.update(edits)
    return state


@pytest.fixture
def no_tensor_reads(monkeypatch):
    """Fail the test if a bundle's tensor bytes are read (the refusal must come from the header alone)."""
    def refuse(path):
        raise AssertionError(f"tensor data of {path} was read")

    monkeypatch.setattr(bundle_module, "load_tensors", refuse)


def _refused_by_segment(path: Path, tmp_path: Path, capsys, *extra: str) -> str:
    img = _image(tmp_path / "img.tiff")
    out = tmp_path / "out"
    assert main(["segment", str(path), str(img), "-o", str(out), "--device", "cpu", *extra]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line
    assert not out.exists() or not any(out.iterdir())
    return line


@pytest.mark.hostile(row=7, case="bundle with a valid digest and preprocessing {low: 99.8, high: 1}")
def test_inverted_percentiles_are_refused(tmp_path, capsys):
    path = crafted_bundle(tmp_path / "inv.safetensors", {"preprocessing.low": 99.8, "preprocessing.high": 1.0})
    line = _refused_by_segment(path, tmp_path, capsys)
    assert "preprocessing.low (99.8) must be below preprocessing.high (1.0)" in line


@pytest.mark.hostile(row=7, case="bundle with NaN weights (valid digest)")
def test_nan_weights_are_refused(tmp_path, capsys):
    key = "decoder.head.weight" if "decoder.head.weight" in _state() else sorted(_state())[-2]
    w = _state()[key].clone()
    w.view(-1)[0] = float("nan")
    path = crafted_bundle(tmp_path / "nan.safetensors", tensors=_state(**{key: w}))
    line = _refused_by_segment(path, tmp_path, capsys)
    assert f"weights {key} hold NaN or infinite values" in line


@pytest.mark.hostile(row=7, case="bundle with bool / float16 / int64 tensors (cast silently on load)")
@pytest.mark.parametrize("dtype, code", [(torch.bool, "BOOL"), (torch.float16, "F16"), (torch.int64, "I64")])
def test_weights_of_another_type_are_refused_from_the_header(tmp_path, no_tensor_reads, dtype, code):
    key = "backbone.vit.patch_embed.proj.weight"
    path = crafted_bundle(tmp_path / "cast.safetensors", tensors=_state(**{key: _state()[key].to(dtype)}))
    with pytest.raises(BundleError, match=rf"{path}: weights {key} are {code} \[192, 3, 8, 8\], the architecture "
                                          r"holds F32 \[192, 3, 8, 8\]"):
        load_bundle(path)


@pytest.mark.hostile(row=13, case="a small bundle declaring vit_large; an extra tensor in a bundle")
@pytest.mark.parametrize("changes, extra, says", [
    ({"backbone.arch": "vit_large"}, None, r"do not match the architecture its metadata declares \(vit_large\)"),
    ({}, {"extra": torch.zeros(2**20)}, r"1 unexpected \(e.g. extra\)"),
])
def test_tensor_table_is_checked_before_any_tensor_is_read(tmp_path, no_tensor_reads, changes, extra, says):
    path = crafted_bundle(tmp_path / "b.safetensors", changes, tensors=_state(**(extra or {})))
    with pytest.raises(BundleError, match=f"{path}: its tensors {says}" if extra is None else says):
        load_bundle(path)


@pytest.mark.hostile(row=13, case="tile_size 4096 on a 192² image")
def test_a_huge_tile_on_a_small_image_runs_at_the_image_size(tmp_path):
    path = crafted_bundle(tmp_path / "t.safetensors", {"tile_size": 4096, "overlap": 16})
    seg = Segmenter(path, device="cpu")
    seen: list[tuple[int, ...]] = []
    predict = seg._predict
    seg._predict = lambda batch: (seen.append(batch.shape), predict(batch))[1]
    dist = seg.predict_distance(np.random.default_rng(0).integers(0, 4000, (192, 192)).astype(np.uint16))
    assert dist.shape == (192, 192) and np.isfinite(dist).all()
    assert seen == [(1, 1, 224, 224)]  # 192 + 2 × 16 overlap: one tile of the image's size, not 4096²


@pytest.mark.hostile(row=14, case="bundle preprocessing {}, a bad aliases entry, name/tile fields of the wrong kind")
@pytest.mark.parametrize("changes, says", [
    ({"preprocessing": {}}, "preprocessing.low must be a percentile in [0, 100], got None"),
    ({"aliases": {"bogus": "nothing"}}, "aliases entry 'bogus' → 'nothing' does not name a shared weight"),
    ({"aliases": ["x"]}, "aliases must map weight names to weight names"),
    ({"name": {"x": 1}}, "name must be a non-empty text"),
    ({"tile_size": 60}, "tile_size 60 is not a multiple of backbone.patch_size 8"),
])
def test_malformed_bundle_fields_name_the_bundle(tmp_path, capsys, changes, says):
    path = crafted_bundle(tmp_path / "m.safetensors", changes)
    assert says in _refused_by_segment(path, tmp_path, capsys)


@pytest.mark.hostile(row=15, case="mkfifo models/x.safetensors; models list models")
def test_a_fifo_in_the_models_folder_is_listed_unusable_at_once(tmp_path):
    models = tmp_path / "models"
    model = tiny_model()
    save_bundle(models / "good.safetensors", model, meta(model, name="good"))
    os.mkfifo(models / "x.safetensors")
    r = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "models", "list", str(models)],
                       capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(ln for ln in r.stdout.splitlines() if "x.safetensors" in ln)
    assert "UNUSABLE" in line and "not a regular file" in line
    assert any(ln.startswith("good ") for ln in r.stdout.splitlines())


@pytest.mark.hostile(row=17, case="models list with a bundle whose weights have one flipped byte")
def test_a_flipped_weight_byte_is_listed_unusable(tmp_path, capsys):
    model = tiny_model()
    path = save_bundle(tmp_path / "flip.safetensors", model, meta(model, name="flip"))
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    assert main(["models", "list", str(tmp_path)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "flip" in ln)
    assert "UNUSABLE" in line and "does not match its recorded sha256 digest" in line


@pytest.mark.hostile(row=17, case="segment --channel 5 on a grayscale image")
def test_a_channel_a_grayscale_image_lacks_is_refused(tmp_path, capsys):
    model = tiny_model()
    path = save_bundle(tmp_path / "m.safetensors", model, meta(model))
    img = _image(tmp_path / "gray.tiff")
    out = tmp_path / "out"
    assert main(["segment", str(path), str(img), "-o", str(out), "--device", "cpu", "--channel", "5"]) == 1
    err = capsys.readouterr().err
    assert f"{img}: skipped: {img}: a grayscale image (one channel, shape (64, 64)) has no channel 5" in err
    assert not list(out.rglob("*.tiff"))


@pytest.mark.hostile(row=8, case="segment MODEL img/gt.tiff -o img with an unrelated img/gt_labels.tiff present")
def test_segment_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    model = tiny_model()
    path = save_bundle(tmp_path / "m.safetensors", model, meta(model))
    folder = tmp_path / "img"
    folder.mkdir()
    img = _image(folder / "gt.tiff")
    theirs = folder / "gt_labels.tiff"
    tifffile.imwrite(theirs, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))  # someone's ground truth
    before = files_under(tmp_path) | {"gt_labels": theirs.read_bytes()}
    assert main(["segment", str(path), str(img), "-o", str(folder), "--device", "cpu"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{theirs} exists and was not written by `dinocell-core segment`" in line and "--overwrite" in line
    assert files_under(tmp_path) | {"gt_labels": theirs.read_bytes()} == before
    out = tmp_path / "out"  # its own earlier output is replaced on a rerun, as before
    for _ in range(2):
        assert main(["segment", str(path), str(img), "-o", str(out), "--device", "cpu"]) == 0
    assert main(["segment", str(path), str(img), "-o", str(folder), "--device", "cpu", "--overwrite"]) == 0
    assert theirs.read_bytes() != before["gt_labels"]
