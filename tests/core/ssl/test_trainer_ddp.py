"""Two-process DDP pretraining (gloo on CPU) through a real ``torchrun`` subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dinocell_core.backbones.loading import load_backbone
from dinocell_core.io.checkpoint import CheckpointManager, load_state
from dinocell_core.runs.rundir import RunDir, read_metrics
from dinocell_core.ssl.optim import scaled_lr
from tests.helpers.pretrain import DEMO, subprocess_env, tiny_overrides

pytestmark = pytest.mark.slow  # trains a model


def test_ddp_two_processes(fixture_root, tmp_path):
    run = tmp_path / "ddp"
    ov = tiny_overrides(fixture_root, 6, **{"train.checkpoint_every": 3})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dinocell_core.cli", "pretrain", str(DEMO), *ov, "--run-dir", str(run)]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = RunDir(run).read_status()
    assert status["state"] == "finished" and status["world_size"] == 2 and status["step"] == 6
    recs = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 7))  # rank 0 alone writes the metrics
    assert recs[-1]["samples_per_s"] > 0
    assert (run / "run.log").is_file() and (run / "run.rank1.log").is_file()
    mgr = CheckpointManager(run / "checkpoints")
    assert mgr.steps() == [3, 6]
    state = load_state(mgr.latest())
    assert state["world_size"] == 2
    # the LR scaling rule saw the global batch (2 ranks × 4): peak after the 3-step warmup
    assert recs[0]["lr"] == 0.0
    assert recs[3]["lr"] == pytest.approx(scaled_lr(0.002, "sqrt_wrt_1024", 8), rel=1e-9)
    bb = load_backbone("vit_test", 8, weights=run, depth=2)
    assert all(torch.isfinite(p).all() for p in bb.parameters())


def test_ddp_warm_start_rewraps_without_unused_parameter_search(fixture_root, tmp_path):
    """Frozen backbone (DDP must search for unused parameters), then the unfreeze: the wrapper is rebuilt without
    the search and training continues on both ranks; the frozen steps leave the backbone untouched."""
    run = tmp_path / "ddp_ws"
    ov = tiny_overrides(fixture_root, 6, **{"train.checkpoint_every": 2, "train.keep_last": 5,
                                            "warm_start.freeze_backbone_steps": 2,
                                            "warm_start.backbone_ramp_steps": 2, "optim.warmup_epochs": 0,
                                            "optim.freeze_last_layer_epochs": 0})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dinocell_core.cli", "pretrain", str(DEMO), *ov, "--run-dir", str(run)]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = read_metrics(run / "metrics.jsonl")
    assert [r["backbone_lr_factor"] for r in recs] == [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    assert recs[0]["grad_norm_backbone"] == 0.0 and recs[-1]["grad_norm_backbone"] > 0
    mgr = CheckpointManager(run / "checkpoints")
    frozen, final = load_state(mgr.path_for(2)), load_state(mgr.path_for(6))
    w = "vit.blocks.0.mlp.fc1.weight"
    assert not torch.equal(frozen["student"]["backbone"][w], final["student"]["backbone"][w])
