"""Backbone features widget on a real (tiny) pretraining checkpoint: PCA as an RGB layer, per checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dinocell_core.ssl.trainer import run_pretraining
from dinocell_core.synthetic.fixture import make_jump_fixture
from napari_dinocell.sample_data import sample_field
from napari_dinocell.status import JobState
from tests.helpers.pretrain import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Two SSL steps of the shrunk demo recipe (2-block vit_test): a real run folder with one checkpoint."""
    base = tmp_path_factory.mktemp("features")
    root = make_jump_fixture(base / "fx", plates=1, wells=2, sites=2, size=96, seed=0).root
    run = base / "tiny_run"
    run_pretraining(tiny_config(root, 2, **{"train.checkpoint_every": 2}), run)
    return run


@pytest.mark.slow
def test_pca_layer_for_a_checkpoint_and_errors(make_napari_viewer, qtbot, tiny_run, notifications, tmp_path):
    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_field(size=128, seed=1):
        if kind == "image":
            viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Backbone features")
    widget.layer_combo.set_layer(viewer.layers["DNA"])
    assert widget.arch.currentText() == "from checkpoint" and not widget.patch.isEnabled()
    widget.weights.setText(str(tiny_run))
    widget.device.setCurrentText("cpu")
    widget.run_btn.click()
    qtbot.waitUntil(lambda: widget.worker is None and not widget.status.busy, timeout=60_000)
    assert widget.status.state == JobState.DONE, widget.status.message
    layer = viewer.layers["DNA PCA · tiny_run"]
    assert layer.rgb and layer.data.shape == (16, 16, 3)  # one pixel per 8-px patch
    assert 0 <= layer.data.min() and layer.data.max() <= 1 and layer.data.std() > 0.05
    np.testing.assert_allclose(layer.scale, (8, 8))  # overlays the 128-px image
    assert "variance explained" in widget.status.message

    # another backbone (random init, explicit arch) on the same image: its own layer, for comparison
    widget.weights.setText("")
    widget.arch.setCurrentText("vit_test")
    widget.run_btn.click()
    qtbot.waitUntil(lambda: widget.worker is None and not widget.status.busy, timeout=60_000)
    assert "DNA PCA · random init" in viewer.layers and "DNA PCA · tiny_run" in viewer.layers

    # the image changes (next site): its PCA layers are marked stale; a re-run updates the same layer
    pca = viewer.layers["DNA PCA · tiny_run"]
    viewer.layers["DNA"].data = sample_field(size=128, seed=7)[4][0]
    assert pca.name == "DNA PCA · tiny_run [stale]" and not pca.visible
    widget.weights.setText(str(tiny_run))
    widget.arch.setCurrentText("from checkpoint")
    widget.run_btn.click()
    qtbot.waitUntil(lambda: widget.worker is None and not widget.status.busy, timeout=60_000)
    assert viewer.layers["DNA PCA · tiny_run"] is pca and pca.visible

    # a file that is not a checkpoint: a notification, no layer
    bogus = tmp_path / "weights.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    widget.arch.setCurrentText("from checkpoint")
    widget.weights.setText(str(bogus))
    n_layers = len(viewer.layers)
    widget.run_btn.click()
    qtbot.waitUntil(lambda: widget.worker is None and not widget.status.busy, timeout=60_000)
    assert widget.status.state == JobState.FAILED
    assert any("Backbone features failed" in m and "weights.safetensors" in m for m in notifications), notifications
    assert len(viewer.layers) == n_layers
