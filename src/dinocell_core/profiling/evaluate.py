"""The CPJUMP1 copairs benchmark on a well-profile table: replicate retrieval and target/gene matching.

Settings follow the CPJUMP1 paper's benchmark (jump-cellpainting/2024_Chandrasekaran_NatureMethods, notebooks 1.x
and ``benchmark/utils.py``): cosine similarity; replicate retrieval against the negcon wells of the same plate
(``pos_sameby=[perturbation]``, ``neg_sameby=[plate]``, ``neg_diffby=[Metadata_negcon]``), scored on non-control
rows; matching on median consensus profiles of the replicable perturbations (multilabel, |cosine|);
``mean_average_precision`` with a permutation null and BH-corrected p-values at 0.05 ("fraction retrieved" = share
of groups below the threshold). Every row or plate that cannot take part is excluded *with a reported reason*; the
results never hold a NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dinocell_core.profiling.normalize import NEGCON_FLAG, normalize_profiles
from dinocell_core.profiling.settings import EvalSettings
from dinocell_core.profiling.table import ProfileError, feature_matrix, split_columns

MATCH_COL = "Metadata_matching_target"
RESULT_COLUMNS = ("mean_average_precision", "p_value", "corrected_p_value", "below_corrected_p")
GENETIC = ("crispr", "orf")


@dataclass
class TaskResult:
    name: str
    group_col: str
    table: pd.DataFrame  # one row per group: group_col + RESULT_COLUMNS

    @property
    def summary(self) -> dict[str, Any]:
        key = "n_perturbations" if self.name == "replicate_retrieval" else "n_groups"
        return {"fraction_retrieved": float(self.table["below_corrected_p"].mean()),
                "mean_map": float(self.table["mean_average_precision"].mean()), key: int(len(self.table))}


@dataclass
class Evaluation:
    settings: EvalSettings
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    exclusions: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # task → why it did not run
    n_wells: int = 0
    n_features: int = 0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: t.summary for name, t in self.tasks.items()}
        out["skipped_tasks"] = dict(self.skipped)
        out["exclusions"] = list(self.exclusions)
        out["n_wells"] = self.n_wells
        out["n_features"] = self.n_features
        out["settings"] = self.settings.model_dump(mode="json")
        return out


# ------------------------------------------------------------------------------------------------ preparation

def _require(df: pd.DataFrame, cols: list[str], source: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        meta = [c for c in df.columns if str(c).startswith("Metadata")]
        raise ProfileError(f"{source}: column(s) {missing} not found; metadata columns present: {meta[:20]} "
                           "(name other columns with the plate/perturbation/control options)")


def _blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype(str).str.strip() == "")


def _examples(df: pd.DataFrame, s: EvalSettings, n: int = 3) -> str:
    wells = df.get("Metadata_Well")
    rows = [f"{p}/{w}" for p, w in zip(df[s.plate_col], wells if wells is not None else df.index)][:n]
    return ", ".join(map(str, rows)) + (" …" if len(df) > n else "")


def modality(df: pd.DataFrame, s: EvalSettings) -> pd.Series | None:
    """compound | crispr | orf per row, from the modality column or the platemap name; None when unknown."""
    if s.modality_col in df.columns:
        return df[s.modality_col].astype(str).str.lower()
    if "Metadata_Plate_Map_Name" in df.columns:
        return df["Metadata_Plate_Map_Name"].astype(str).str.split("_").str[1].str.lower()
    return None


def prepare(df: pd.DataFrame, s: EvalSettings, source: str = "profiles"
            ) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Rows and features that can be scored, with :data:`NEGCON_FLAG` set; and the reported exclusions."""
    _require(df, [s.plate_col, s.pert_col, s.control_col], source)
    _, feats = split_columns(df, source)
    notes: list[str] = []
    df = df.reset_index(drop=True)
    x = df[feats].to_numpy(dtype=np.float64)
    empty_cols = [f for f, ok in zip(feats, np.isfinite(x).any(axis=0)) if not ok]
    if empty_cols:
        notes.append(f"{len(empty_cols)} feature(s) excluded: no finite value, e.g. {empty_cols[:3]}")
        feats = [f for f in feats if f not in set(empty_cols)]
        x = df[feats].to_numpy(dtype=np.float64)
    if not feats:
        raise ProfileError(f"{source}: no feature has a finite value")
    bad_rows = ~np.isfinite(x).all(axis=1)
    if bad_rows.any():
        notes.append(f"{int(bad_rows.sum())} well(s) excluded: NaN/inf features ({_examples(df[bad_rows], s)})")
        df = df[~bad_rows]
    df[NEGCON_FLAG] = (df[s.control_col].astype(str).str.strip() == s.negcon_value).astype(int)
    blank = _blank(df[s.pert_col])
    empty = blank & (df[NEGCON_FLAG] == 0)
    if empty.any():
        notes.append(f"{int(empty.sum())} well(s) excluded: no perturbation and not negcon (empty wells: "
                     f"{_examples(df[empty], s)})")
        df = df[~empty]
    df.loc[_blank(df[s.pert_col]), s.pert_col] = s.negcon_label
    if _blank(df[s.plate_col]).any():
        raise ProfileError(f"{source}: {int(_blank(df[s.plate_col]).sum())} row(s) have an empty {s.plate_col}")
    has_neg = df.groupby(s.plate_col)[NEGCON_FLAG].max()
    no_neg = sorted(has_neg.index[has_neg == 0].astype(str))
    if no_neg:
        notes.append(f"{len(no_neg)} plate(s) excluded: no negcon wells ({s.control_col} == {s.negcon_value!r}): "
                     f"{no_neg[:5]}")
        df = df[~df[s.plate_col].isin(no_neg)]
    if df.empty or not (df[NEGCON_FLAG] == 0).any():
        raise ProfileError(f"{source}: nothing left to score after exclusions: " + "; ".join(notes or ["no rows"]))
    return df, feats, notes


