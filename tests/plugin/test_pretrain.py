"""Pretrain widget + Runs widget with real detached ``dinocell-core pretrain`` processes on the JUMP fixture:
validation messages, launch → live loss plot → finished, and stop → stopped with a checkpoint → resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dinocell_core.io.checkpoint import CheckpointManager, load_state
from dinocell_core.runs.rundir import RunDir, read_metrics
from dinocell_core.synthetic.fixture import make_jump_fixture
from napari_dinocell.config_dict import set_nested

LOSS_TERMS = {"loss_total", "loss_dino", "loss_dino_local", "loss_dino_global", "loss_ibot", "loss_koleo"}
#: the demo recipe shrunk for a 2-core CI box (as tests/test_pretrain.py): 2 blocks, 32-px globals, small heads
TINY = {
    "data.global_size": 32, "data.local_size": 16, "data.n_local": 2, "data.num_workers": 0,
    "data.crops_per_field": 2, "model.kwargs": {"depth": 2}, "heads.out_dim": 64, "heads.ibot_out_dim": 64,
    "heads.hidden_dim": 32, "heads.bottleneck_dim": 16, "train.log_every": 1, "train.progress": False,
}


@pytest.fixture(scope="module")
def jump_root(tmp_path_factory) -> Path:
    return make_jump_fixture(tmp_path_factory.mktemp("pretrain_ui"), plates=2, wells=2, sites=2, size=96,
                             seed=0).root


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """The launched trainer inherits the environment: one torch thread keeps two jobs from fighting on 2 cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def edit_advanced(widget, values: dict) -> None:
    """Change keys in the widget's collapsible advanced-YAML editor, as a user would type them."""
    data = yaml.safe_load(widget.advanced.toPlainText()) or {}
    for key, value in values.items():
        set_nested(data, key, value)
    widget.advanced.setPlainText(yaml.safe_dump(data, sort_keys=False))


def demo_form(widget, root: Path, out: Path, name: str, steps: int, checkpoint_every: int) -> None:
    widget.defaults_combo.setCurrentIndex(widget.defaults_combo.findText("pretrain_demo.yaml"))
    widget.editors["data.root"].set(str(root))
    widget.editors["train.batch_size"].set(4)
    widget.editors["train.epochs"].set(1)
    edit_advanced(widget, {**TINY, "train.steps_per_epoch": steps, "train.checkpoint_every": checkpoint_every})
    widget.out_dir.set(str(out))
    widget.run_name.setText(name)


def open_runs(viewer, qtbot, folder: Path):
    _, runs = viewer.window.add_plugin_dock_widget("dinocell", "Runs")
    runs.watcher.timer.setInterval(100)
    runs.set_folder(folder)
    qtbot.waitUntil(lambda: runs.table.rowCount() == 1, timeout=30_000)
    runs.table.selectRow(0)
    return runs


def close_runs(runs, qtbot) -> None:
    runs.watcher.timer.stop()
    qtbot.waitUntil(lambda: not runs.watcher.polling, timeout=10_000)


def test_form_keys_defaults_and_validation_messages(make_napari_viewer, tmp_path, jump_root):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Pretrain")
    assert widget.defaults_combo.currentText() == "pretrain_vits8_jump.yaml"
    assert widget.editors["model.patch_size"].get() == 8
    assert widget.editors["data.channel_mode"].get() == "fluorescent_mean"
    assert widget.editors["data.second_view"].get() == "same_well"  # the recipe chosen by measurement
    assert widget.editors["train.epochs"].get() == 80
    assert widget.editors["train.epochs"].widget.text() == "80"  # not "80.0"
    assert widget.editors["optim.lr"].widget.text() not in ("", "0")  # small floats keep their precision

    widget.editors["data.root"].set(str(tmp_path / "no_such_plate_folder"))
    widget.editors["model.weights"].set(str(tmp_path / "missing.pth"))
    assert widget.validate() is None
    text = widget.message.text()
    assert "no_such_plate_folder does not exist" in text and "missing.pth does not exist" in text
    assert "choose an output folder" in text

    # an architecture typo is a schema error (archs allow-list), before any launch
    (tmp_path / "empty_data").mkdir()
    (tmp_path / "empty.safetensors").write_bytes(b"")
    widget.editors["data.root"].set(str(tmp_path / "empty_data"))
    widget.editors["model.weights"].set(str(tmp_path / "empty.safetensors"))
    edit_advanced(widget, {"model.arch": "vit_smal"})
    widget.out_dir.set(str(tmp_path / "runs"))
    assert widget.validate() is None
    assert "unknown backbone arch 'vit_smal' (model.arch)" in widget.message.text()

    # preflight: an empty data folder and an empty weights file, reported together
    edit_advanced(widget, {"model.arch": "vit_small"})
    assert widget.validate() is None
    text = widget.message.text()
    assert "empty_data holds no images" in text and "empty.safetensors is empty (0 bytes)" in text

    widget.editors["data.root"].set(str(jump_root))
    widget.editors["model.weights"].set("")
    widget.editors["data.channel_mode"].set("channel:12")
    widget.out_dir.set(str(tmp_path / "runs"))
    assert widget.validate() is None
    assert "data.channel_mode" in widget.message.text()

    widget.editors["data.channel_mode"].set("fluorescent_single")
    widget.editors["data.second_view"].set("same_well")
    cfg = widget.validate()
    assert cfg is not None and (cfg.data.channel_mode, cfg.data.second_view) == ("fluorescent_single", "same_well")
    widget.editors["data.channel_mode"].set("brightfield")
    widget.editors["optim.lr"].set(3e-5)
    cfg = widget.validate()
    assert cfg is not None and cfg.data.channel_mode == "brightfield" and cfg.optim.lr == 3e-5
    assert widget.launch_btn.isEnabled() and not (tmp_path / "runs").exists()


