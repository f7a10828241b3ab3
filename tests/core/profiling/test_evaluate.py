"""``profile evaluate`` against a direct pycytominer + copairs computation, on planted profiles with known answers."""

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

from copairs.map import average_precision, mean_average_precision  # noqa: E402
from pycytominer import normalize  # noqa: E402

from dinocell_core.profiling.evaluate import EvalSettings, evaluate_profiles  # noqa: E402
from dinocell_core.profiling.table import ProfileError  # noqa: E402
from dinocell_core.synthetic.profiles import planted_profiles  # noqa: E402

NULL = 2000
FEATS = [f"f{j:03d}" for j in range(32)]


def direct(df: pd.DataFrame, method: str) -> pd.DataFrame:
    """The CPJUMP1 recipe written out by hand with the field's own libraries."""
    df = df.copy()
    df["Metadata_negcon"] = (df["Metadata_control_type"] == "negcon").astype(int)
    df["Metadata_broad_sample"] = df["Metadata_broad_sample"].fillna("DMSO")
    meta = [c for c in df.columns if c.startswith("Metadata_")]
    if method == "spherize_mad":
        df = normalize(df, features=FEATS, meta_features=meta, samples="Metadata_negcon == 1", method="spherize",
                       spherize_method="ZCA-cor", spherize_epsilon=1e-6)
        samples = "all"
    else:
        samples = "Metadata_negcon == 1"
    df = pd.concat([normalize(g, features=FEATS, meta_features=meta, samples=samples, method="mad_robustize",
                              mad_robustize_epsilon=0.0) for _, g in df.groupby("Metadata_Plate")],
                   ignore_index=True)
    ap = average_precision(df[["Metadata_Plate", "Metadata_broad_sample", "Metadata_negcon"]],
                           df[FEATS].to_numpy(), pos_sameby=["Metadata_broad_sample"], pos_diffby=[],
                           neg_sameby=["Metadata_Plate"], neg_diffby=["Metadata_negcon"], progress_bar=False)
    ap = ap[ap["Metadata_negcon"] == 0]
    m = mean_average_precision(ap, ["Metadata_broad_sample"], null_size=NULL, threshold=0.05, seed=0,
                               progress_bar=False)
    return m.sort_values("Metadata_broad_sample").reset_index(drop=True)


@pytest.mark.parametrize("method", ["negcon_mad", "spherize_mad"])
def test_same_map_as_direct_pycytominer_and_copairs(method):
    df = planted_profiles(seed=3)
    ours = evaluate_profiles(df, EvalSettings(normalize=method, null_size=NULL, matching=False))
    got = ours.tasks["replicate_retrieval"].table
    want = direct(df, method)
    assert list(got["Metadata_broad_sample"]) == list(want["Metadata_broad_sample"])
    for col in ("mean_average_precision", "p_value", "corrected_p_value"):
        np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), atol=1e-6, rtol=0)
    assert list(got["below_corrected_p"]) == list(want["below_corrected_p"])


def test_strong_retrieved_null_not_and_plates_matter():
    df = planted_profiles(plates=4, perturbations=12, seed=0)
    strength = df.dropna(subset=["Metadata_broad_sample"]).groupby("Metadata_broad_sample")["Metadata_strength"].first()
    res = {}
    for method in ("negcon_mad", "none"):
        ev = evaluate_profiles(df, EvalSettings(normalize=method, null_size=NULL))
        res[method] = ev
    t = res["negcon_mad"].tasks["replicate_retrieval"].table.set_index("Metadata_broad_sample")
    strong, null = strength.index[strength == 3.0], strength.index[strength == 0.0]
    print(f"\nplanted: strong mAP {t.loc[strong, 'mean_average_precision'].round(3).tolist()}, "
          f"null mAP {t.loc[null, 'mean_average_precision'].round(3).tolist()}")
    assert t.loc[strong, "below_corrected_p"].all()
    assert not t.loc[null, "below_corrected_p"].any()
    assert t.loc[strong, "mean_average_precision"].min() > t.loc[null, "mean_average_precision"].max()
    # plate offsets/gains hide everything without per-plate normalisation
    s_none = res["none"].summary()["replicate_retrieval"]
    s_mad = res["negcon_mad"].summary()["replicate_retrieval"]
    assert s_mad["mean_map"] > s_none["mean_map"] + 0.3
    # pairs sharing a target (same direction) match once both are replicable
    match = res["negcon_mad"].tasks["compound_target_matching"].table
    assert set(match["Metadata_matching_target"]) >= {"GENE0", "GENE3"}
    assert match.set_index("Metadata_matching_target").loc[["GENE0", "GENE3"], "mean_average_precision"].min() > 0.9


