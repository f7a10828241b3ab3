"""Pretraining demonstrably learns (configs/pretrain_demo.yaml on the synthetic fixture, CPU):

1. DINO and iBOT carry signal: loss_dino and teacher_entropy fall clearly below ln(heads.out_dim), the two views
   of a field often share their top prototype (teacher_view_agreement), and teacher_batch_entropy stays well above
   teacher_entropy (the images get different targets: no collapse);
2. the pretrained backbone must beat its own init and random ViTs (LayerScale 1e-5, 0.1, 1.0) by MARGIN k-NN
   accuracy, and their replicate-retrieval mAP, on held-out plates (another fixture seed) that random features do
   not solve: the phenotypes differ only in organelle pattern and every field carries its own imaging nuisance
   (a detector gamma; :class:`dinocell_core.synthetic.fixture.Nuisance`), with the profiling
   package's hand-crafted baseline printed for context. NOT met yet by the short CPU run: the test prints the
   figures and reports an expected failure (xfail) until it is;
3. continued pretraining: a tiny ViT pretrained at patch 16, exported in the official layout, continued at patch 8
   through the heads-first warm start: the DINO loss falls while the backbone is frozen, and the features are no
   worse after unfreezing than before (the dinov2#204 failure).

Task: leave-one-well-out k-NN (k=5, cosine, balanced accuracy) of the CLS of whole 96-px fields (fluorescent mean,
native pixels), each site labelled with its own phenotype; for 2. also issue 12's profiles (CLS → site → well,
negcon-MAD) and copairs replicate retrieval (mean mAP over the compounds, nulls and weak ones included), and, to
say what the features carry, ridge fits on two held-out plates scored on the other two: a phenotype probe and the
R² of each field's detector gamma (the fixture's ground truth, ``fixture.nuisance_of``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinocell_core.backbones.loading import load_backbone
from dinocell_core.config import load_config
from dinocell_core.io.checkpoint import CheckpointManager
from dinocell_core.jump.index import Field, load_index
from dinocell_core.profiling.baseline import BaselineEmbedder
from dinocell_core.profiling.embed import (
    BackboneEmbedder,
    EmbedSettings,
    FieldReader,
    aggregate_wells,
    embed_sites,
    find_metadata_dir,
)
from dinocell_core.profiling.evaluate import EvalSettings, evaluate_profiles
from dinocell_core.profiling.metadata import annotate
from dinocell_core.runs.distributed import DistInfo
from dinocell_core.runs.rundir import read_metrics
from dinocell_core.ssl.config import DataConfig, PretrainConfig
from dinocell_core.ssl.data import build_ssl_dataset
from dinocell_core.ssl.export import export_backbone
from dinocell_core.ssl.trainer import Trainer, run_pretraining
from dinocell_core.synthetic.fixture import (
    Nuisance,
    field_position,
    field_seed,
    find_source_root,
    make_jump_fixture,
    nuisance_of,
    phenotype_of,
    phenotype_table,
)
from tests.helpers import REPO

DEMO = REPO / "configs" / "pretrain_demo.yaml"
MARGIN = 0.10  # the pretrained backbone must beat every baseline ViT by this much k-NN accuracy
# a per-field detector gamma (not the phenotype) dominates random ViTs and the hand-crafted statistics on k-NN
# (0.63–0.68 and 0.76 vs 0.59–0.86 and 0.93 without) while the pattern stays: a linear probe on the hand-crafted
# statistics, trained on two held-out plates, scores 0.87 on the other two (docs/pretraining.md)
NUISANCE = Nuisance(gamma=(0.6, 1.6))


@pytest.fixture(scope="module")
def nuisance_roots(tmp_path_factory) -> tuple[Path, Path]:
    """SSL data (2 plates × 8 wells × 4 sites) and held-out plates (4 × 16 × 4, another seed), 96 px, with the
    per-field imaging nuisance :data:`NUISANCE`."""
    base = tmp_path_factory.mktemp("nuisance")
    train = make_jump_fixture(base / "train", plates=2, wells=8, sites=4, size=96, seed=0, nuisance=NUISANCE).root
    held_out = make_jump_fixture(base / "held_out", plates=4, wells=16, sites=4, size=96, seed=1, edge_cases=False,
                                 nuisance=NUISANCE).root
    return train, held_out


@pytest.fixture(scope="module")
def pheno_root(tmp_path_factory) -> Path:
    """62 fields of 96 px (2 plates × 8 wells × 4 sites, one incomplete field left out), 16 wells, 2 phenotypes."""
    return make_jump_fixture(tmp_path_factory.mktemp("pheno"), plates=2, wells=8, sites=4, size=96, seed=0).root


def field_images(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fluorescent-mean images [N, 96, 96] (the view SSL trains on), phenotype labels, well groups."""
    ds = build_ssl_dataset(DataConfig(root=str(root), global_size=64, local_size=32, num_workers=0), 8, 0)
    table = phenotype_table(find_source_root(root))
    imgs, labels, groups = [], [], []
    for i in range(len(ds.fields)):
        f = ds.fields[i]
        imgs.append(np.ascontiguousarray(ds.view(f, "fluorescent_mean"), dtype=np.float32))
        labels.append(table[(f.plate, f.well)])
        groups.append(f"{f.plate}/{f.well}")
    return np.stack(imgs), np.array(labels), np.array(groups)


