"""``segment-plate``: a real plate run (real TIFFs, real bundles, the CLI in a subprocess) killed mid-plate and
resumed; labels per field, per-cell Parquet with CellProfiler names, one table per finished plate."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from dinocell_core.seg.plate import PlateError, PlateLayout, choose_models
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers import REPO


def tiny_bundle(folder: Path, channel: str) -> Path:
    import torch

    from dinocell_core.backbones.loading import load_backbone
    from dinocell_core.seg.bundle import save_bundle
    from dinocell_core.seg.decoder import DistanceDecoder

    torch.manual_seed(0)
    model = DistanceDecoder(load_backbone("vit_test", patch_size=8), width=16, stem_width=8).eval()
    meta = {"name": f"tiny-{channel}", "channel": channel,
            "backbone": {"arch": "vit_test", "patch_size": 8, "kwargs": {}},
            "decoder": {"layers": model.layers, "width": 16, "stem_width": 8},
            "preprocessing": {"low": 1.0, "high": 99.8},
            "thresholds": {"peak": 0.5, "fill": 0.3, "grow": 0.2, "min_size": 4}, "tile_size": 32, "overlap": 8}
    return save_bundle(folder / f"tiny-{channel}.safetensors", model, meta)


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("plate")
    info = make_jump_fixture(tmp / "data", plates=1, wells=3, sites=3, size=128, seed=4)
    models = tmp / "models"
    models.mkdir()
    tiny_bundle(models, "DNA")
    tiny_bundle(models, "AGP")
    return info.root, models


def test_choose_models(plate, tmp_path) -> None:
    _, models = plate
    chosen = choose_models(models)
    assert chosen["Nuclei"].channel == "DNA" and chosen["Cells"].channel == "AGP"
    tiny_bundle(tmp_path, "Mito")
    tiny_bundle(tmp_path, "AGP")
    with pytest.raises(PlateError, match="--cells-channel"):
        choose_models(tmp_path)
    assert "Nuclei" not in choose_models(tmp_path, cells_channel="Mito")
    with pytest.raises(PlateError, match="no model for channel ER"):
        choose_models(tmp_path, cells_channel="ER")


def parts(out: Path) -> list[Path]:
    return sorted((out / "measurements").rglob("*.parquet")) if (out / "measurements").is_dir() else []


def test_plate_run_killed_and_resumed(plate, tmp_path, capsys) -> None:
    from dinocell_core.cli import main
    from dinocell_core.jump.index import load_index

    root, models = plate
    out = tmp_path / "out"
    fields = load_index(root)
    total = len(fields)
    assert total >= 6
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dinocell_core.cli", "segment-plate", str(models), str(root),
                             "-o", str(out), "--device", "cpu", "--batch-size", "4"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not parts(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no chance to clean up
    log = proc.communicate()[0].decode(errors="replace")
    first = parts(out)
    assert 1 <= len(first) < total, (len(first), log[-2000:])
    stamps = {p: p.stat().st_mtime_ns for p in first}
    assert not any(p.name.endswith(".tmp") for p in first)

    assert main(["segment-plate", str(models), str(root), "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"{total - len(first)} fields segmented" in printed and f"({len(first)} already done" in printed
    done = parts(out)
    assert len(done) == total
    assert all(p.stat().st_mtime_ns == stamps[p] for p in first)  # finished fields were not redone

    plate_folder = fields[0].plate_folder
    table = pd.read_parquet(out / f"{plate_folder}.parquet")
    assert len(table) == sum(len(pd.read_parquet(p)) for p in done)
    for col in ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "ObjectNumber", "Cells_AreaShape_Area",
                "Cells_Intensity_MeanIntensity_DNA", "Cells_Parent_Nuclei", "Nuclei_AreaShape_Area"):
        assert col in table.columns, col
    assert set(table["Metadata_Plate"]) == {fields[0].plate}
    assert table.groupby(["Metadata_Well", "Metadata_Site"]).ngroups == total
    # the labels on disk are the objects in the table
    f = fields[0]
    lay = PlateLayout(out)
    cells = tifffile.imread(lay.labels(f, "Cells"))
    nuclei = tifffile.imread(lay.labels(f, "Nuclei"))
    rows = table[(table["Metadata_Well"] == f.well) & (table["Metadata_Site"] == f.site)]
    assert sorted(rows["ObjectNumber"]) == sorted(set(np.unique(cells)) - {0})
    assert set(rows["Cells_Parent_Nuclei"]) - {0} <= set(np.unique(nuclei)) - {0}

    # a finished folder: nothing left to do; another model set in the same folder is refused
    assert main(["segment-plate", str(models), str(root), "-o", str(out), "--device", "cpu"]) == 0
    assert "0 fields segmented" in capsys.readouterr().out
    other = tmp_path / "other_models"
    other.mkdir()
    tiny_bundle(other, "DNA")
    assert main(["segment-plate", str(other), str(root), "-o", str(out), "--device", "cpu"]) == 1
    assert "written by another run" in capsys.readouterr().err


def test_explicit_model_one_well_overrides_and_a_cancelled_iterator(plate, tmp_path) -> None:
    """What napari's "segment this well → disk" runs: one bundle for one object, one well, the widget's thresholds
    and tile size; closing the iterator mid-run is a cancel that leaves finished fields done and resumes after
    them; the plate table waits for every field of the plate."""
    from dinocell_core.jump.index import load_index
    from dinocell_core.seg.inference import Segmenter
    from dinocell_core.seg.plate import PlateRun

    root, models = plate
    fields = load_index(root)
    well = sorted({f.well for f in fields})[0]
    mine = sorted((f for f in fields if f.well == well), key=lambda f: f.site)
    out = tmp_path / "out"
    bundle = models / "tiny-DNA.safetensors"
    over = {"peak": 0.6, "fill": 0.2, "min_size": 2}

    def make(wells=(well,), thresholds=over):
        return PlateRun({"Nuclei": bundle}, root, out, wells=list(wells) if wells else None, device="cpu",
                        batch_size=2, tile_size=64, thresholds={"Nuclei": thresholds}, measure_channels=[5])

    run = make()
    assert run.fields == mine and run.thresholds["Nuclei"]["peak"] == 0.6
    steps = run.iter_run()
    seen = []
    for step in steps:
        seen.append(step)
        if step.tiles == 0 and step.done == 1:
            break  # the first field finished (the next may be in post-processing): cancel
    steps.close()
    assert any(s.tiles > 0 and s.model == "Nuclei" for s in seen)  # tile progress inside a field
    lay = PlateLayout(out)
    done_first = [f for f in mine if lay.part(f).is_file()]
    assert 1 <= len(done_first) <= 2 and run.result is None  # cancelled: no result, no plate table
    stamps = {f.key: lay.part(f).stat().st_mtime_ns for f in done_first}

    res = make().run()
    assert res.done_before == len(done_first) and res.done == len(mine) and not res.failed
    assert all(lay.part(f).stat().st_mtime_ns == stamps[f.key] for f in done_first)
    assert res.tables == []  # other wells of the plate are not done
    seg = Segmenter(bundle, device="cpu", tile_size=64)
    image = tifffile.imread(mine[0].path(str(root), 5))
    expected = seg.labels(seg.predict_distance(image), peak_threshold=0.6, fill_threshold=0.2, min_size=2)
    np.testing.assert_array_equal(tifffile.imread(lay.labels(mine[0], "Nuclei")), expected)
    part = pd.read_parquet(lay.part(mine[0]))
    assert list(part["ObjectNumber"]) == list(range(1, int(expected.max()) + 1))
    assert "Nuclei_Intensity_MeanIntensity_DNA" in part.columns

    with pytest.raises(PlateError, match="written by another run"):  # other thresholds into the same folder
        make(thresholds={"peak": 0.7}).run()
    res = make(wells=None).run()  # the whole plate: the rest of it, then its table
    assert res.done == len(fields) and len(res.tables) == 1
    assert len(pd.read_parquet(res.tables[0]).groupby(["Metadata_Well", "Metadata_Site"])) == len(fields)
    with pytest.raises(PlateError, match="'Nuclei' and/or 'Cells'"):
        PlateRun({"Cytoplasm": bundle}, root, out)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_full_features_write_cellprofiler_columns_and_pin_the_folder(plate, tmp_path) -> None:
    """``--features full``: every part has cp-measure's columns under CellProfiler's names (the schema fixed before
    any field), and a folder written with one feature set refuses the other."""
    pytest.importorskip("cp_measure")
    from dinocell_core.seg.plate import PlateRun, columns_for

    root, models = plate
    bundle = models / "tiny-DNA.safetensors"

    def make(features: str) -> PlateRun:
        return PlateRun({"Nuclei": bundle}, root, tmp_path / "out", device="cpu", batch_size=2, tile_size=64,
                        thresholds={"Nuclei": {"min_size": 2}}, measure_channels=[1, 5], features=features)

    run = make("full")
    res = run.run(max_fields=1)
    assert res.done == 1 and not res.failed
    part = pd.read_parquet(PlateLayout(tmp_path / "out").part(run.fields[0]))
    assert list(part.columns) == columns_for(["Nuclei"], ["Mito", "DNA"], "full") == run.columns
    for col in ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "ObjectNumber", "Nuclei_AreaShape_Area",
                "Nuclei_AreaShape_Zernike_2_0", "Nuclei_Texture_AngularSecondMoment_DNA_3_00_256",
                "Nuclei_Granularity_1_Mito", "Nuclei_RadialDistribution_FracAtD_DNA_1of4",
                "Nuclei_Correlation_Pearson_Mito_DNA", "Nuclei_Intensity_MeanIntensity_Mito"):
        assert col in part.columns, col
    with pytest.raises(PlateError, match="features differ"):
        make("minimal").run(max_fields=1)
