"""Screenshots of each DINOCell widget in use → docs/screenshot_<widget>.png (run under Xvfb or a desktop).

    python scripts/screenshots.py [--out docs] [--work /tmp/dinocell_shots]

Everything shown is produced for real on the spot: a synthetic CPJUMP1 fixture, the demo pretraining launched
from the Pretrain widget and watched in the Runs widget ("runs" writes screenshot_pretrain.png and
screenshot_runs.png), the decoder form, decoders trained with the segmentation API, and the PCA of the demo
checkpoint's features. Needs a display: uses $DISPLAY or starts Xvfb via pyvirtualdisplay.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

WINDOW = (1500, 950)


def ensure_display() -> object | None:
    if os.environ.get("DISPLAY"):
        return None
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(1920, 1200), color_depth=24)
    display.start()
    return display


def pump(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.02)


def new_viewer(title: str):
    import napari

    viewer = napari.Viewer(title=title, show=True)
    viewer.window._qt_window.resize(*WINDOW)
    return viewer


def open_sample(viewer) -> None:
    """The sample field; its layers after the first two arrive one per event-loop turn."""
    from napari_dinocell.widgets.sample_layers import sample_pending

    viewer.open_sample("dinocell", "cell_painting_field")
    wait_until(lambda: not sample_pending(), 60, "the sample layers")


def save(viewer, out: Path, name: str) -> Path:
    """Full-window grab (docks included) as a 256-colour PNG (~3× smaller, docs stay light); refuses to write a
    black frame."""
    from PIL import Image

    viewer.reset_view()
    pump(0.5)
    path = out / f"screenshot_{name}.png"
    img = np.asarray(viewer.screenshot(canvas_only=False, flash=False))[..., :3]
    if float(img.mean()) < 5:
        raise RuntimeError(f"{path} came out black: is the Qt platform xcb (not offscreen)?")
    Image.fromarray(img).quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"wrote {path} ({img.shape[1]}×{img.shape[0]}, {path.stat().st_size // 1024} KB)")
    return path


def shot_browser(out: Path, work: Path) -> None:
    from dinocell_core.synthetic.fixture import make_jump_fixture

    info = make_jump_fixture(work / "jump", plates=2, wells=3, sites=2, size=384, seed=3)
    viewer = new_viewer("DINOCell — JUMP browser")
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    widget.fluor_mean.setChecked(False)
    widget.load_root(str(info.source_root))
    wait_until(lambda: "DNA" in viewer.layers and not widget.busy, 120, "the first field")
    widget.next_btn.click()
    wait_until(lambda: not widget.busy and widget.current.site == 2, 120, "the next site")
    save(viewer, out, "jump_browser")
    viewer.close()


def shot_sample(out: Path) -> None:
    viewer = new_viewer("DINOCell — sample data")
    open_sample(viewer)
    save(viewer, out, "sample_data")
    viewer.close()


def fixture_root(work: Path) -> Path:
    """The fixture of configs/*_demo.yaml (`dinocell-core fixture jump fixture --size 192`)."""
    from dinocell_core.synthetic.fixture import make_jump_fixture

    return make_jump_fixture(work / "fixture", plates=2, wells=4, sites=2, size=192, seed=0).root


def edit_advanced(widget, values: dict) -> None:
    import yaml

    from napari_dinocell.config_dict import set_nested

    data = yaml.safe_load(widget.advanced.toPlainText()) or {}
    for key, value in values.items():
        set_nested(data, key, value)
    widget.advanced.setPlainText(yaml.safe_dump(data, sort_keys=False))


def pretrain_run(work: Path) -> Path:
    return work / "runs" / "demo"


def shot_pretrain_and_runs(out: Path, work: Path) -> None:
    """The demo pretraining launched from the Pretrain widget, then its live loss plot in the Runs widget."""
    import shutil

    from dinocell_core.runs.rundir import RunDir, read_metrics

    root = fixture_root(work)
    shutil.rmtree(pretrain_run(work), ignore_errors=True)
    viewer = new_viewer("DINOCell — Pretrain")
    open_sample(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Pretrain")
    widget.defaults_combo.setCurrentIndex(widget.defaults_combo.findText("pretrain_demo.yaml"))
    widget.editors["data.root"].set(str(root))
    edit_advanced(widget, {"train.log_every": 1, "train.progress": False})
    widget.out_dir.set(str(pretrain_run(work).parent))
    widget.run_name.setText(pretrain_run(work).name)
    widget.collapsible.expand(animate=False)
    widget.launch_btn.click()
    if widget.last_run is None:
        raise RuntimeError(f"launch failed: {widget.message.text()}")
    pump(1.0)
    save(viewer, out, "pretrain")
    viewer.close()

    run = RunDir(pretrain_run(work))
    viewer = new_viewer("DINOCell — Runs")
    open_sample(viewer)
    _, runs = viewer.window.add_plugin_dock_widget("dinocell", "Runs")
    runs.watcher.timer.setInterval(200)
    runs.set_folder(run.path.parent)
    wait_until(lambda: runs.table.rowCount() == 1, 60, "the run in the table")
    runs.table.selectRow(0)
    wait_until(lambda: len(read_metrics(run.metrics_path)) >= 25, 600, "25 logged steps")
    pump(1.0)
    save(viewer, out, "runs")
    wait_until(lambda: run.read_status().get("state") != "running", 900, "the demo pretraining to end")
    runs.watcher.timer.stop()
    wait_until(lambda: not runs.watcher.polling, 30, "the last poll")
    viewer.close()
    if run.read_status().get("state") != "finished":
        raise RuntimeError(f"demo pretraining ended {run.read_status()}")


def shot_train_decoder(out: Path, work: Path) -> None:
    viewer = new_viewer("DINOCell — Train decoder")
    open_sample(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Train decoder")
    widget.editors["data.path"].set(str(fixture_root(work)))
    widget.editors["backbone.weights"].set(str(pretrain_run(work)))
    widget.set_channels(["DNA", "Mito", "Brightfield"])
    widget.out_dir.set(str(work / "runs"))
    widget.run_name.setText("decoder_demo")
    if widget.validate() is None:
        raise RuntimeError(widget.message.text())
    save(viewer, out, "train_decoder")
    viewer.close()


def train_models(work: Path) -> Path:
    """A DNA decoder trained with the segmentation API (a short version of configs/decoder_demo.yaml)."""
    from dinocell_core.config import load_config
    from dinocell_core.seg.config import DecoderConfig
    from dinocell_core.seg.train import run_decoder_training

    models = work / "models"
    if not any(models.glob("*.safetensors")):
        demo = Path(__file__).resolve().parents[1] / "configs" / "decoder_demo.yaml"
        cfg = load_config(DecoderConfig, demo, [f"data.path={fixture_root(work)}", "channels=[DNA]",
                                                "train.steps=120", "train.batch_size=4", "train.eval_every=120",
                                                f"models_dir={models}"])
        run_decoder_training(cfg, work / "decoder_run")
    return models


def shot_segment(out: Path, work: Path) -> None:
    models = train_models(work)
    viewer = new_viewer("DINOCell — Segment")
    open_sample(viewer)
    for layer in viewer.layers:
        layer.visible = layer.name == "DNA"
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Segment")
    widget.picker.scan_models(str(models))
    wait_until(lambda: widget.picker.model_combo.count() == 1, 60, "the models list")
    widget.picker.layer_combo.set_layer(viewer.layers["DNA"])
    widget.device.setCurrentText("cpu")
    widget.outlines.setChecked(True)
    widget.run_btn.click()
    wait_until(lambda: widget.worker is None and not widget.showing, 600, "segmentation")
    save(viewer, out, "segment")
    viewer.close()


def shot_runs_decoder(out: Path, work: Path) -> None:
    """The decoder run of the segment shot in the Runs widget: losses, and validation metrics on their own axis."""
    train_models(work)
    viewer = new_viewer("DINOCell — Runs (decoder)")
    _, runs = viewer.window.add_plugin_dock_widget("dinocell", "Runs")
    runs.watcher.timer.setInterval(200)
    runs.set_folder(work)
    wait_until(lambda: any(r.name == "decoder_run" for r in runs.rows), 60, "the decoder run in the table")
    runs.select_run(work / "decoder_run")
    wait_until(lambda: bool(runs.plot.ax_val.get_lines()), 60, "validation metrics")
    pump(1.0)
    save(viewer, out, "runs_decoder")
    runs.watcher.timer.stop()
    wait_until(lambda: not runs.watcher.polling, 30, "the last poll")
    viewer.close()


def shot_features(out: Path, work: Path) -> None:
    run = pretrain_run(work)
    if not (run / "checkpoints").is_dir():
        raise RuntimeError(f"{run} has no checkpoint: make the 'runs' screenshot first")
    viewer = new_viewer("DINOCell — Backbone features")
    open_sample(viewer)
    for layer in viewer.layers:
        layer.visible = layer.name == "DNA"
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Backbone features")
    widget.layer_combo.set_layer(viewer.layers["DNA"])
    widget.weights.setText(str(run))
    widget.device.setCurrentText("cpu")
    widget.run_btn.click()
    wait_until(lambda: widget.worker is None and not widget.status.busy, 600, "the feature PCA")
    if widget.status.state.value != "done":
        raise RuntimeError(widget.status.message)
    viewer.layers[-1].opacity = 0.8
    save(viewer, out, "features")
    viewer.close()


def shot_segment_distance(out: Path, work: Path) -> None:
    """Issue 26's fixed states in Segment: with the distance map shown (and selected) the Image stays DNA, and a
    truncated bundle in the models folder is listed greyed out with why."""
    models = train_models(work)
    broken = models / "truncated.safetensors"
    good = next(p for p in sorted(models.glob("*.safetensors")) if p != broken)
    broken.write_bytes(good.read_bytes()[:2000])
    viewer = new_viewer("DINOCell — Segment: distance map shown, Image stays DNA")
    open_sample(viewer)
    for layer in viewer.layers:
        layer.visible = layer.name == "DNA"
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Segment")
    widget.picker.scan_models(str(models))
    wait_until(lambda: widget.picker.model_combo.count() == 2, 60, "the models list (one good, one truncated)")
    widget.picker.layer_combo.set_layer(viewer.layers["DNA"])
    widget.device.setCurrentText("cpu")
    widget.run_btn.click()
    wait_until(lambda: widget.worker is None and not widget.showing, 600, "segmentation")
    widget.show_distance.setChecked(True)
    wait_until(lambda: "DNA distance" in viewer.layers, 60, "the distance layer")
    viewer.layers.selection.active = viewer.layers["DNA distance"]
    pump(0.5)
    save(viewer, out, "segment_distance")
    viewer.close()
    broken.unlink()


def labelled_fixture(work: Path) -> tuple[Path, Path]:
    """A 384-px fixture plate and its CellProfiler-recipe labels store."""
    from dinocell_core.labels.run import label_tree
    from dinocell_core.synthetic.fixture import make_jump_fixture

    info = make_jump_fixture(work / "labelled", plates=1, wells=2, sites=2, size=384, seed=4, edge_cases=False)
    store = work / "labelled_LABELS"
    if not store.is_dir():
        label_tree(info.root, store, qc_fields=0)
    return info.root, store


def shot_browser_labels(out: Path, work: Path) -> None:
    """The JUMP browser with a labels store: the Nuclei / Cells overlay on top of the channels; after a brush
    stroke, Next asks Save / Discard / Cancel (the real modal box, grabbed with the screen, then cancelled)."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    root, store = labelled_fixture(work)
    viewer = new_viewer("DINOCell — JUMP browser with labels")
    _, browser = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    browser.fluor_mean.setChecked(False)
    browser.labels_store.setText(str(store))
    browser.load_root(str(root))
    wait_until(lambda: "Cells" in viewer.layers and not browser.busy, 120, "the field and its labels")
    for layer in viewer.layers:
        layer.visible = layer.name in ("DNA", "RNA", "Nuclei", "Cells")
    save(viewer, out, "browser_labels")

    viewer.layers["Cells"].paint((60, 60), 999, refresh=True)

    def grab_and_cancel() -> None:
        box = next((w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()), None)
        if box is None:
            QTimer.singleShot(100, grab_and_cancel)
            return
        pump(0.3)
        window = viewer.window._qt_window
        shot = QApplication.primaryScreen().grabWindow(0, window.x(), window.y(), window.width(), window.height())
        shot.save(str(out / "screenshot_unsaved_corrections.png"))
        print(f"wrote {out / 'screenshot_unsaved_corrections.png'}")
        box.button(QMessageBox.StandardButton.Cancel).click()

    QTimer.singleShot(300, grab_and_cancel)
    browser.next_btn.click()
    viewer.close()


def shot_profiles(out: Path, work: Path) -> None:
    """The Profiles dock: the well map with the clicked well ringed and its row selected in the mAP table."""
    from matplotlib.backend_bases import MouseEvent

    from dinocell_core.jump.index import load_index
    from dinocell_core.profiling.embed import EmbedSettings, embed_profiles, find_metadata_dir
    from dinocell_core.synthetic.fixture import make_jump_fixture

    root = make_jump_fixture(work / "profiles", plates=3, wells=8, sites=1, size=96, seed=1, edge_cases=False).root
    table = root.parent / "wells.csv"
    if not table.is_file():
        embed_profiles(str(root), load_index(str(root)), table, EmbedSettings(tile=48, channels="each"),
                       metadata=find_metadata_dir(str(root)), progress=False)
    from qtpy.QtCore import Qt

    viewer = new_viewer("DINOCell — Profiles")
    dock, widget = viewer.window.add_plugin_dock_widget("dinocell", "Profiles")
    viewer.window._qt_window.resizeDocks([dock], [620], Qt.Orientation.Horizontal)  # map and table readable
    wait_until(lambda: widget.ready, 60, "the Profiles dock's modules")
    widget.profiles.setText(str(table))
    widget.null_size.setValue(2000)
    widget.compute()
    wait_until(lambda: widget.map is not None and widget.worker is None, 300, "the well map")
    widget.canvas.draw()
    px = widget.ax.transData.transform(widget.map.coords)
    gaps = np.linalg.norm(px[:, None] - px[None], axis=-1) + np.eye(len(px)) * 1e9
    MouseEvent("button_press_event", widget.canvas, *px[int(gaps.min(1).argmax())], button=1)._process()
    pump(0.5)
    save(viewer, out, "profiles")
    viewer.close()


#: in this order: the features and train-decoder shots use the run of the pretrain/runs shot
SHOTS: dict[str, Callable[[Path, Path], None]] = {
    "runs": shot_pretrain_and_runs,
    "train_decoder": shot_train_decoder,
    "features": shot_features,
    "segment": shot_segment,
    "runs_decoder": shot_runs_decoder,
    "jump_browser": shot_browser,
    "sample_data": lambda out, work: shot_sample(out),
    "segment_distance": shot_segment_distance,
    "browser_labels": shot_browser_labels,
    "profiles": shot_profiles,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dinocell_screenshots"))
    parser.add_argument("--only", nargs="*", choices=sorted(SHOTS), help="make only these screenshots")
    args = parser.parse_args(argv)
    display = ensure_display()
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        del os.environ["QT_QPA_PLATFORM"]  # offscreen renders black canvases
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        for name in args.only or SHOTS:
            SHOTS[name](args.out, args.work)
    finally:
        if display is not None:
            display.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
