"""The pretraining ``eval:`` section: the teacher's copairs mAP on held-out plates lands in metrics.jsonl, and the
Runs widget plots it beside the losses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("copairs")
pytest.importorskip("pycytominer")

from dinocell_core.config import ConfigError, load_config  # noqa: E402
from dinocell_core.runs.rundir import read_metrics  # noqa: E402
from dinocell_core.ssl.config import PretrainConfig  # noqa: E402
from tests.helpers import REPO

pytestmark = pytest.mark.slow  # trains a model

DEMO = REPO / "configs" / "pretrain_demo.yaml"


def _overrides(root: Path, **extra: object) -> list[str]:
    base = {
        "data.root": str(root), "data.global_size": 32, "data.local_size": 16, "data.n_local": 2,
        "data.num_workers": 0, "data.crops_per_field": 2, "model.kwargs": "{depth: 2}",
        "heads.out_dim": 64, "heads.ibot_out_dim": 64, "heads.hidden_dim": 32, "heads.bottleneck_dim": 16,
        "train.batch_size": 4, "train.steps_per_epoch": 4, "train.epochs": 1, "train.log_every": 3,
        "train.checkpoint_every": 4, "train.progress": False,
        "eval.every": 2, "eval.tile": 64, "eval.null_size": 200, "eval.batch_size": 16,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def eval_run(fixture_root, tmp_path_factory) -> Path:
    from dinocell_core.ssl.trainer import run_pretraining

    cfg = load_config(PretrainConfig, DEMO, _overrides(fixture_root))
    run = tmp_path_factory.mktemp("eval_run") / "run"
    run_pretraining(cfg, run)
    return run


def test_eval_values_in_metrics(eval_run: Path):
    recs = read_metrics(eval_run / "metrics.jsonl")
    with_eval = {r["step"]: r for r in recs if "eval_mean_map" in r}
    assert sorted(with_eval) == [2, 4]  # every eval.every steps, logged even off the log_every grid
    assert [r["step"] for r in recs] == [2, 3, 4]
    for r in with_eval.values():
        assert 0.0 <= r["eval_fraction_retrieved"] <= 1.0 and 0.0 < r["eval_mean_map"] <= 1.0
        assert math.isfinite(r["loss_total"]) and r["eval_seconds"] > 0
    print(f"\neval: {[(s, round(r['eval_mean_map'], 3)) for s, r in sorted(with_eval.items())]}")


def test_eval_section_is_checked(fixture_root, tmp_path):
    with pytest.raises(ConfigError, match="eval.tile"):
        load_config(PretrainConfig, DEMO, _overrides(fixture_root, **{"eval.tile": 60}))
    with pytest.raises(ConfigError, match="evry"):
        load_config(PretrainConfig, DEMO, _overrides(fixture_root, **{"eval.evry": 3}))
    from dinocell_core.profiling.table import ProfileError
    from dinocell_core.ssl.evaluation import TrainingEvaluator

    cfg = load_config(PretrainConfig, DEMO, _overrides(fixture_root, **{"eval.plates": "[BR_NOT_THERE]"}))
    with pytest.raises(ProfileError, match="BR_NOT_THERE"):
        TrainingEvaluator(cfg, "cpu")


@pytest.mark.gui
def test_runs_widget_plots_eval(make_napari_viewer, qtbot, eval_run: Path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Runs")
    widget.watcher.timer.setInterval(50)
    widget.set_folder(eval_run.parent)
    qtbot.waitUntil(lambda: widget.table.rowCount() == 1, timeout=5000)
    widget.table.selectRow(0)
    plot = widget.plot
    qtbot.waitUntil(lambda: "eval_mean_map" in plot.series, timeout=5000)
    assert plot.series["eval_mean_map"].steps == [2.0, 4.0]
    assert "loss_total" in plot.series and "eval_fraction_retrieved" in plot.series
    assert "eval_mean_map" in {line.get_label() for line in plot.ax_val.get_lines()}
    assert "loss_total" in {line.get_label() for line in plot.ax.get_lines()}
    widget.watcher.timer.stop()


def test_embed_with_a_pretraining_run_as_backbone(fixture_root, eval_run: Path, tmp_path: Path):
    """``profile embed --backbone RUN_DIR`` uses the newest checkpoint's teacher (architecture from the run)."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "run.csv"
    r = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "profile", "embed", str(fixture_root), "-o",
                        str(out), "--backbone", str(eval_run), "--tile", "64", "--tokens", "mean_patch", "--quiet",
                        "--device", "cpu"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    info = json.loads(Path(f"{out}.json").read_text())
    assert "step_00000004.safetensors" in info["embedder"]["label"] and info["embedder"]["num_blocks"] == 2
    assert info["n_wells"] == 8
