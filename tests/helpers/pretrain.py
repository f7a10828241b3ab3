"""Tiny pretraining configs on the fixture, the CLI command that runs one, and waiting on a running one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from dinocell_core.config import load_config
from dinocell_core.runs.rundir import read_metrics
from dinocell_core.ssl.config import PretrainConfig
from tests.helpers import REPO

DEMO = REPO / "configs" / "pretrain_demo.yaml"
#: metrics that depend on the machine's speed, left out when two runs are compared
TIMING = {"samples_per_s", "step_time_s", "data_wait_fraction", "peak_gpu_mem_gb"}


def tiny_overrides(root: Path, steps: int, **extra: object) -> list[str]:
    """The demo config shrunk further: 2 blocks, 32-px globals, small heads (a step takes ~50 ms on CPU)."""
    base = {
        "data.root": str(root), "data.global_size": 32, "data.local_size": 16, "data.n_local": 2,
        "data.num_workers": 0, "data.crops_per_field": 2, "model.kwargs": "{depth: 2}",
        "heads.out_dim": 64, "heads.ibot_out_dim": 64, "heads.hidden_dim": 32, "heads.bottleneck_dim": 16,
        "train.batch_size": 4, "train.steps_per_epoch": steps, "train.epochs": 1, "train.log_every": 1,
        "train.checkpoint_every": 4, "train.progress": False, "model.drop_path_rate": 0.1,
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(root: Path, steps: int, **extra: object) -> PretrainConfig:
    return load_config(PretrainConfig, DEMO, tiny_overrides(root, steps, **extra))


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def pretrain_command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "dinocell_core.cli", "pretrain", str(DEMO), *overrides, "--run-dir", str(run_dir)]


def wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        recs = read_metrics(run_dir / "metrics.jsonl")
        if recs and recs[-1]["step"] >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early (rc {proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def comparable(records: list[dict]) -> dict[int, dict]:
    """Records by step without the timing keys: what two identical runs must share."""
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING} for r in records}
