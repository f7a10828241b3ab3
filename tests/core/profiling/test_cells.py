"""``profile embed --units cells``: per-cell crops from a labels store → well profiles → ``profile evaluate``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("copairs")
pytest.importorskip("pycytominer")

from dinocell_core.jump.index import load_index  # noqa: E402
from dinocell_core.labels.store import GROUND_TRUTH_DIR, LabelStore, field_key  # noqa: E402
from dinocell_core.profiling.cells import crop_origins, crop_stack, object_centres  # noqa: E402
from dinocell_core.profiling.embed import (  # noqa: E402
    EmbedSettings,
    embed_profiles,
    fields_path,
    find_metadata_dir,
    make_embedder,
    parts_dir,
)
from dinocell_core.profiling.table import ProfileError, read_profiles  # noqa: E402
from dinocell_core.synthetic.fixture import make_jump_fixture, well_treatment  # noqa: E402
from tests.helpers.embedders import CountingEmbedder, EmbedCrash  # noqa: E402

UNLABELLED = {("BR00116991", "A03", 1), ("BR00116991", "A03", 2), ("BR00117005", "A05", 2)}  # DMSO wells
EMPTIED = ("BR00117005", "A07", 1)  # a DMSO field whose corrected masks hold no object


@pytest.fixture(scope="module")
def plates(tmp_path_factory) -> Path:
    """4 plates × 16 wells (8 DMSO, 8 compounds of graded strength) × 2 sites, 128 px, truth as a labels store."""
    return make_jump_fixture(tmp_path_factory.mktemp("cells_fixture"), plates=4, wells=16, sites=2, size=128,
                             seed=0).root


@pytest.fixture(scope="module")
def labels(plates: Path, tmp_path_factory) -> Path:
    """A copy of the fixture's truth store with three fields unlabelled and one field corrected to empty masks."""
    src = next(plates.rglob(GROUND_TRUTH_DIR))
    dst = tmp_path_factory.mktemp("labels") / "store"
    shutil.copytree(src, dst)
    with open(dst / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if (r["plate"], r["well"], int(r["site"])) not in UNLABELLED]
    assert len(keep) == len(rows) - len(UNLABELLED)
    with open(dst / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    store = LabelStore.open(dst)
    field = next(f for f in load_index(str(plates)) if (f.plate, f.well, f.site) == EMPTIED)
    blank = np.zeros(store.read(store.best(field_key(field)), "nuclei").shape, np.int32)
    store.write_field(field, blank, blank, "corrected")
    return dst


def pretrain_command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dinocell_core.cli", "profile", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_centres_and_crops_by_border_rule():
    mask = np.zeros((40, 50), np.int32)
    mask[10:13, 20:23] = 3  # centre (11, 21)
    mask[0:2, 0:2] = 7  # centre (0.5, 0.5): its crop leaves the field
    ids, yx = object_centres(mask)
    assert ids.tolist() == [3, 7] and np.allclose(yx, [[11, 21], [0.5, 0.5]])
    origin, keep = crop_origins(yx, mask.shape, 16, "pad")
    assert keep.tolist() == [0, 1] and origin.tolist() == [[3, 13], [-7, -7]]
    image = np.arange(40 * 50, dtype=np.float32).reshape(40, 50)
    crops = crop_stack(image, origin, 16)
    assert crops.shape == (2, 16, 16)
    assert crops[0, 8, 8] == image[11, 21]  # the object sits at the crop centre
    assert crops[1, 8, 8] == image[1, 1] and (crops[1, :7] == 0).all() and (crops[1, :, :7] == 0).all()
    origin, keep = crop_origins(yx, mask.shape, 16, "shift")
    assert keep.tolist() == [0, 1] and origin.tolist() == [[3, 13], [0, 0]]
    origin, keep = crop_origins(yx, mask.shape, 16, "skip")
    assert keep.tolist() == [0] and origin.tolist() == [[3, 13]]
    with pytest.raises(ProfileError, match="smaller than a 64-px crop"):
        crop_origins(yx, mask.shape, 64, "shift")
    assert object_centres(np.zeros((4, 4), np.int32))[0].size == 0


def test_cells_need_a_labels_store():
    with pytest.raises(ProfileError, match="labels store"):
        EmbedSettings(units="cells")
    with pytest.raises(ProfileError, match="units"):
        EmbedSettings(units="nuclei")
    s = EmbedSettings(backbone="random", arch="vit_test", model_kwargs={"depth": 1}, units="cells", labels="L",
                      crop=50, device="cpu")
    with pytest.raises(ProfileError, match="crop 50 px is not a multiple of the backbone's patch size 8"):
        make_embedder(s)


def test_cells_embed_then_evaluate_on_the_fixture(plates: Path, labels: Path, tmp_path: Path, capsys):
    out = tmp_path / "cells.parquet"
    r = pretrain_command("embed", str(plates), "-o", str(out), "--units", "cells", "--labels", str(labels), "--channels", "each")
    assert r.returncode == 0, r.stderr
    assert "3 field(s) skipped: no labels" in r.stderr and "1 field(s) gave no cells" in r.stderr
    assert "1 well(s) have no embedded field" in r.stderr
    # one unit per object of each field's (preferred) nuclei mask
    store = LabelStore.open(labels)
    table = pd.read_csv(fields_path(out))
    fields = load_index(str(plates))
    assert len(table) == len(fields)
    by_key = {(f.plate, f.well, f.site): f for f in fields}
    status = table.set_index(["Metadata_Plate", "Metadata_Well", "Metadata_Site"])
    for key, row in status.iterrows():
        if key in UNLABELLED:
            assert row["status"] == "no labels" and row["units"] == 0
            continue
        nuclei = store.read(store.best(field_key(by_key[key])), "nuclei")
        assert row["units"] == len(np.unique(nuclei[nuclei > 0]))
        assert row["status"] == ("no cells" if key == EMPTIED else "embedded")
    wells = read_profiles(out)
    assert len(wells) == 63  # BR00116991/A03 lost both sites
    assert not ((wells["Metadata_Plate"] == "BR00116991") & (wells["Metadata_Well"] == "A03")).any()
    embedded = table[table["status"] == "embedded"].groupby(["Metadata_Plate", "Metadata_Well"])
    expect = embedded["units"].sum().rename("expect").reset_index()
    merged = wells.merge(expect, on=["Metadata_Plate", "Metadata_Well"])
    assert len(merged) == 63 and (merged["Metadata_Cell_Count"] == merged["expect"]).all()
    assert (merged["Metadata_Site_Count"] == embedded.size().to_numpy()).all()
    info = json.loads(Path(f"{out}.json").read_text())
    assert info["n_fields_without_labels"] == 3 and info["n_units"] == int(table["units"].sum())
    assert len(info["notes"]) == 3

    r = pretrain_command("evaluate", str(out), "-o", str(tmp_path / "eval"), "--null-size", "2000", "--quiet")
    assert r.returncode == 0, r.stderr
    rr = pd.read_csv(tmp_path / "eval" / "replicate_retrieval.csv")
    strength = {t.broad_sample: t.strength for t in map(well_treatment, range(16)) if t.broad_sample}
    rr["strength"] = rr["Metadata_broad_sample"].map(strength)
    with capsys.disabled():
        print(f"\nfixture, per-cell hand-crafted baseline (96-px crops): mAP by strength "
              f"{rr.groupby('strength')['mean_average_precision'].mean().round(3).to_dict()}, retrieved "
              f"{rr.groupby('strength')['below_corrected_p'].mean().round(3).to_dict()}")
    full = rr.loc[rr["strength"] == 1.0]
    null = rr.loc[rr["strength"] == 0.0]
    assert full["mean_average_precision"].mean() > null["mean_average_precision"].mean() + 0.3
    assert full["below_corrected_p"].any() and not null["below_corrected_p"].any()


def test_cells_embed_resumes_and_refuses_another_store(plates: Path, labels: Path, tmp_path: Path):
    fields = [f for f in load_index(str(plates)) if f.plate in ("BR00116991", "BR00117005")]
    s = EmbedSettings(units="cells", labels=str(labels), crop=64, chunk_sites=8)
    meta = find_metadata_dir(str(plates))
    notes: list[str] = []
    whole = embed_profiles(str(plates), fields, tmp_path / "whole.csv", s, metadata=meta, progress=False,
                           report=notes.append)
    assert any("no labels" in n for n in notes)
    out = tmp_path / "resumed.csv"
    with pytest.raises(EmbedCrash):
        embed_profiles(str(plates), fields, out, s, metadata=meta, progress=False, embedder=CountingEmbedder(2),
                       report=notes.append)
    assert len(list(parts_dir(out).glob("chunk_*.npz"))) == 2 and not out.exists()
    again = CountingEmbedder()
    resumed = embed_profiles(str(plates), fields, out, s, metadata=meta, progress=False, embedder=again,
                             report=notes.append)
    assert again.calls == -(-(len(fields) - 3) // 8) - 2  # only the missing chunks (3 fields have no labels)
    pd.testing.assert_frame_equal(resumed.reset_index(drop=True), whole.reset_index(drop=True))
    other = tmp_path / "other"
    shutil.copytree(labels, other)
    with open(other / "labels.csv", "a") as fh:
        fh.write("BR00116991,A03,1,BR00116991__2020-11-05T19_51_35-Measurement1/r01c03f01p01_nuclei.tiff,"
                 "BR00116991__2020-11-05T19_51_35-Measurement1/r01c03f01p01_cells.tiff,imported\n")
    with pytest.raises(ProfileError, match="another labels store"):
        embed_profiles(str(plates), fields, out, EmbedSettings(units="cells", labels=str(other), crop=64,
                                                               chunk_sites=8),
                       metadata=meta, progress=False, report=notes.append)


def test_random_vit_on_cell_crops(plates: Path, labels: Path, tmp_path: Path):
    fields = [f for f in load_index(str(plates)) if f.plate == "BR00116991"]
    s = EmbedSettings(backbone="random", arch="vit_test", model_kwargs={"depth": 2}, units="cells",
                      labels=str(labels), crop=48, centre="cells", border="shift", tokens="mean_patch",
                      device="cpu", batch_size=32, channels="fluorescent_mean")  # a ViT's default: each
    wells = embed_profiles(str(plates), fields, tmp_path / "rand.csv", s, metadata=None, progress=False,
                           report=lambda _: None)
    feats = [c for c in wells.columns if not c.startswith("Metadata_")]
    assert len(feats) == 192 and feats[0] == "fmean_mean_patch_0000"
    assert len(wells) == 15 and np.isfinite(wells[feats].to_numpy()).all()  # A03 has no labels
    assert (wells["Metadata_Cell_Count"] > 0).all()