def pretrain_command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dinocell_core.cli", "profile", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_writes_the_contract_files(tmp_path: Path):
    df = planted_profiles(seed=1)
    src = tmp_path / "wells.parquet"
    df.to_parquet(src, index=False)
    out = tmp_path / "eval"
    r = pretrain_command("evaluate", str(src), "-o", str(out), "--null-size", str(NULL), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "fraction retrieved" in r.stdout
    rr = pd.read_csv(out / "replicate_retrieval.csv")
    assert list(rr.columns) == ["Metadata_broad_sample", "mean_average_precision", "p_value", "corrected_p_value",
                                "below_corrected_p"]
    assert len(rr) == 12 and not rr.isna().any().any()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["replicate_retrieval"]) == {"fraction_retrieved", "mean_map", "n_perturbations"}
    assert summary["replicate_retrieval"]["fraction_retrieved"] == pytest.approx(rr["below_corrected_p"].mean())
    assert summary["replicate_retrieval"]["mean_map"] == pytest.approx(rr["mean_average_precision"].mean())
    assert summary["settings"]["normalize"] == "negcon_mad" and summary["settings"]["null_size"] == NULL
    cm = pd.read_csv(out / "compound_target_matching.csv")
    assert list(cm.columns)[0] == "Metadata_matching_target" and not cm.isna().any().any()
    assert (out / "map_distributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_rows_are_excluded_and_reported():
    df = planted_profiles(plates=3, seed=2)
    df.loc[0, "f000"] = np.nan  # a NaN feature
    lonely = df[df["Metadata_Plate"] == df["Metadata_Plate"].iloc[0]].copy()
    lonely["Metadata_Plate"] = "BR_NO_NEGCON"
    lonely = lonely[lonely["Metadata_control_type"] != "negcon"]  # a plate without negcon wells
    one = df.iloc[[5]].copy()
    one["Metadata_broad_sample"], one["Metadata_control_type"] = "BRD-ONLY-ONCE", ""  # one replicate
    empty = df.iloc[[6]].copy()
    empty["Metadata_broad_sample"], empty["Metadata_control_type"] = None, ""  # an empty well
    bad = pd.concat([df, lonely, one, empty], ignore_index=True)
    ev = evaluate_profiles(bad, EvalSettings(null_size=NULL, matching=False))
    notes = " | ".join(ev.exclusions)
    assert "NaN/inf features" in notes and "no negcon wells" in notes and "BR_NO_NEGCON" in notes
    assert "one replicate only" in notes and "BRD-ONLY-ONCE" in notes and "empty wells" in notes
    t = ev.tasks["replicate_retrieval"].table
    assert "BRD-ONLY-ONCE" not in set(t["Metadata_broad_sample"]) and not t.isna().any().any()


def test_clear_errors(tmp_path: Path):
    df = planted_profiles(seed=0).drop(columns=["Metadata_control_type"])
    with pytest.raises(ProfileError, match="Metadata_control_type"):
        evaluate_profiles(df)
    src = tmp_path / "p.csv"
    planted_profiles(seed=0).to_csv(src, index=False)
    r = pretrain_command("evaluate", str(src), "-o", str(tmp_path / "o"), "--plate-col", "Metadata_Barcode", "--quiet")
    assert r.returncode == 1 and "Metadata_Barcode" in r.stderr and "Traceback" not in r.stderr
    r = pretrain_command("evaluate", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "o"))
    assert r.returncode == 1 and "not found" in r.stderr


def test_gene_matching_tasks_on_two_modalities():
    cpd = planted_profiles(plates=3, seed=4)
    gen = cpd.copy()
    k = gen["Metadata_broad_sample"].str.extract(r"BRD-K1(\d{7})")[0].astype(float)
    gen["Metadata_broad_sample"] = np.where(k.isna(), gen["Metadata_broad_sample"], "BRDN" + k.fillna(0).astype(int)
                                            .astype(str).str.zfill(8))
    gen["Metadata_gene"] = np.where(k.isna(), "", "GENE" + (k.fillna(0) // 2).astype(int).astype(str))
    gen["Metadata_target_list"] = ""
    gen["Metadata_modality"] = "crispr"
    gen["Metadata_Plate"] = gen["Metadata_Plate"] + "C"
    rng = np.random.default_rng(0)
    gen[FEATS] = gen[FEATS] + rng.normal(0, 0.3, (len(gen), len(FEATS)))
    both = pd.concat([cpd.assign(Metadata_gene=""), gen], ignore_index=True)
    ev = evaluate_profiles(both, EvalSettings(null_size=NULL))
    assert {"compound_target_matching", "crispr_gene_matching", "compound_crispr_matching"} <= set(ev.tasks), \
        ev.skipped
    for name in ("crispr_gene_matching", "compound_crispr_matching"):
        t = ev.tasks[name].table
        assert not t.isna().any().any() and t["mean_average_precision"].max() > 0.9


def test_spherize_needs_more_negcon_wells_than_features():
    df = planted_profiles(plates=2, negcon_per_plate=8, features=32, seed=0)
    with pytest.raises(ProfileError, match="more negcon wells than features"):
        evaluate_profiles(df, EvalSettings(normalize="spherize_mad", null_size=NULL))


def test_profiles_without_spread_are_refused():
    """Near-identical profiles (a random ViT's raw CLS) tie in every ranking; copairs would report mAP 1.0."""
    df = planted_profiles(seed=0)
    x = df[FEATS].to_numpy()
    df[FEATS] = 5.0 + 1e-9 * x
    with pytest.raises(ProfileError, match="same way"):
        evaluate_profiles(df, EvalSettings(normalize="none", null_size=NULL))
    ev = evaluate_profiles(df, EvalSettings(normalize="negcon_mad", null_size=NULL))  # MAD scaling restores it
    assert ev.summary()["replicate_retrieval"]["fraction_retrieved"] > 0
