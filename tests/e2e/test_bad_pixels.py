"""Bad pixels and pixel types never give a silent wrong answer, and one bad image never stops a batch; output names
stay unique per input (CPJUMP1 repeats file names on every plate)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from dinocell_core.cli import main
from dinocell_core.io.images import ImageError, prepare_image, read_image
from dinocell_core.seg.bundle import list_bundles
from dinocell_core.seg.inference import Segmenter
from dinocell_core.synthetic.fixture import make_jump_fixture


@pytest.fixture(scope="module")
def bundle(models_dir):
    """A DNA model trained on the fixture (conftest): an untrained network's map finds cells only by chance."""
    (info,) = list_bundles(models_dir, channel="DNA")
    return info.path


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory) -> np.ndarray:
    root = make_jump_fixture(tmp_path_factory.mktemp("fx"), plates=1, wells=1, sites=1, size=128, seed=0,
                             edge_cases=False).root
    return tifffile.imread(sorted(root.rglob("Images/*-ch5sk1*.tiff"))[0]).astype(np.float32)


def _with_nan(img: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    out = img.copy()
    idx = np.random.default_rng(seed).choice(out.size, int(round(fraction * out.size)), replace=False)
    out.flat[idx] = np.nan
    out.flat[idx[:3]] = np.inf
    return out


def test_nan_pixels_are_masked_not_spread(nuclei, caplog):
    bad = _with_nan(nuclei, 0.0027)
    clean = prepare_image(nuclei, name="clean.tiff")
    with caplog.at_level("WARNING"):
        out = prepare_image(bad, name="bad.tiff")
    assert np.isfinite(out).all() and (out[~np.isfinite(bad)] == 0).all()  # masked pixels read as background
    ok = np.isfinite(bad)
    assert np.abs(out[ok] - clean[ok]).max() < 0.01
    assert "bad.tiff: 44 NaN/inf pixels (0.27%) masked" in caplog.text
    with pytest.raises(ImageError, match="mostly.tiff: 40.0% of the pixels are NaN"):
        prepare_image(_with_nan(nuclei, 0.4), name="mostly.tiff")
    with pytest.raises(ImageError, match="every pixel is NaN"):
        prepare_image(np.full((8, 8), np.nan, np.float32), name="all.tiff")


def test_segment_with_nan_pixels_finds_the_cells(bundle, nuclei, tmp_path, capsys):
    seg = Segmenter(bundle)
    n_clean = int(seg.segment(nuclei).max())
    assert n_clean > 5
    tifffile.imwrite(tmp_path / "nan.tiff", _with_nan(nuclei, 0.0027))
    assert main(["segment", str(bundle), str(tmp_path / "nan.tiff"), "-o", str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    n_nan = int(tifffile.imread(tmp_path / "out" / "nan_labels.tiff").max())
    assert abs(n_nan - n_clean) <= max(2, n_clean // 5), (n_nan, n_clean)  # was 0 cells before


def test_every_pixel_type_is_handled_and_a_bad_one_never_stops_the_batch(bundle, nuclei, tmp_path, capsys):
    base = nuclei / nuclei.max()
    images = {
        "bool": base > 0.3, "int8": (base * 127).astype(np.int8), "uint8": (base * 255).astype(np.uint8),
        "int16": (base * 30000).astype(np.int16), "uint32": (base * 4e9).astype(np.uint32),
        "int64": (base * 1e12).astype(np.int64), "uint64": (base * 1e18).astype(np.uint64),
        "float16": base.astype(np.float16), "float64": base.astype(np.float64),
        "complex": base.astype(np.complex64),
    }
    paths = []
    for name, arr in images.items():
        tifffile.imwrite(tmp_path / f"{name}.tiff", arr)
        paths.append(str(tmp_path / f"{name}.tiff"))
    out = tmp_path / "out"
    assert main(["segment", str(bundle), *paths, "-o", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "complex.tiff: skipped: " in err and "complex-valued pixels" in err
    assert "Traceback" not in err and "1 of 10 inputs could not be segmented" in err
    for name in images:
        if name != "complex":
            labels = tifffile.imread(out / f"{name}_labels.tiff")
            assert labels.shape == nuclei.shape, name
    assert read_image(tmp_path / "bool.tiff").dtype == np.bool_  # read as stored; prepared as 0/1


def test_same_file_name_on_two_plates_keeps_the_plate_folder(bundle, nuclei, tmp_path, capsys):
    name = "r01c01f01p01-ch5sk1fk1fl1.tiff"
    inputs = []
    for plate in ("BR00116991", "BR00117005"):
        (tmp_path / "in" / plate).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "in" / plate / name, nuclei.astype(np.uint16))
        inputs.append(str(tmp_path / "in" / plate / name))
    out = tmp_path / "out"
    assert main(["segment", str(bundle), *inputs, "-o", str(out), "--device", "cpu"]) == 0
    stem = name.rsplit(".", 1)[0]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tiff")) == [
        f"BR00116991/{stem}_labels.tiff", f"BR00117005/{stem}_labels.tiff"]


def test_colliding_outputs_are_refused_before_any_work(bundle, nuclei, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", nuclei.astype(np.uint16))
    tifffile.imwrite(tmp_path / "a.tiff", nuclei.astype(np.uint16))
    out = tmp_path / "out"
    assert main(["segment", str(bundle), str(tmp_path / "a.tif"), str(tmp_path / "a.tiff"), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.tif and" in err[0] and "a.tiff would both write" in err[0]
    assert not out.exists()
    assert main(["segment", str(bundle), str(tmp_path / "a.tif"), str(tmp_path / "a.tif"), "-o", str(out)]) == 1
    assert "given twice" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--tile-size", "0"], ["--peak", "2"], ["--fill", "-0.1"], ["--overlap", "-1"],
                                    ["--batch-size", "0"]])
def test_bad_segment_options_are_usage_errors(bundle, tmp_path, option, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(bundle), str(tmp_path / "x.tif"), "-o", str(tmp_path / "o"), *option])
    assert exc.value.code == 2 and option[0] in capsys.readouterr().err


@pytest.mark.parametrize("command", ["segment", "evaluate"])
@pytest.mark.parametrize("value,ok", [("1.5", False), ("-0.1", False), ("x", False), ("0", True), ("1", True)])
def test_slope_option_is_checked_before_any_work(tmp_path, command, value, ok, capsys):
    """``--slope`` takes [0, 1]; a bad value is a usage error naming the option, a good one reaches the bundle
    (here missing, so the run fails on the file, exit 1, not on the option)."""
    args = ([str(tmp_path / "m.safetensors"), str(tmp_path / "x.tif"), "-o", str(tmp_path / "o")]
            if command == "segment" else [str(tmp_path / "m.safetensors"), str(tmp_path / "data")])
    if ok:
        assert main([command, *args, "--slope", value, "--device", "cpu"]) == 1
        assert "--slope" not in capsys.readouterr().err
        return
    with pytest.raises(SystemExit) as exc:
        main([command, *args, "--slope", value])
    assert exc.value.code == 2 and "--slope" in capsys.readouterr().err


def test_evaluate_scores_are_not_lowered_by_a_few_nan_pixels(bundle, tmp_path):
    """9 NaN pixels per image used to turn every normalised pixel into NaN (SEG 0); masked, the scores are those of
    the clean images."""
    from dinocell_core.seg.evaluate import evaluate_bundle

    root = make_jump_fixture(tmp_path / "fx", plates=1, wells=2, sites=1, size=128, seed=1, edge_cases=False).root
    images = sorted(root.rglob("Images/*-ch5sk1*.tiff"))
    masks = sorted(root.rglob("ground_truth/**/*_nuclei.tiff"))
    clean, nan = tmp_path / "clean", tmp_path / "nan"
    for d in (clean, nan):
        d.mkdir()
    for i, (img_p, mask_p) in enumerate(zip(images, masks)):
        img = tifffile.imread(img_p).astype(np.float32)
        tifffile.imwrite(clean / f"f{i}_img.tif", img)
        img.flat[np.random.default_rng(i).choice(img.size, 9, replace=False)] = np.nan
        tifffile.imwrite(nan / f"f{i}_img.tif", img)
        for d in (clean, nan):
            tifffile.imwrite(d / f"f{i}_masks.tif", tifffile.imread(mask_p))
    a = evaluate_bundle(bundle, clean, device="cpu")["metrics"]
    b = evaluate_bundle(bundle, nan, device="cpu")["metrics"]
    assert a["n_gt"] == b["n_gt"] > 0 and a["n_images"] == b["n_images"] == 2 and b["seg"] > 0.1
    assert abs(a["ap@0.50"] - b["ap@0.50"]) <= 0.02 and abs(a["seg"] - b["seg"]) <= 0.02, (a, b)