def launch_from_widget(viewer, jump_root: Path, runs_dir: Path, name: str, steps: int,
                       checkpoint_every: int) -> RunDir:
    """Fill the Pretrain form with the demo config and press Launch, as a user would."""
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Pretrain")
    demo_form(widget, jump_root, runs_dir, name, steps=steps, checkpoint_every=checkpoint_every)
    widget.launch_btn.click()
    run = RunDir(runs_dir / name)
    assert widget.last_run == run.path, widget.message.text()
    assert "started pid" in widget.message.text()
    return run


@pytest.mark.slow
def test_launch_demo_pretraining_and_watch_it_finish(make_napari_viewer, qtbot, jump_root, tmp_path):
    viewer = make_napari_viewer()
    runs_dir = tmp_path / "runs"
    run = launch_from_widget(viewer, jump_root, runs_dir, "demo", steps=8, checkpoint_every=4)

    runs = open_runs(viewer, qtbot, runs_dir)
    qtbot.waitUntil(lambda: run.read_status().get("state") != "running", timeout=120_000)
    assert run.read_status()["state"] == "finished", (run.read_status(), run.console_path.read_text()[-2000:])
    qtbot.waitUntil(lambda: len(runs.plot.series["loss_total"].steps if "loss_total" in runs.plot.series else [])
                    == 8, timeout=10_000)
    qtbot.waitUntil(lambda: runs.table.item(0, 2) is not None and runs.table.item(0, 2).text() == "finished",
                    timeout=10_000)
    assert LOSS_TERMS <= set(runs.plot.series)  # every loss term plotted; lr/momentum are not losses
    assert runs.plot.series["loss_total"].steps == [float(s) for s in range(1, 9)]
    assert list(runs.plot.lines["loss_koleo"].get_xdata()) == runs.plot.series["loss_koleo"].steps
    assert runs.table.item(0, 3).text() == "8/8"
    assert CheckpointManager(run.checkpoints_dir).steps() == [4, 8]
    log_lines = run.log_path.read_text().splitlines()
    assert any("pretraining finished at step 8/8" in line for line in log_lines)
    assert len(log_lines) == len(set(log_lines))  # trainer logging only: no line twice
    close_runs(runs, qtbot)


@pytest.mark.slow
def test_stop_from_runs_widget_then_resume(make_napari_viewer, qtbot, jump_root, tmp_path):
    viewer = make_napari_viewer()
    runs_dir = tmp_path / "runs"
    run = launch_from_widget(viewer, jump_root, runs_dir, "long", steps=2000, checkpoint_every=1000)
    runs = open_runs(viewer, qtbot, runs_dir)

    def step() -> int:
        recs = read_metrics(run.metrics_path)
        return recs[-1]["step"] if recs else 0

    qtbot.waitUntil(lambda: step() >= 3 and runs.stop_btn.isEnabled(), timeout=120_000)
    runs.stop_btn.click()
    qtbot.waitUntil(lambda: run.read_status().get("state") != "running", timeout=60_000)
    status = run.read_status()
    assert status["state"] == "stopped", (status, run.console_path.read_text()[-2000:])
    stopped_at = status["step"]
    assert 3 <= stopped_at < 2000
    ckpt = CheckpointManager(run.checkpoints_dir).latest()
    assert ckpt is not None and Path(status["last_checkpoint"]) == ckpt
    assert load_state(ckpt)["step"] == stopped_at  # the stop saved a loadable checkpoint of the last step

    qtbot.waitUntil(lambda: runs.resume_btn.isEnabled(), timeout=10_000)
    runs.resume_btn.click()
    qtbot.waitUntil(lambda: step() >= stopped_at + 2 and runs.stop_btn.isEnabled(), timeout=120_000)
    assert "resumed from" in run.log_path.read_text()
    runs.stop_btn.click()
    qtbot.waitUntil(lambda: run.read_status().get("state") == "stopped", timeout=60_000)
    steps = [r["step"] for r in read_metrics(run.metrics_path)]
    assert steps == list(range(1, steps[-1] + 1))  # continued from the checkpoint: no gap, no repeat
    assert steps[-1] > stopped_at
    close_runs(runs, qtbot)
