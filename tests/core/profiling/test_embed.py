"""``profile embed`` on the synthetic CPJUMP1 fixture, then ``profile evaluate``: images → well profiles → mAP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("copairs")
pytest.importorskip("pycytominer")

from dinocell_core.jump.index import load_index  # noqa: E402
from dinocell_core.profiling.embed import (  # noqa: E402
    EmbedSettings,
    embed_profiles,
    find_metadata_dir,
    parts_dir,
    valid_tiles,
)
from dinocell_core.profiling.metadata import well_annotations  # noqa: E402
from dinocell_core.profiling.table import ProfileError, read_profiles  # noqa: E402
from dinocell_core.synthetic.fixture import make_jump_fixture, well_treatment  # noqa: E402
from tests.helpers.embedders import CountingEmbedder, EmbedCrash

CPJUMP1_COLUMNS = {"Metadata_Plate", "Metadata_Well", "Metadata_Plate_Map_Name", "Metadata_well_position",
                   "Metadata_broad_sample", "Metadata_solvent", "Metadata_InChIKey", "Metadata_pert_iname",
                   "Metadata_pubchem_cid", "Metadata_pert_type", "Metadata_control_type", "Metadata_smiles",
                   "Metadata_target", "Metadata_target_list"}


@pytest.fixture(scope="module")
def plates(tmp_path_factory) -> Path:
    """4 plates × 16 wells (8 DMSO, 8 compounds of graded strength) × 2 sites, 128 px."""
    return make_jump_fixture(tmp_path_factory.mktemp("profile_fixture"), plates=4, wells=16, sites=2, size=128,
                             seed=0).root


def pretrain_command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dinocell_core.cli", "profile", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_fixture_metadata_is_cpjump1_format(plates: Path):
    meta = find_metadata_dir(str(plates))
    assert meta is not None
    ann = well_annotations(meta, ["BR00116991", "BR00117005"])
    assert CPJUMP1_COLUMNS <= set(ann.columns)
    for plate, g in ann.groupby("Metadata_Plate"):
        assert (g["Metadata_control_type"] == "negcon").sum() == 8  # DMSO on every plate
        assert set(g.loc[g["Metadata_control_type"] == "negcon", "Metadata_broad_sample"]) == {""}
    a, b = (ann[ann["Metadata_Plate"] == p].set_index("Metadata_Well")["Metadata_broad_sample"]
            for p in ("BR00116991", "BR00117005"))
    assert a.equals(b)  # the same platemap on every plate: replicates across plates
    design = [well_treatment(w) for w in range(16)]
    assert {t.strength for t in design if t.broad_sample} == {0.0, 0.25, 0.5, 0.75, 1.0}
    targets = pd.Series([t.target for t in design if t.broad_sample])
    assert (targets.value_counts() == 2).all()  # pairs sharing a target
    with pytest.raises(ProfileError, match="BR_UNKNOWN"):
        well_annotations(meta, ["BR_UNKNOWN"])


def test_kim_tile_rule_keeps_tiles_with_dna():
    dna = np.zeros((128, 128), np.float32)
    dna[70:90, 70:90] = 1.0  # nuclei only in the bottom-right tile
    s = EmbedSettings(tile=64)
    boxes = [(0, 0), (0, 64), (64, 0), (64, 64)]
    assert valid_tiles(dna, boxes, 64, s) == [3]
    assert valid_tiles(np.zeros((128, 128), np.float32), boxes, 64, s) == [2]  # none: the middle tile


def test_embed_then_evaluate_on_the_fixture(plates: Path, tmp_path: Path, capsys):
    out = tmp_path / "baseline.parquet"
    r = pretrain_command("embed", str(plates), "-o", str(out), "--tile", "64", "--channels", "each")
    assert r.returncode == 0, r.stderr
    assert "embed" in r.stderr  # the tqdm bar
    wells = read_profiles(out)
    assert len(wells) == 64 and CPJUMP1_COLUMNS <= set(wells.columns)
    assert (wells["Metadata_Site_Count"] >= 1).all()
    r = pretrain_command("evaluate", str(out), "-o", str(tmp_path / "eval"), "--null-size", "2000", "--quiet")
    assert r.returncode == 0, r.stderr
    rr = pd.read_csv(tmp_path / "eval" / "replicate_retrieval.csv")
    strength = {t.broad_sample: t.strength for t in map(well_treatment, range(16)) if t.broad_sample}
    rr["strength"] = rr["Metadata_broad_sample"].map(strength)
    full = rr.loc[rr["strength"] == 1.0, "mean_average_precision"]
    null = rr.loc[rr["strength"] == 0.0, "mean_average_precision"]
    with capsys.disabled():
        print(f"\nfixture, hand-crafted baseline: mAP by strength "
              f"{rr.groupby('strength')['mean_average_precision'].mean().round(3).to_dict()}")
    assert full.mean() > null.mean() + 0.3
    assert rr.loc[rr["strength"] == 1.0, "below_corrected_p"].any()
    assert not rr.loc[rr["strength"] == 0.0, "below_corrected_p"].any()






def test_embed_resumes_where_it_stopped(plates: Path, tmp_path: Path):
    fields = load_index(str(plates))
    s = EmbedSettings(tile=64, chunk_sites=16)
    meta = find_metadata_dir(str(plates))
    whole = embed_profiles(str(plates), fields, tmp_path / "whole.csv", s, metadata=meta, progress=False)
    out = tmp_path / "resumed.csv"
    with pytest.raises(EmbedCrash):
        embed_profiles(str(plates), fields, out, s, metadata=meta, progress=False, embedder=CountingEmbedder(crash_after=3))
    chunks = sorted(parts_dir(out).glob("chunk_*.npz"))
    assert len(chunks) == 3 and not out.exists()
    again = CountingEmbedder()
    resumed = embed_profiles(str(plates), fields, out, s, metadata=meta, progress=False, embedder=again)
    n_chunks = -(-len(fields) // 16)
    assert again.calls == n_chunks - 3  # only the missing chunks were embedded
    pd.testing.assert_frame_equal(resumed.reset_index(drop=True), whole.reset_index(drop=True))
    with pytest.raises(ProfileError, match="other settings"):
        embed_profiles(str(plates), fields, out, EmbedSettings(tile=32, chunk_sites=16), metadata=meta,
                       progress=False)


def test_random_vit_cls_and_mean_patch(plates: Path, tmp_path: Path):
    fields = [f for f in load_index(str(plates)) if f.plate in ("BR00116991", "BR00117005")]
    s = EmbedSettings(backbone="random", arch="vit_test", model_kwargs={"depth": 2}, tile=64,
                      tokens="cls+mean_patch", device="cpu", channels="fluorescent_mean")  # a ViT's default: each
    wells = embed_profiles(str(plates), fields, tmp_path / "rand.csv", s, metadata=None, progress=False)
    feats = [c for c in wells.columns if not c.startswith("Metadata_")]
    assert len(feats) == 2 * 192 and feats[0] == "fmean_cls_0000" and feats[-1] == "fmean_mean_patch_0191"
    assert len(wells) == 32 and np.isfinite(wells[feats].to_numpy()).all()
    info = json.loads((tmp_path / "rand.csv.json").read_text())
    assert info["embedder"]["kind"] == "backbone" and info["n_fields"] == len(fields)