DEGENERATE_COS = 1e-6  # profiles closer than this to one direction rank by float noise (float32 cosines)


def check_spread(df: pd.DataFrame, feats: list[str], method: str) -> None:
    """Refuse profiles that all point the same way: their cosines tie and copairs' ranking of ties is arbitrary
    (a random-init ViT's raw CLS scores mAP 1.0 that way)."""
    x = feature_matrix(df, feats)
    centre = x.mean(axis=0)
    norms = np.linalg.norm(x, axis=1) * max(float(np.linalg.norm(centre)), 1e-300)
    cos = (x @ centre) / np.maximum(norms, 1e-300)
    if np.all(np.isfinite(cos)) and float(1.0 - cos.min()) < DEGENERATE_COS:
        raise ProfileError(f"every profile points the same way after normalisation {method!r} (cosine to the mean "
                           f"≥ 1 − {DEGENERATE_COS:g}): the features carry no well-to-well signal and mAP would "
                           "rank ties; use negcon_mad or spherize_mad")


def _drop_single_replicates(df: pd.DataFrame, s: EvalSettings, notes: list[str]) -> pd.DataFrame:
    trt = df[df[NEGCON_FLAG] == 0]
    counts = trt.groupby(s.pert_col).size()
    single = sorted(counts.index[counts < 2].astype(str))
    if single:
        notes.append(f"{len(single)} perturbation(s) excluded: one replicate only, e.g. {single[:3]}")
        df = df[~(df[s.pert_col].isin(single) & (df[NEGCON_FLAG] == 0))]
    if not (df[NEGCON_FLAG] == 0).any():
        raise ProfileError("no perturbation has two or more replicate wells: replicate retrieval needs replicates")
    return df


# ------------------------------------------------------------------------------------------------ tasks

