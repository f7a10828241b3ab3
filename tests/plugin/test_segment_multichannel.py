"""Segment dock with a multichannel model and the fine-tune button: a DNA+RNA → cells bundle is listed under DNA
and RNA, reads the field's DNA and RNA layers (its distance map equals the model's on those two images), segments
the RNA layer in "Segment all channels of this field", and names a missing layer; "Fine-tune this channel's model on
my corrections" launches a decoder run into the runs folder and, when it ends, lists the new bundle beside the old one
with its before/after AP."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dinocell_core.config import load_config
from dinocell_core.jump.index import index_fields
from dinocell_core.labels.store import GROUND_TRUTH_DIR, LabelStore, field_key
from dinocell_core.seg.config import DecoderConfig
from dinocell_core.seg.finetune import FINETUNE_JSON
from dinocell_core.seg.inference import Segmenter
from dinocell_core.seg.train import run_decoder_training
from dinocell_core.synthetic.fixture import make_jump_fixture
from napari_dinocell.layer_meta import CHANNEL, FIELD, JUMP_ROOT
from napari_dinocell.sample_data import sample_field
from tests.helpers import REPO
from tests.helpers.segment_dock import segment_widget, wait_idle

DEMO = REPO / "configs" / "decoder_demo.yaml"
TINY = ["train.steps=6", "train.tile_size=32", "train.eval_every=6", "train.batch_size=2", "inference.overlap=8",
        "data.max_images=4", "inference.tune_thresholds=false"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[str, Path]:
    """A small fixture and tiny RNA and DNA+RNA bundles trained on it (a few steps)."""
    base = tmp_path_factory.mktemp("mc_plugin")
    root = make_jump_fixture(base / "fx", plates=1, wells=2, sites=2, size=96, seed=0, edge_cases=False).root
    models = base / "models"
    cfg = load_config(DecoderConfig, DEMO, [f"data.path={root}", "channels=[RNA, [DNA, RNA]]",
                                            f"models_dir={models}", *TINY])
    run_decoder_training(cfg, base / "run")
    return str(root), models


@pytest.mark.slow  # trains two tiny models
def test_multichannel_model_reads_the_fields_layers(make_napari_viewer, qtbot, tree, models_dir, tmp_path,
                                                     notifications) -> None:
    _, models = tree
    folder = tmp_path / "models"
    shutil.copytree(models, folder)
    shutil.copy(models_dir / "demo-DNA.safetensors", folder)
    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_field(size=96, seed=2):
        if kind == "image":
            viewer.add_image(data, **kwargs)
    widget = segment_widget(viewer, qtbot, folder)
    combo = widget.picker.model_combo
    assert [combo.itemText(i) for i in range(combo.count())] == [
        "RNA · demo-RNA", "RNA · demo-DNA+RNA", "DNA · demo-DNA", "DNA · demo-DNA+RNA"]

    widget.picker.layer_combo.set_layer(viewer.layers["RNA"])
    combo.setCurrentIndex(1)
    assert widget.picker.current_bundle().name == "demo-DNA+RNA" and widget.picker.mismatch() == ""
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    out = widget.outputs.get(viewer.layers["RNA"])
    seg = Segmenter(folder / "demo-DNA+RNA.safetensors", device="cpu")
    expected = seg.predict_distance([viewer.layers["DNA"].data, viewer.layers["RNA"].data])
    np.testing.assert_allclose(out.distance, expected, atol=1e-5)

    # the whole field: DNA by its own model, RNA by the chosen DNA+RNA model, Mito has none here
    widget.all_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.message.endswith("in 2 image(s)")
    np.testing.assert_allclose(widget.outputs.get(viewer.layers["RNA"]).distance, expected, atol=1e-5)
    assert widget.outputs.get(viewer.layers["DNA"]).segmenter.bundle.name == "demo-DNA"

    viewer.layers.remove("DNA")
    widget.run_btn.click()
    qtbot.waitUntil(lambda: any("open this field's DNA layer" in m for m in notifications), timeout=5000)


@pytest.mark.slow
def test_finetune_button_runs_and_lists_the_new_model(make_napari_viewer, qtbot, tree, tmp_path) -> None:
    root, models = tree
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(models / "demo-RNA.safetensors", folder)
    truth = LabelStore.open(Path(root) / "cpg0000-jump-pilot" / "source_4" / GROUND_TRUTH_DIR)
    store = LabelStore.open_or_create(tmp_path / "LABELS", {"method": "test", "source_root": root})
    fields = index_fields(root).fields
    for f in fields[:3]:
        store.write_field(f, *truth.read_pair(truth.best(field_key(f))), "corrected")
    viewer = make_napari_viewer()
    f = fields[0]
    from dinocell_core.io.tiffio import read_tiff

    viewer.add_image(read_tiff(f.path(root, 3)), name="RNA", metadata={CHANNEL: 3, FIELD: f.key, JUMP_ROOT: root})
    widget = segment_widget(viewer, qtbot, folder)
    box = widget.finetune
    box.labels_store.setText(str(store.root))
    box.runs_folder.setText(str(tmp_path / "runs"))
    box.steps.setValue(4)
    box.held_out.setValue(0.34)
    widget.device.setCurrentText("cpu")
    ended = []
    box.ended.connect(ended.append)
    box.button.click()
    qtbot.waitUntil(lambda: bool(ended), timeout=300_000)
    (result,) = ended
    assert result.state == "finished", result.error
    run_dirs = list((tmp_path / "runs").iterdir())
    assert run_dirs == [result.run_dir] and (result.run_dir / FINETUNE_JSON).is_file()
    assert "AP@0.5" in box.message.text() and "held-out corrected fields" in box.message.text()
    qtbot.waitUntil(lambda: widget.picker.model_combo.count() == 2, timeout=20_000)
    combo = widget.picker.model_combo
    assert [combo.itemText(i) for i in range(2)] == ["RNA · demo-RNA", "RNA · demo-RNA-finetuned"]
    combo.setCurrentIndex(1)
    assert "fine-tuned from demo-RNA.safetensors" in widget.picker.model_info.text()