@dataclass(frozen=True)
class HeldOut:
    """The held-out plates: fields (sorted as profile embed sorts them), each site's own phenotype, its well, its
    plate and the detector gamma it was imaged with (the fixture's ground truth)."""

    root: Path
    meta: Path
    fields: list[Field]
    y: np.ndarray
    groups: np.ndarray
    plates: np.ndarray
    log_gamma: np.ndarray


def held_out_set(root: Path, seed: int, plates: int) -> HeldOut:
    fields = sorted(load_index(str(root)), key=lambda f: (f.plate, f.well, f.site, f.plate_folder, f.sk))
    y, log_gamma = [], []
    for f in fields:
        p, w = field_position(f, plates)
        y.append(phenotype_of(w, f.site))
        log_gamma.append(math.log(nuisance_of(field_seed(seed, p, w, f.site), NUISANCE)[1]))
    return HeldOut(root, find_metadata_dir(str(root)), fields, np.array(y),
                   np.array([f"{f.plate}/{f.well}" for f in fields]), np.array([f.plate for f in fields]),
                   np.array(log_gamma))


@dataclass(frozen=True)
class Figures:
    knn: float  # site k-NN balanced accuracy
    mean_map: float  # replicate-retrieval mean mAP
    probe: float  # cross-plate linear probe, balanced accuracy: is the phenotype in the features at all?
    gamma_r2: float  # cross-plate R² of log gamma: how much of the imaging nuisance the features carry


def ridge_fit_predict(x_tr: np.ndarray, t_tr: np.ndarray, x_te: np.ndarray, lam: float) -> np.ndarray:
    m = t_tr.mean()
    beta = np.linalg.solve(x_tr.T @ x_tr + lam * np.eye(x_tr.shape[1]), x_tr.T @ (t_tr - m))
    return x_te @ beta + m


