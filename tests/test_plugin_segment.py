"""Segment widget in a real viewer with decoder bundles trained in this test session (tiny, on the fixture):
labels, instant re-threshold from the cached distance map, in-place re-run, model auto-selection, the whole
field, cancel, and broken/missing model files as notifications."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dinocell_core.config import load_config
from dinocell_core.jump.fixture import make_jump_fixture
from dinocell_core.seg.config import DecoderConfig
from dinocell_core.seg.train import run_decoder_training
from napari_dinocell.sample_data import sample_field
from napari_dinocell.status import JobState
from napari_dinocell.widgets.segment import threshold_job

DEMO = Path(__file__).resolve().parents[1] / "configs" / "decoder_demo.yaml"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """DNA and Mito bundles from a few decoder steps on the fixture (the segmentation API, ~10 s on 2 cores)."""
    base = tmp_path_factory.mktemp("seg_models")
    root = make_jump_fixture(base / "fx", plates=1, wells=2, sites=2, size=96, seed=0).root
    models = base / "models"
    cfg = load_config(DecoderConfig, DEMO, [f"data.path={root}", "channels=[DNA, Mito]", "train.steps=6",
                                            "train.tile_size=32", "train.eval_every=6", "train.batch_size=2",
                                            "inference.overlap=8", "data.max_images=4", f"models_dir={models}"])
    run_decoder_training(cfg, base / "run")
    return models


def add_field(viewer, size: int = 128) -> None:
    for data, kwargs, kind in sample_field(size=size, seed=2):
        if kind == "image":
            viewer.add_image(data, **kwargs)


def segment_widget(viewer, qtbot, folder: Path):
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Segment")
    widget.scan_models(str(folder))
    qtbot.waitUntil(lambda: widget.model_combo.count() > 0, timeout=20_000)
    return widget


def wait_idle(widget, qtbot) -> None:
    qtbot.waitUntil(lambda: widget.worker is None and not widget.status.busy and not widget.showing, timeout=60_000)


def test_segment_rethreshold_rerun_autoselect_and_field(make_napari_viewer, qtbot, models_dir):
    viewer = make_napari_viewer()
    add_field(viewer)
    widget = segment_widget(viewer, qtbot, models_dir)
    assert [widget.model_combo.itemText(i) for i in range(2)] == ["Mito · demo-Mito", "DNA · demo-DNA"]

    # the model follows the layer's channel
    widget.layer_combo.set_layer(viewer.layers["Mito"])
    assert widget.model_combo.currentData().endswith("demo-Mito.safetensors")
    widget.layer_combo.set_layer(viewer.layers["DNA"])
    assert widget.model_combo.currentData().endswith("demo-DNA.safetensors")

    network_runs: list[JobState] = []
    widget.status.events.state.connect(lambda s: network_runs.append(s) if s == JobState.RUNNING else None)
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.state == JobState.DONE, widget.status.message
    labels = viewer.layers["DNA labels"]
    assert labels.__class__.__name__ == "Labels" and labels.data.shape == viewer.layers["DNA"].data.shape
    assert labels.visible  # added hidden, shown on the next event-loop turn
    assert len(network_runs) == 1

    # sliders: labels recomputed from the cached distance map; no network job starts
    distance = widget.outputs[id(viewer.layers["DNA"])]["distance"]
    for peak, fill in ((float(np.quantile(distance, 0.95)), float(np.quantile(distance, 0.5))), (0.99, 0.98)):
        widget.peak.setValue(peak)
        widget.fill.setValue(fill)
        expected = threshold_job(distance, widget.peak.value(), widget.fill.value())
        qtbot.waitUntil(lambda e=expected: np.array_equal(labels.data, e), timeout=10_000)
        assert widget.worker is None
    assert len(network_runs) == 1  # still the one segmentation: re-thresholding never ran the network
    first = threshold_job(distance, round(float(np.quantile(distance, 0.95)), 2),
                          round(float(np.quantile(distance, 0.5)), 2))
    assert first.max() > 0 and not np.array_equal(first, labels.data)

    # re-run: same Labels layer, new data, no new layers
    n_layers = len(viewer.layers)
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    assert len(network_runs) == 2 and len(viewer.layers) == n_layers
    assert viewer.layers["DNA labels"] is labels

    # the whole field: every channel that has a model (DNA and Mito), the DNA layer updated in place
    widget.show_distance.setChecked(True)
    widget.all_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.message == "{} objects in 2 image(s)".format(
        int(labels.data.max()) + int(viewer.layers["Mito labels"].data.max()))
    assert viewer.layers["DNA labels"] is labels
    assert {"Mito labels", "DNA distance", "Mito distance"} <= {layer.name for layer in viewer.layers}
    assert not any(name in viewer.layers for name in ("ER labels", "AGP labels", "Brightfield labels"))


def test_cancel_and_model_file_errors(make_napari_viewer, qtbot, models_dir, notifications, tmp_path):
    viewer = make_napari_viewer()
    big = viewer.add_image(np.random.default_rng(0).integers(0, 4000, (1024, 1024)).astype(np.uint16), name="DNA")
    widget = segment_widget(viewer, qtbot, models_dir)
    widget.layer_combo.set_layer(big)
    widget.tile.setValue(32)  # thousands of tile batches: time to cancel between two of them
    widget.run_btn.click()
    qtbot.waitUntil(lambda: widget.status.done > 0, timeout=30_000)
    assert widget.cancel_btn.isEnabled()
    widget.cancel_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.state == JobState.CANCELLED
    assert widget.status.done < widget.status.total
    assert "DNA labels" not in viewer.layers and widget.run_btn.isEnabled()

    # a bundle whose weights were altered after it was listed
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(models_dir / "demo-DNA.safetensors", bad / "demo-DNA.safetensors")
    data = bytearray((bad / "demo-DNA.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (bad / "demo-DNA.safetensors").write_bytes(bytes(data))
    widget.tile.setValue(0)
    widget.scan_models(str(bad))
    qtbot.waitUntil(lambda: widget.model_combo.count() == 1, timeout=20_000)
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.state == JobState.FAILED
    assert any("Segmenting failed" in m and "digest" in m for m in notifications), notifications

    # the file disappears between listing and use
    (bad / "demo-DNA.safetensors").unlink()
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.state == JobState.FAILED
    assert any("Segmenting failed" in m and "does not exist" in m for m in notifications), notifications

    # a models folder without bundles
    widget.scan_models(str(tmp_path))
    qtbot.waitUntil(lambda: any("no model bundles" in m for m in notifications), timeout=20_000)
    assert "DNA labels" not in viewer.layers
