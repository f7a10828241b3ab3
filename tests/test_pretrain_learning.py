"""Pretraining demonstrably learns (configs/pretrain_demo.yaml on the synthetic fixture, CPU):

1. DINO and iBOT carry signal: loss_dino and teacher_entropy fall clearly below ln(heads.out_dim) while
   teacher_batch_entropy stays near it (every prototype still used: no collapse);
2. the pretrained backbone must beat its own init and random ViTs (LayerScale 1e-5, 0.1, 1.0) by MARGIN on a
   held-out task that random features do not solve — the fixture's phenotypes differ only in organelle pattern —
   with a hand-crafted intensity/texture baseline printed for context. NOT met yet by the 80-step CPU run: the test
   prints the figures and reports an expected failure (xfail) until it is;
3. continued pretraining: a tiny ViT pretrained at patch 16, exported in the official layout, continued at patch 8
   through the heads-first warm start: the DINO loss falls while the backbone is frozen, and the features are no
   worse after unfreezing than before (the dinov2#204 failure).

Task: leave-one-well-out k-NN (k=5, cosine) of the CLS of whole 96-px fields (fluorescent mean, native pixels).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinocell_core.backbone import load_backbone
from dinocell_core.config import load_config
from dinocell_core.io.checkpoint import CheckpointManager
from dinocell_core.jump.fixture import (
    find_source_root,
    make_jump_fixture,
    phenotype_table,
)
from dinocell_core.runs.distributed import DistInfo
from dinocell_core.runs.rundir import read_metrics
from dinocell_core.ssl.config import DataConfig, PretrainConfig
from dinocell_core.ssl.data import build_ssl_dataset
from dinocell_core.ssl.export import export_backbone
from dinocell_core.ssl.trainer import Trainer, run_pretraining

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "pretrain_demo.yaml"
MARGIN = 0.10  # the pretrained backbone must beat every baseline ViT by this much k-NN accuracy


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


def cls_features(backbone, imgs: np.ndarray) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        x = backbone.normalize_input(torch.from_numpy(imgs)[:, None])
        return F.normalize(backbone.forward_tokens(x)["cls"], dim=-1)


def handcrafted_features(imgs: np.ndarray) -> torch.Tensor:
    """Intensity and texture statistics: mean, std, percentiles, gradient and Laplacian energy (z-scored)."""
    rows = []
    for t in imgs:
        gm = np.hypot(cv2.Sobel(t, cv2.CV_32F, 1, 0), cv2.Sobel(t, cv2.CV_32F, 0, 1))
        lap = cv2.Laplacian(t, cv2.CV_32F)
        rows.append([t.mean(), t.std(), *np.percentile(t, [10, 50, 90, 99]), gm.mean(), gm.std(),
                     np.abs(lap).mean(), lap.std()])
    a = np.asarray(rows, dtype=np.float64)
    a = (a - a.mean(0)) / (a.std(0) + 1e-9)
    return F.normalize(torch.from_numpy(a).float(), dim=-1)


def knn_accuracy(x: torch.Tensor, y: np.ndarray, groups: np.ndarray, k: int = 5) -> float:
    """Leave-one-well-out k-NN (cosine): neighbours never come from the query's own well."""
    sim = x @ x.t()
    correct = 0
    for i in range(len(y)):
        s = sim[i].clone()
        s[torch.from_numpy(groups == groups[i])] = -2.0
        values, counts = np.unique(y[s.topk(k).indices.numpy()], return_counts=True)
        correct += int(values[counts.argmax()] == y[i])
    return correct / len(y)


def demo_config(root: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, DEMO, [f"data.root={root}", "train.progress=false", "data.num_workers=0",
                                              *extra])


def signal_figures(run: Path) -> dict[str, tuple[float, float, float]]:
    """(first logged, mean of the second half, last logged) of each signal."""
    recs = read_metrics(run / "metrics.jsonl")
    half = recs[len(recs) // 2:]
    keys = ("loss_dino", "loss_ibot", "teacher_entropy", "teacher_batch_entropy", "loss_koleo")
    return {k: (recs[0][k], float(np.mean([r[k] for r in half])), recs[-1][k]) for k in keys}


def test_pretraining_learns_and_beats_random_vits(pheno_root, tmp_path, capsys):
    cfg = demo_config(pheno_root)
    imgs, y, groups = field_images(pheno_root)
    init = Trainer(cfg, torch.device("cpu"), DistInfo()).teacher.backbone  # the run's own init (same seed)
    acc_init = knn_accuracy(cls_features(init, imgs), y, groups)
    run_pretraining(cfg, tmp_path / "run")
    trained = load_backbone(cfg.model.arch, cfg.model.patch_size, weights=tmp_path / "run", **cfg.model.kwargs)
    acc = knn_accuracy(cls_features(trained, imgs), y, groups)
    acc_random = {}
    for ls in (1e-5, 0.1, 1.0):
        torch.manual_seed(1)
        acc_random[ls] = knn_accuracy(cls_features(load_backbone(cfg.model.arch, 8, init_values=ls), imgs), y, groups)
    acc_hand = knn_accuracy(handcrafted_features(imgs), y, groups)
    sig = signal_figures(tmp_path / "run")
    ln_k = math.log(cfg.heads.out_dim)
    best = max(acc_init, *acc_random.values())
    with capsys.disabled():
        print(f"\nlearning signal over {cfg.train.total_steps} steps (ln heads.out_dim = {ln_k:.3f}; first → "
              "mean of the second half → last):")
        for k, (a, m, b) in sig.items():
            print(f"  {k:<22} {a:.3f} → {m:.3f} → {b:.3f}")
        print(f"k-NN phenotype accuracy (leave-one-well-out, k=5, {len(y)} fields, chance 0.5): pretrained {acc:.3f}"
              f" | its init {acc_init:.3f} | random ViT LayerScale 1e-5 {acc_random[1e-5]:.3f}, 0.1 "
              f"{acc_random[0.1]:.3f}, 1.0 {acc_random[1.0]:.3f} | hand-crafted stats {acc_hand:.3f}")
    # 1. DINO/iBOT carry signal (no longer pinned at ln K and ln K / 2), without collapse
    assert sig["teacher_entropy"][1] < ln_k - 0.4
    assert sig["loss_dino"][1] < ln_k
    assert sig["loss_ibot"][1] < 0.5 * ln_k - 0.2
    assert sig["teacher_batch_entropy"][1] > ln_k - 0.5
    # 2. the representation claim is not met by this short CPU run (docs/pretraining.md): reported as an expected
    #    failure with the figures, never as a pass; the day it holds the test passes outright
    if acc < best + MARGIN:
        pytest.xfail(f"pretrained k-NN {acc:.3f} does not beat the best of init/random ViTs ({best:.3f}) by {MARGIN}")


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