def cross_plate(x: np.ndarray, t: np.ndarray, plates: np.ndarray, score) -> float:
    """Fit a ridge on half the plates, score on the other half; the penalty is chosen between the two training
    plates (one fits, the other validates), never on the scored plates."""
    names = sorted(set(plates))
    tr, te = np.isin(plates, names[:len(names) // 2]), np.isin(plates, names[len(names) // 2:])
    a, b = plates == names[0], plates == names[1]
    lams = 10.0 ** np.arange(-1, 5)
    lam = max(lams, key=lambda lam: score(ridge_fit_predict(x[a], t[a], x[b], lam), t[b]))
    return score(ridge_fit_predict(x[tr], t[tr], x[te], lam), t[te])


def balanced_sign_accuracy(pred: np.ndarray, t: np.ndarray) -> float:
    hit = np.sign(pred) == t
    return float(np.mean([hit[t == c].mean() for c in (-1.0, 1.0)]))


def r2(pred: np.ndarray, t: np.ndarray) -> float:
    return float(1.0 - ((pred - t) ** 2).sum() / ((t - t.mean()) ** 2).sum())


def held_out_figures(embedder, ho: HeldOut) -> Figures:
    """Figures of one embedder through the profiling path: whole 96-px fields as one tile, fluorescent mean,
    CLS → site features (k-NN, probe, gamma R²) → well profiles → negcon-MAD → copairs."""
    s = EmbedSettings(tile=96, tokens="cls", device="cpu")
    sites, names = embed_sites(ho.fields, FieldReader(str(ho.root), s), embedder, s)
    x = sites[names].to_numpy(np.float64, copy=True)
    z = (x - x.mean(0)) / (x.std(0) + 1e-9)
    if isinstance(embedder, BaselineEmbedder):  # statistics on different scales: z-score before the cosine
        x = z
    acc = knn_accuracy(F.normalize(torch.from_numpy(x).float(), dim=-1), ho.y, ho.groups)
    wells = annotate(aggregate_wells(sites, names, s.well_aggregation), ho.meta)
    ev = evaluate_profiles(wells, EvalSettings(null_size=10_000, matching=False), source=str(ho.root))
    labels = np.where(ho.y == ho.y[0], 1.0, -1.0)
    # targets ±1/class share: least squares on them gives Fisher's discriminant, each class weighing equally
    weights = np.where(labels > 0, 1.0 / (labels > 0).mean(), 1.0 / (labels < 0).mean())
    return Figures(acc, ev.tasks["replicate_retrieval"].summary["mean_map"],
                   cross_plate(z, labels * weights, ho.plates,
                               lambda pred, t: balanced_sign_accuracy(pred, np.sign(t))),
                   cross_plate(z, ho.log_gamma, ho.plates, r2))


def cls_features(backbone, imgs: np.ndarray) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        x = backbone.normalize_input(torch.from_numpy(imgs)[:, None])
        return F.normalize(backbone.forward_tokens(x)["cls"], dim=-1)


def knn_accuracy(x: torch.Tensor, y: np.ndarray, groups: np.ndarray, k: int = 5) -> float:
    """Leave-one-well-out k-NN (cosine) balanced accuracy: neighbours never come from the query's own well, and
    each phenotype's recall counts equally, so chance is 0.5 (70 % of the held-out sites look like DMSO: plain
    accuracy would give "always DMSO" 0.70)."""
    sim = x @ x.t()
    pred = []
    for i in range(len(y)):
        s = sim[i].clone()
        s[torch.from_numpy(groups == groups[i])] = -2.0
        values, counts = np.unique(y[s.topk(k).indices.numpy()], return_counts=True)
        pred.append(values[counts.argmax()])
    hit = np.array(pred) == y
    return float(np.mean([hit[y == c].mean() for c in np.unique(y)]))


def demo_config(root: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, DEMO, [f"data.root={root}", "train.progress=false", "data.num_workers=0",
                                              *extra])


def signal_figures(run: Path) -> dict[str, tuple[float, float, float]]:
    """(first logged, mean of the second half, last logged) of each signal."""
    recs = read_metrics(run / "metrics.jsonl")
    half = recs[len(recs) // 2:]
    keys = ("loss_dino", "loss_ibot", "teacher_entropy", "teacher_batch_entropy", "teacher_view_agreement",
            "loss_koleo")
    return {k: (recs[0][k], float(np.mean([r[k] for r in half])), recs[-1][k]) for k in keys}


def test_pretraining_learns_and_beats_random_vits(nuisance_roots, tmp_path, capsys):
    train_root, held_out = nuisance_roots
    cfg = demo_config(train_root)
    ho = held_out_set(held_out, seed=1, plates=4)
    init = Trainer(cfg, torch.device("cpu"), DistInfo()).teacher.backbone  # the run's own init (same seed)
    figs = {"its init": held_out_figures(BackboneEmbedder(init, torch.device("cpu")), ho)}
    for ls in (1e-5, 0.1, 1.0):
        torch.manual_seed(1)
        vit = load_backbone(cfg.model.arch, cfg.model.patch_size, init_values=ls, **cfg.model.kwargs)
        figs[f"random ViT LayerScale {ls:g}"] = held_out_figures(BackboneEmbedder(vit, torch.device("cpu")), ho)
    hand = held_out_figures(BaselineEmbedder(), ho)
    run_pretraining(cfg, tmp_path / "run")
    trained = load_backbone(cfg.model.arch, cfg.model.patch_size, weights=tmp_path / "run", **cfg.model.kwargs)
    pre = held_out_figures(BackboneEmbedder(trained, torch.device("cpu")), ho)
    sig = signal_figures(tmp_path / "run")
    ln_k = math.log(cfg.heads.out_dim)
    best_acc = max(f.knn for f in figs.values())
    best_map = max(f.mean_map for f in figs.values())
    with capsys.disabled():
        print(f"\nlearning signal over {cfg.train.total_steps} steps (ln heads.out_dim = {ln_k:.3f}; first → "
              "mean of the second half → last):")
        for k, (a, m, b) in sig.items():
            print(f"  {k:<22} {a:.3f} → {m:.3f} → {b:.3f}")
        print(f"held-out plates ({len(ho.y)} fields, {len(set(ho.groups))} wells, per-field gamma): site k-NN "
              "phenotype balanced accuracy (leave-one-well-out, k=5, chance 0.5), replicate-retrieval mean mAP "
              "(copairs), and on the other 2 plates from a ridge fitted on 2: phenotype probe (balanced accuracy) "
              "and R² of log gamma (the imaging nuisance the features carry):")
        for name, f in [("pretrained", pre), *figs.items(), ("hand-crafted stats", hand)]:
            print(f"  {name:<28} k-NN {f.knn:.3f}   mAP {f.mean_map:.3f}   probe {f.probe:.3f}   "
                  f"gamma R² {f.gamma_r2:.3f}")
    # 1. DINO/iBOT carry signal (no longer pinned at ln K and ln K / 2), without collapse: the student predicts
    #    the teacher clearly better than a uniform guess, the two views of a field often share their top prototype
    #    (1/K for unrelated targets; 0.00 without loss.sinkhorn_queue), and the rows of a batch differ (batch minus
    #    row entropy = their mutual information with the prototype; 0 when every image gets the same target)
    assert sig["teacher_entropy"][1] < ln_k - 0.4
    assert sig["loss_dino"][1] < ln_k - 0.5
    assert sig["loss_ibot"][1] < 0.5 * ln_k - 0.2
    assert sig["teacher_view_agreement"][1] > 0.1
    assert sig["teacher_batch_entropy"][1] > sig["teacher_entropy"][1] + 0.3
    # 2. the representation claim is not met by this short CPU run (docs/pretraining.md): reported as an expected
    #    failure with the figures, never as a pass; the day it holds the test passes outright
    if pre.knn < best_acc + MARGIN or pre.mean_map <= best_map:
        pytest.xfail(f"pretrained k-NN {pre.knn:.3f} / mAP {pre.mean_map:.3f} does not beat the best of init/random "
                     f"ViTs (k-NN {best_acc:.3f} + {MARGIN}, mAP {best_map:.3f})")


def test_continued_pretraining_p16_export_then_p8_warm_start(pheno_root, tmp_path, capsys):
    """The real run's path on CPU: pretrain a tiny ViT at patch 16 (stand-in for the public ViT-S/16), export it
    in the official DINOv3 layout, continue at patch 8 from the .pth (PI-resized kernel, fresh heads) with the
    heads-first warm start; checkpoint at the unfreeze to compare the features before and after."""
    p16 = demo_config(pheno_root, "model.patch_size=16", "train.epochs=1")
    run16 = tmp_path / "p16"
    run_pretraining(p16, run16)
    pth = export_backbone(run16, tmp_path / "export" / "tiny_p16")[0]
    sd = torch.load(pth, weights_only=True)
    assert sd["patch_embed.proj.weight"].shape[-1] == 16 and "storage_tokens" in sd

    frozen, ramp = 30, 10
    cont = demo_config(pheno_root, f"model.weights={pth}", "model.patch_size=8", "train.epochs=1",
                       f"train.steps_per_epoch={frozen + ramp + 20}", "train.log_every=5",
                       f"train.checkpoint_every={frozen}", "train.keep_last=5",
                       f"warm_start.freeze_backbone_steps={frozen}", f"warm_start.backbone_ramp_steps={ramp}",
                       "optim.warmup_epochs=0.1", "optim.freeze_last_layer_epochs=0.05")
    run8 = tmp_path / "p8"
    run_pretraining(cont, run8)
    recs = read_metrics(run8 / "metrics.jsonl")
    dino_frozen = [r["loss_dino"] for r in recs if r["step"] <= frozen]
    assert all(r["backbone_lr_factor"] == 0.0 for r in recs if r["step"] < frozen)
    imgs, y, groups = field_images(pheno_root)
    kw = cont.model.kwargs
    mgr = CheckpointManager(run8 / "checkpoints")
    at_unfreeze = load_backbone("vit_test", 8, weights=mgr.path_for(frozen), **kw)
    final = load_backbone("vit_test", 8, weights=run8, **kw)
    p8_from_export = load_backbone("vit_test", 8, weights=pth, **kw)
    acc16 = knn_accuracy(cls_features(load_backbone("vit_test", 16, weights=run16, **kw), imgs), y, groups)
    acc_unfreeze = knn_accuracy(cls_features(at_unfreeze, imgs), y, groups)
    acc_final = knn_accuracy(cls_features(final, imgs), y, groups)
    with capsys.disabled():
        print(f"\ncontinued pretraining (p16 {p16.train.total_steps} steps → export → p8: {frozen} frozen + {ramp} "
              f"ramp + {cont.train.total_steps - frozen - ramp} steps): loss_dino while frozen (steps 5…{frozen}) "
              + " ".join(f"{x:.3f}" for x in dino_frozen)
              + f"; k-NN p16 {acc16:.3f}, p8 at unfreeze (= the export) {acc_unfreeze:.3f}, after unfreezing "
              f"{acc_final:.3f}")
    # the frozen phase trains only the heads: the backbone at the unfreeze is the exported one (EMA of equal weights)
    ref = p8_from_export.state_dict()
    for k, v in at_unfreeze.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=1e-5, atol=1e-6, msg=k)
    assert dino_frozen[-1] < dino_frozen[0] - 0.2  # the heads learn before the backbone moves
    assert acc_final >= acc_unfreeze - 0.05  # no k-NN collapse after unfreezing
