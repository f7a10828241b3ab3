"""Pretraining runs on the real fixture and data loader: resume after SIGKILL, SIGTERM, corruption, export,
NaN guard, warm start, resume without the original weights, native-pixel crops (learning: test_pretrain_learning)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dinocell_core.backbones.loading import load_backbone
from dinocell_core.backbones.vit import WeightsError
from dinocell_core.config import ConfigError, load_config
from dinocell_core.io.checkpoint import CheckpointError, CheckpointManager, load_state
from dinocell_core.runs.distributed import DistInfo
from dinocell_core.runs.rundir import RunDir, read_metrics
from dinocell_core.ssl.config import PretrainConfig
from dinocell_core.ssl.data import make_ssl_loader
from dinocell_core.ssl.export import export_backbone
from dinocell_core.ssl.trainer import Trainer, run_pretraining
from tests.helpers import REPO
from tests.helpers.pretrain import (
    DEMO,
    comparable,
    pretrain_command,
    subprocess_env,
    tiny_config,
    tiny_overrides,
    wait_for_step,
)


@pytest.mark.slow
def test_resume_after_sigkill_continues_identically(fixture_root, tmp_path):
    steps = 14
    ov = tiny_overrides(fixture_root, steps, **{"train.checkpoint_every": 3})
    full = tmp_path / "full"
    subprocess.run(pretrain_command(full, ov), check=True, env=subprocess_env(), capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(pretrain_command(killed, ov), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_step(killed, proc, 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert RunDir(killed).read_status()["state"] == "running"  # a hard kill leaves no chance to clean up
    ckpt_step = max(CheckpointManager(killed / "checkpoints").steps())
    assert 3 <= ckpt_step < steps
    subprocess.run(pretrain_command(killed, ov), check=True, env=subprocess_env(), capture_output=True, timeout=300)

    a = comparable(read_metrics(full / "metrics.jsonl"))
    b = comparable(read_metrics(killed / "metrics.jsonl"))
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))  # no duplicates, no gaps
    for step in a:
        assert a[step] == b[step], f"step {step} differs after resume from step {ckpt_step}"
    assert RunDir(killed).read_status()["state"] == "finished"
    sa = load_state(CheckpointManager(full / "checkpoints").latest())
    sb = load_state(CheckpointManager(killed / "checkpoints").latest())
    for k, v in sa["teacher"]["backbone"].items():
        assert torch.equal(v, sb["teacher"]["backbone"][k]), k


@pytest.mark.slow
def test_sigterm_checkpoints_and_stops(fixture_root, tmp_path):
    run = tmp_path / "run"
    ov = tiny_overrides(fixture_root, 400, **{"train.checkpoint_every": 1000})
    proc = subprocess.Popen(pretrain_command(run, ov), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_step(run, proc, 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    status = RunDir(run).read_status()
    assert status["state"] == "stopped"
    ckpt = Path(status["last_checkpoint"])
    state = load_state(ckpt)
    assert state["step"] == status["step"] >= 2
    assert load_backbone("vit_test", 8, weights=run, depth=2).embed_dim == 192


@pytest.mark.slow
def test_corrupted_checkpoint_is_detected(fixture_root, tmp_path):
    cfg = tiny_config(fixture_root, 8, **{"train.tensorboard": True})
    run_pretraining(cfg, tmp_path / "run")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    mgr = CheckpointManager(tmp_path / "run" / "checkpoints")
    assert mgr.steps() == [4, 8]
    newest = mgr.path_for(8)
    data = bytearray(newest.read_bytes())
    data[-100] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_state(newest)
    with pytest.raises(WeightsError, match="sha256"):
        load_backbone("vit_test", 8, weights=newest, depth=2)
    assert mgr.latest() == mgr.path_for(4)  # a resume falls back to the last good checkpoint


@pytest.mark.slow
def test_resume_refuses_a_changed_config(fixture_root, tmp_path):
    run_pretraining(tiny_config(fixture_root, 4), tmp_path / "run")
    with pytest.raises(ConfigError, match="heads.out_dim"):
        run_pretraining(tiny_config(fixture_root, 4, **{"heads.out_dim": 128}), tmp_path / "run")
    # more epochs is a legal change: the run continues from its last checkpoint
    run_pretraining(tiny_config(fixture_root, 4, **{"train.epochs": 2}), tmp_path / "run")
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 9))


@pytest.mark.slow
def test_export_backbone_official_layout(fixture_root, tmp_path):
    run = tmp_path / "run"
    run_pretraining(tiny_config(fixture_root, 4), run)
    out = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "export-backbone", str(run), "-o",
                          str(tmp_path / "exp" / "bb.pth")], check=True, capture_output=True, text=True, env=subprocess_env())
    paths = [Path(p) for p in out.stdout.split()]
    assert [p.suffix for p in paths] == [".pth", ".safetensors", ".json"]
    sd = torch.load(paths[0], weights_only=True)
    assert "storage_tokens" in sd and "blocks.1.attn.qkv.bias_mask" in sd and "rope_embed.periods" in sd
    assert len(sd) == 6 + 2 * 15 + 2
    meta = json.loads(paths[2].read_text())
    assert meta["arch"] == "vit_test" and meta["patch_size"] == 8 and meta["step"] == 4
    ref = load_backbone("vit_test", 8, weights=run, depth=2).eval()
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        want = ref.forward_tokens(x)["patches"]
        for p in paths[:2]:
            got = load_backbone("vit_test", 8, weights=p, depth=2).eval().forward_tokens(x)["patches"]
            assert torch.equal(got, want), p


def _one_batch(cfg: PretrainConfig) -> dict:
    return next(iter(make_ssl_loader(cfg.data, cfg.model.patch_size, cfg.train.batch_size, cfg.seed, steps=1)))


def test_nonfinite_steps_are_skipped_then_stop(fixture_root):
    cfg = tiny_config(fixture_root, 10, **{"train.max_nonfinite": 2})
    trainer = Trainer(cfg, torch.device("cpu"), DistInfo())
    batch = _one_batch(cfg)
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    bad = {**batch, "global": batch["global"].clone()}
    bad["global"][0, 0, 0, 0, 0] = float("nan")
    _, _, finite = trainer.train_step(bad, 0)
    assert not finite
    for k, v in trainer.student.state_dict().items():
        assert torch.equal(v, before[k]), k  # nothing was updated
    assert trainer.queue is not None and trainer.queue.rows is None  # no NaN teacher row joins the Sinkhorn queue
    _, _, finite = trainer.train_step(batch, 1)
    assert finite and trainer.guard.streak == 0
    assert trainer.queue.rows is not None and bool(torch.isfinite(trainer.queue.rows).all())
    trainer.train_step(bad, 2)
    with pytest.raises(FloatingPointError, match="2 consecutive"):
        trainer.train_step(bad, 3)


def test_warm_start_trains_heads_on_a_frozen_backbone(fixture_root):
    cfg = tiny_config(fixture_root, 10, **{"warm_start.freeze_backbone_steps": 2,
                                           "warm_start.backbone_ramp_steps": 2, "optim.warmup_epochs": 0})
    trainer = Trainer(cfg, torch.device("cpu"), DistInfo())
    batch = _one_batch(cfg)
    bb0 = {k: v.clone() for k, v in trainer.student.backbone.state_dict().items()}
    head0 = trainer.student.dino_head.mlp[0].weight.clone()
    for step in range(2):
        terms, v, _ = trainer.train_step(batch, step)
        assert v.backbone_factor == 0.0 and terms["grad_norm_backbone"] == 0.0
    for k, t in trainer.student.backbone.state_dict().items():
        assert torch.equal(t, bb0[k]), k
    assert not torch.equal(trainer.student.dino_head.mlp[0].weight, head0)
    terms, v, _ = trainer.train_step(batch, 2)
    assert v.backbone_factor == pytest.approx(0.5) and terms["grad_norm_backbone"] > 0
    assert not torch.equal(trainer.student.backbone.vit.blocks[0].mlp.fc1.weight, bb0["vit.blocks.0.mlp.fc1.weight"])


@pytest.mark.slow
def test_resume_does_not_need_the_original_weights_file(fixture_root, tmp_path):
    """A run started from a .pth resumes from its checkpoint (which holds every weight) after the .pth moved."""
    src = tmp_path / "src"
    run_pretraining(tiny_config(fixture_root, 4), src)
    pth = tmp_path / "w" / "start.pth"
    export_backbone(src, pth)
    run = tmp_path / "run"
    run_pretraining(tiny_config(fixture_root, 4, **{"model.weights": str(pth)}), run)
    moved = pth.with_name("moved.pth")
    pth.rename(moved)
    with pytest.raises(WeightsError):  # a fresh run still needs its weights ...
        run_pretraining(tiny_config(fixture_root, 4, **{"model.weights": str(pth)}), tmp_path / "fresh")
    run_pretraining(tiny_config(fixture_root, 4, **{"model.weights": str(pth), "train.epochs": 2}), run)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 9))  # ... a resume does not


def test_native_pixel_crops_reach_the_loader(fixture_root):
    cfg = tiny_config(fixture_root, 2, **{"data.global_crop_px": "[32, 32]", "data.local_crop_px": "[16, 16]"})
    batch = _one_batch(cfg)
    assert batch["global"].shape[-2:] == (32, 32) and batch["local"].shape[-2:] == (16, 16)
    assert len(set(batch["fields"])) == 2  # batch 4, crops_per_field 2: KoLeo has a neighbour in another field


def test_recipe_config_is_the_a100_recipe():
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain_vits8_jump.yaml")
    m, d, t, o = cfg.model, cfg.data, cfg.train, cfg.optim
    assert (m.arch, m.patch_size, m.drop_path_rate, m.drop_path_profile) == ("vit_small", 8, 0.1, "uniform")
    assert m.weights.endswith("dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
    assert (o.lr, o.scaling_rule, t.epochs, t.steps_per_epoch, t.batch_size, t.precision) == (
        5e-5, "sqrt_wrt_1024", 80, 1000, 48, "bf16")
    assert (d.global_size, d.local_size, d.n_local, d.channel_mode) == (224, 96, 8, "fluorescent_mean")
    assert tuple(d.global_scale) == (0.4, 1.0) and tuple(d.local_scale) == (0.05, 0.4)
    assert (cfg.teacher.momentum, cfg.teacher.momentum_end) == (0.996, 1.0)
    lc = cfg.loss
    assert (lc.warmup_teacher_temp, lc.teacher_temp, lc.warmup_teacher_temp_epochs) == (0.04, 0.07, 10)
    assert (o.weight_decay, o.weight_decay_end) == (0.04, 0.2)
    assert (cfg.heads.out_dim, cfg.heads.ibot_out_dim, cfg.heads.hidden_dim, cfg.heads.bottleneck_dim) == (
        2048, 65536, 2048, 256)  # one GPU: fewer DINO prototypes (Sinkhorn floor, docs/pretraining.md)
    assert (o.warmup_epochs, o.freeze_last_layer_epochs) == (0.5, 0.25)
    assert (cfg.warm_start.freeze_backbone_steps, cfg.warm_start.backbone_ramp_steps) == (4000, 2000)
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        load_config(PretrainConfig, DEMO, ["train.batch_size=1"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(PretrainConfig, DEMO, ["optim.lr_typo=1"])


def test_compile_is_applied_and_matches_eager(fixture_root):
    """train.compile=true really compiles both backbones (torch.compile on CPU here) and changes no output."""
    from dinocell_core.ssl.trainer import prepare_batch

    outputs = []
    for compile_ in (False, True):
        cfg = tiny_config(fixture_root, 2, **{"train.compile": compile_, "model.drop_path_rate": 0.0,
                                              "model.rope_rescale_coords": "null"})  # train mode: no randomness
        trainer = Trainer(cfg, torch.device("cpu"), DistInfo())
        compiled = [m.backbone._compiled_call_impl is not None for m in (trainer.student, trainer.teacher)]
        assert compiled == [compile_, compile_]
        batch = next(iter(make_ssl_loader(cfg.data, cfg.model.patch_size, cfg.train.batch_size, 0, num_workers=0,
                                          steps=1)))
        g, lc, masks, *_ = prepare_batch(batch, trainer.device, trainer.student.backbone.normalize_input)
        with torch.no_grad():
            outputs.append((trainer.teacher.teacher_forward(g, masks), trainer.student(g, lc, masks)))
    (t_eager, s_eager), (t_comp, s_comp) = outputs
    for key in ("cls_global", "dino_logits", "ibot_logits"):
        torch.testing.assert_close(t_comp[key], t_eager[key], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s_comp[key], s_eager[key], rtol=1e-4, atol=1e-5)
