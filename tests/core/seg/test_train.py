"""Decoder training on the JUMP fixture: it learns (held-out AP@0.5 ≥ 0.8, reported by `evaluate`), loops over
channels into a models folder, writes the run-directory contract, stops on SIGTERM and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dinocell_core.cli import main
from dinocell_core.config import ConfigError, load_config
from dinocell_core.runs.rundir import RunDir, read_metrics
from dinocell_core.seg.bundle import list_bundles, load_bundle
from dinocell_core.seg.config import DecoderConfig
from dinocell_core.seg.train import run_decoder_training
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers import REPO

pytestmark = pytest.mark.slow  # trains a model

DEMO = REPO / "configs" / "decoder_demo.yaml"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> tuple[Path, Path]:
    """Training fixture, and a second fixture from another seed: images the model never saw."""
    base = tmp_path_factory.mktemp("fx")
    train = make_jump_fixture(base / "train", plates=2, wells=4, sites=2, size=192, seed=0).root
    held = make_jump_fixture(base / "held", plates=1, wells=4, sites=2, size=192, seed=11, edge_cases=False).root
    return train, held


def test_learns_to_segment_held_out_fixture_images(fixtures, tmp_path, capsys) -> None:
    train, held = fixtures
    cfg = load_config(DecoderConfig, DEMO, [f"data.path={train}", "channels=[Mito]", "val_data.format=jump",
                                            f"val_data.path={held}", "val_data.channel=Mito"])
    (path,) = run_decoder_training(cfg, tmp_path / "run")
    bundle = load_bundle(path)
    assert bundle.channel == "Mito" and bundle.metadata["validation_metrics"]["ap@0.50"] >= 0.8
    run = RunDir(tmp_path / "run")
    assert run.read_status()["state"] == "finished" and run.read_status()["kind"] == "decoder"
    vals = [r for r in read_metrics(run.metrics_path) if "val_ap@0.50" in r]
    assert len(vals) == 3 and vals[-1]["val_n_gt"] > 100
    assert vals[0]["val_ap@0.50"] < vals[-1]["val_ap@0.50"]  # it learned during the run
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(path), str(held), "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["metrics"]["ap@0.50"] >= 0.8 and result["metrics"]["n_images"] == 8
    # thresholds were searched on the validation images after training, written into the bundle, and used
    search = bundle.metadata["threshold_search"]
    assert search["images"] == 8 and len(search["tried"]) > 50
    assert bundle.metadata["validation_metrics"]["ap_mean"] >= search["configured_metrics"]["ap_mean"]
    assert result["thresholds"] == bundle.thresholds
    assert "OP_CSB" in printed and f"{result['metrics']['ap@0.50']:.3f}" in printed


def test_channel_loop_exports_one_bundle_per_channel(fixtures, tmp_path) -> None:
    train, _ = fixtures
    models = tmp_path / "models"
    cfg = load_config(DecoderConfig, DEMO, [f"data.path={train}", "channels=[DNA, Mito, Brightfield]",
                                            "train.steps=3", "train.tile_size=32", "train.eval_every=3",
                                            "train.batch_size=2", "inference.overlap=8", "data.max_images=4",
                                            f"models_dir={models}"])
    paths = run_decoder_training(cfg, tmp_path / "run")
    assert [p.name for p in paths] == ["demo-DNA.safetensors", "demo-Mito.safetensors",
                                       "demo-Brightfield.safetensors"]
    assert [b.name for b in list_bundles(models, channel=5)] == ["demo-DNA"]
    bf = load_bundle(models / "demo-Brightfield.safetensors").metadata
    assert bf["modality"] == "brightfield" and bf["training_data"]["train"]["images"] == 3
    steps = [(r["step"], r["channel"]) for r in read_metrics(RunDir(tmp_path / "run").metrics_path) if "loss" in r]
    assert steps == [(3, "DNA"), (6, "Mito"), (9, "Brightfield")]


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        load_config(DecoderConfig, DEMO, ["train.bogus=1"])
    with pytest.raises(ConfigError, match="multiple of backbone.patch_size"):
        load_config(DecoderConfig, DEMO, ["train.tile_size=60"])


def test_sigterm_checkpoints_stops_and_resumes(fixtures, tmp_path) -> None:
    train, _ = fixtures
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dinocell_core.cli", "train-decoder", str(DEMO), f"data.path={train}",
           "channels=[DNA]", "train.steps=80", "train.checkpoint_every=5", "train.eval_every=1000",
           "train.tile_size=32", "train.batch_size=2", "inference.overlap=8", "data.max_images=4",
           "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((run / "checkpoints").glob("step_*.safetensors")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    status = RunDir(run).read_status()
    assert status["state"] == "stopped", status
    stopped_at = int(Path(status["last_checkpoint"]).stem.split("_")[1])
    assert 0 < stopped_at < 80
    resume = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert resume.returncode == 0, resume.stderr
    assert f"resuming at step {stopped_at}" in (run / "run.log").read_text()
    status = RunDir(run).read_status()
    assert status["state"] == "finished" and status["step"] == 80
    steps = [r["step"] for r in read_metrics(RunDir(run).metrics_path) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 80  # no duplicated records after the resume
    assert (run / "models" / "demo-DNA.safetensors").is_file()