def _map(ap: pd.DataFrame, group: str, s: EvalSettings, notes: list[str], name: str) -> pd.DataFrame:
    from copairs.map import mean_average_precision

    bad = ap["average_precision"].isna() | (ap["n_pos_pairs"] == 0)
    if bad.any():
        notes.append(f"{name}: {int(bad.sum())} profile(s) without a positive pair left out of the mAP")
        ap = ap[~bad]
    m = mean_average_precision(ap, [group], null_size=s.null_size, threshold=s.threshold, seed=s.seed,
                               progress_bar=s.progress)
    out = m[[group, *RESULT_COLUMNS]].sort_values(group).reset_index(drop=True)
    out["below_corrected_p"] = out["below_corrected_p"].astype(bool)
    if out[list(RESULT_COLUMNS[:3])].isna().any().any():
        raise ProfileError(f"{name}: copairs returned NaN scores (please report this table)")
    return out


def replicate_retrieval(df: pd.DataFrame, feats: list[str], s: EvalSettings, notes: list[str]) -> TaskResult:
    from copairs.map import average_precision

    meta = df[[s.plate_col, s.pert_col, NEGCON_FLAG]].reset_index(drop=True)
    ap = average_precision(meta, feature_matrix(df, feats), pos_sameby=[s.pert_col], pos_diffby=[],
                           neg_sameby=[s.plate_col], neg_diffby=[NEGCON_FLAG], batch_size=s.batch_size,
                           distance="cosine", progress_bar=s.progress)
    ap = ap[ap[NEGCON_FLAG] == 0]
    return TaskResult("replicate_retrieval", s.pert_col, _map(ap, s.pert_col, s, notes, "replicate_retrieval"))


def _consensus(df: pd.DataFrame, feats: list[str], keys: list[str]) -> pd.DataFrame:
    from pycytominer import consensus

    return consensus(df[keys + feats], replicate_columns=keys, operation="median", features=feats)


