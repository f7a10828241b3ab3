"""`dinocell-core pretrain CONFIG --plan OUT.json`: schedule milestones and cost without data, weights or torch;
the heads-first warm start of the recipes is checked on the plan itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dinocell_core.config import ConfigError, load_config
from dinocell_core.ssl.config import PretrainConfig
from dinocell_core.ssl.plan import milestones, plan_table
from dinocell_core.ssl.schedules import schedule_spec, values_at
from tests.helpers import REPO

RECIPE = REPO / "configs" / "pretrain_vits8_jump.yaml"
KEYS = ["step", "lr", "last_layer_lr", "backbone_lr_factor", "wd", "momentum", "teacher_temp"]


def test_plan_cli_writes_the_json_contract_without_data_or_torch(tmp_path):
    out = tmp_path / "plan" / "a100.json"
    code = ("import sys; sys.argv[1:] = ['pretrain', sys.argv[1], 'data.root=/nonexistent', "
            "'model.weights=/nonexistent.pth', '--plan', sys.argv[2]]; "
            "from dinocell_core.cli import main; rc = main(sys.argv[1:]); assert rc == 0, rc; "
            "assert 'torch' not in sys.modules, 'the plan imported torch'")
    proc = subprocess.run([sys.executable, "-c", code, str(RECIPE), str(out)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})  # the count: a torch child
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(proc.stdout)
    plan = json.loads(out.read_text())
    assert list(plan) == [*KEYS, "peak_memory_gb", "step_s", "hardware"]
    # issue 24 item 3: counted peak memory and the modelled step per GPU (bf16, batch 48, unfrozen backbone)
    assert 25 < plan["peak_memory_gb"] < 60 and set(plan["step_s"]) == {"A100-40", "A100-80", "H100"}
    assert plan["step_s"]["H100"] < plan["step_s"]["A100-80"] < plan["step_s"]["A100-40"] < 1.0
    assert plan["hardware"]["host_syncs_per_step"] == 1 and plan["hardware"]["fits"]["A100-80"]
    assert "peak memory" in proc.stdout and "A100-40" in proc.stdout
    n = len(plan["step"])
    assert all(len(plan[k]) == n for k in KEYS)
    assert plan["step"][:3] == [0, 10, 20] and plan["step"][-1] == 79_999 and n == 8001
    cfg = load_config(PretrainConfig, RECIPE)
    spec = schedule_spec(cfg, 1)
    i = plan["step"].index(5000)
    v = values_at(spec, 5000)
    assert (plan["lr"][i], plan["backbone_lr_factor"][i], plan["teacher_temp"][i]) == (
        v.lr, v.backbone_factor, v.teacher_temp)
    for word in ("backbone unfreezes", "LR warm-up ends", "prototypes", "3,840,000 samples", "last step"):
        assert word in proc.stdout, word
    assert "WARNING" not in proc.stdout


def test_recipe_heads_first_phase_trains_heads_at_full_lr():
    """While the backbone is frozen the heads reach the peak LR and the prototypes train before the unfreeze;
    then the backbone factor ramps from ~0 to 1 (the recipe flaw of the issue: LR 0 on the last layer and ≤ 10 %
    on the MLPs for the whole frozen phase)."""
    spec = schedule_spec(load_config(PretrainConfig, RECIPE), 1)
    plan = plan_table(spec)
    steps = plan["step"]
    frozen = [i for i, s in enumerate(steps) if s < spec.freeze_backbone_steps]
    assert all(plan["backbone_lr_factor"][i] == 0.0 for i in frozen)
    assert max(plan["lr"][i] for i in frozen) >= 0.99 * spec.lr
    assert sum(plan["last_layer_lr"][i] > 0 for i in frozen) >= 0.9 * len(frozen)
    unfreeze = spec.freeze_backbone_steps
    assert 0 < values_at(spec, unfreeze).backbone_factor < 0.01
    assert values_at(spec, unfreeze + spec.backbone_ramp_steps).backbone_factor == 1.0
    ms = {what: step for step, what in milestones(spec)}
    assert ms["LR warm-up ends (peak LR)"] < ms["backbone unfreezes (LR ramp starts)"]


def test_a_warm_start_that_never_trains_the_heads_is_refused():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        load_config(PretrainConfig, RECIPE, ["optim.warmup_epochs=10"])
    with pytest.raises(ConfigError, match="freeze_last_layer_epochs"):
        load_config(PretrainConfig, RECIPE, ["optim.freeze_last_layer_epochs=5"])
    with pytest.raises(ConfigError, match="crops_per_field"):
        load_config(PretrainConfig, RECIPE, ["train.batch_size=2", "data.crops_per_field=2"])


def test_a100_recipe_sees_cells_at_decoder_scale():
    """Native-pixel crops and blur σ ≤ 0.5 px: the 1–2-px organelles that carry the phenotype stay visible."""
    cfg = load_config(PretrainConfig, RECIPE)
    lo, hi = cfg.data.global_crop_px
    assert cfg.data.global_size / hi >= 0.7 and cfg.data.global_size / lo <= 1.0  # 0.7–1.0× native scale
    lo, hi = cfg.data.local_crop_px
    assert cfg.data.local_size / hi >= 0.6 and cfg.data.local_size / lo <= 1.0
    assert cfg.data.augment.blur_sigma[1] <= 0.5
    assert cfg.model.drop_path_profile == "uniform" and cfg.heads.out_dim == 2048


def test_gpu_refuses_a_config_that_does_not_fit(tmp_path):
    """--gpu NAME: a config whose counted peak memory does not fit the card is refused before any data is read
    (the data root does not exist), with the largest batch that fits; one that fits goes on."""
    out = tmp_path / "plan.json"
    base = [sys.executable, "-m", "dinocell_core.cli", "pretrain", str(RECIPE), "data.root=/nonexistent",
            "model.weights=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*base, "train.batch_size=64", "--plan", str(out), "--gpu", "A100-40"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "does not fit on A100-40" in proc.stderr and "largest batch that fits" in proc.stderr
    assert not out.exists()
    proc = subprocess.run([*base, "train.batch_size=64", "--run-dir", str(tmp_path / "run"), "--gpu", "A100-40"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 2 and "does not fit" in proc.stderr  # training: refused before the loader starts
    assert not (tmp_path / "run" / "checkpoints").exists()
    proc = subprocess.run([*base, "train.batch_size=32", "--plan", str(out), "--gpu", "A100-40"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["hardware"]["fits"]["A100-40"]