def _targets(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return sorted({t.strip() for t in str(value).split("|") if t.strip()})


def _multilabel(meta: pd.DataFrame, x: np.ndarray, pos_diffby: list[str], neg_diffby: list[str], s: EvalSettings,
                notes: list[str], name: str) -> TaskResult:
    from copairs.map import multilabel

    ap = multilabel.average_precision(meta.reset_index(drop=True), x, pos_sameby=[MATCH_COL], pos_diffby=pos_diffby,
                                      neg_sameby=[], neg_diffby=neg_diffby, multilabel_col=MATCH_COL,
                                      batch_size=s.batch_size, distance="abs_cosine", progress_bar=s.progress)
    return TaskResult(name, MATCH_COL, _map(ap, MATCH_COL, s, notes, name))


def _replicable(df: pd.DataFrame, rr: TaskResult, s: EvalSettings) -> pd.DataFrame:
    hits = set(rr.table.loc[rr.table["below_corrected_p"], s.pert_col])
    return df[(df[NEGCON_FLAG] == 0) & df[s.pert_col].isin(hits)]


def matching_tasks(df: pd.DataFrame, feats: list[str], rr: TaskResult, s: EvalSettings, ev: Evaluation) -> None:
    """Compound–compound (shared target), CRISPR–CRISPR (sister guides) and compound–gene matching."""
    from copairs.matching import UnpairedException

    mod = modality(df, s)
    df = df.assign(**{"Metadata_dc_modality": mod if mod is not None else "compound"})
    rep = _replicable(df, rr, s)
    notes = ev.exclusions
    consensus: dict[str, pd.DataFrame] = {}
    if s.target_col in df.columns:
        cpd = rep[rep["Metadata_dc_modality"] == "compound"]
        if len(cpd):
            c = _consensus(cpd, feats, [s.pert_col, s.target_col])
            c[MATCH_COL] = c[s.target_col].map(_targets)
            consensus["compound"] = c[c[MATCH_COL].map(len) > 0]
    if s.gene_col in df.columns:
        for m in GENETIC:
            g = rep[(rep["Metadata_dc_modality"] == m) & ~_blank(rep[s.gene_col])]
            if len(g):
                c = _consensus(g, feats, [s.pert_col, s.gene_col])
                c[MATCH_COL] = c[s.gene_col].map(lambda v: [str(v)])
                consensus[m] = c

    def run(name: str, why_missing: str, fn: Any) -> None:
        try:
            ev.tasks[name] = fn()
        except (UnpairedException, KeyError) as exc:
            ev.skipped[name] = f"no pairs to score ({exc})"
        except _Skip as exc:
            ev.skipped[name] = str(exc) or why_missing

    def compound() -> TaskResult:
        c = consensus.get("compound")
        if c is None or len(c) < 2:
            raise _Skip("fewer than 2 replicable compounds with targets")
        meta = c[[s.pert_col, MATCH_COL]]
        return _multilabel(meta, feature_matrix(c, feats), [], [MATCH_COL], s, notes, "compound_target_matching")

    def crispr() -> TaskResult:
        from copairs.map import average_precision

        c = consensus.get("crispr")
        if c is None:
            raise _Skip("no replicable CRISPR guides")
        n = c.groupby(s.gene_col)[s.pert_col].transform("size")
        c = c[n >= 2]
        if c.empty:
            raise _Skip("no gene with two replicable guides")
        ap = average_precision(c[[s.pert_col, s.gene_col]].reset_index(drop=True), feature_matrix(c, feats),
                               pos_sameby=[s.gene_col], pos_diffby=[], neg_sameby=[], neg_diffby=[s.gene_col],
                               batch_size=s.batch_size, distance="cosine", progress_bar=s.progress)
        return TaskResult("crispr_gene_matching", s.gene_col, _map(ap, s.gene_col, s, notes, "crispr_gene_matching"))

    def cross(genetic: str) -> TaskResult:
        c, g = consensus.get("compound"), consensus.get(genetic)
        if c is None or g is None:
            raise _Skip(f"needs replicable compounds with targets and replicable {genetic} perturbations")
        genes = set(g[s.gene_col].astype(str))
        c = c.assign(**{MATCH_COL: c[MATCH_COL].map(lambda ts: [t for t in ts if t in genes])})
        c = c[c[MATCH_COL].map(len) > 0]
        if c.empty:
            raise _Skip(f"no compound target is a {genetic} gene")
        both = pd.concat([c.assign(Metadata_dc_modality="compound"), g.assign(Metadata_dc_modality=genetic)],
                         ignore_index=True)
        meta = both[[s.pert_col, "Metadata_dc_modality", MATCH_COL]]
        return _multilabel(meta, feature_matrix(both, feats), ["Metadata_dc_modality"],
                           [MATCH_COL, "Metadata_dc_modality"], s, notes, f"compound_{genetic}_matching")

    if s.target_col in df.columns:
        run("compound_target_matching", "", compound)
    if s.gene_col in df.columns and (df["Metadata_dc_modality"] == "crispr").any():
        run("crispr_gene_matching", "", crispr)
    if s.target_col in df.columns and s.gene_col in df.columns:
        for m in GENETIC:
            if (df["Metadata_dc_modality"] == m).any():
                run(f"compound_{m}_matching", "", lambda m=m: cross(m))


class _Skip(Exception):
    pass


def evaluate_profiles(df: pd.DataFrame, s: EvalSettings | None = None, source: str = "profiles") -> Evaluation:
    s = s or EvalSettings()
    ev = Evaluation(settings=s)
    kept, feats, notes = prepare(df, s, source)
    ev.exclusions.extend(notes)
    norm = normalize_profiles(kept, feats, s.plate_col, s.normalize)
    ev.exclusions.extend(norm.notes)
    table = _drop_single_replicates(norm.table, s, ev.exclusions)
    ev.n_wells, ev.n_features = int(len(table)), len(norm.features)
    check_spread(table, norm.features, s.normalize)
    rr = replicate_retrieval(table, norm.features, s, ev.exclusions)
    ev.tasks["replicate_retrieval"] = rr
    if s.matching:
        matching_tasks(table, norm.features, rr, s, ev)
    return ev
