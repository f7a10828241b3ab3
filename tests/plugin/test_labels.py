"""Labels in napari, in a real viewer: the JUMP browser shows a field's labels from a store, the user edits them,
"Save corrections" writes them as corrected labels, and the Train decoder widget trains on corrected fields only."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dinocell_core.labels.qc import QC_CSV, qc_key, read_qc_csv
from dinocell_core.labels.run import label_tree
from dinocell_core.labels.store import LabelStore, field_key
from dinocell_core.seg.bundle import load_bundle
from dinocell_core.seg.train import run_decoder_training
from dinocell_core.synthetic.fixture import make_jump_fixture


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    base = tmp_path_factory.mktemp("napari_labels")
    info = make_jump_fixture(base / "fx", plates=1, wells=2, sites=2, size=96, seed=4, edge_cases=False)
    label_tree(info.root, base / "LABELS", qc_fields=0)
    return info, base / "LABELS"


def _edit_and_save(widget, viewer, qtbot, store_dir):
    field = widget.current
    cells = viewer.layers["Cells"]
    edited = np.asarray(cells.data).copy()
    gone = int(edited.max())
    edited[edited == gone] = 0  # the user erased one cell
    cells.data = edited
    widget.save_btn.click()
    qtbot.waitUntil(lambda: LabelStore.open(store_dir).get(field_key(field), "corrected") is not None
                    and widget.save_btn.isEnabled(), timeout=20000)
    return field, edited, gone


@pytest.mark.slow
def test_edit_save_retrain_round_trip(make_napari_viewer, qtbot, labelled, tmp_path):
    info, store_dir = labelled
    viewer = make_napari_viewer()
    _, browser = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    browser.labels_store.setText(str(store_dir))
    browser.refresh_box.setChecked(True)
    browser.load_root(str(info.root))
    qtbot.waitUntil(lambda: "Cells" in viewer.layers and not browser.busy, timeout=30000)
    first = browser.current
    auto = LabelStore.open(store_dir)
    row = auto.best(field_key(first))
    assert row.source == "auto" and viewer.layers["Nuclei"].metadata["labels_source"] == "auto"
    np.testing.assert_array_equal(viewer.layers["Cells"].data, auto.read(row, "cells"))

    field, edited, gone = _edit_and_save(browser, viewer, qtbot, store_dir)
    store = LabelStore.open(store_dir)
    corrected = store.get(field_key(field), "corrected")
    np.testing.assert_array_equal(store.read(corrected, "cells"), edited)
    assert store.get(field_key(field), "auto") is not None  # automatic masks kept
    assert gone in store.read(store.get(field_key(field), "auto"), "cells")
    assert len(store.rows) == 4 and store.best(field_key(field)) == corrected  # one labels.csv row per field
    assert corrected.original_source == "auto" and corrected.original_cells == row.cells
    qtbot.waitUntil(lambda: f"auto masks kept: {row.cells}" in browser.labels_status.message, timeout=5000)
    assert viewer.layers["Cells"].metadata["labels_source"] == "corrected"
    qc_rows = {qc_key(r): r for r in read_qc_csv(store_dir / QC_CSV)}  # QC describes the saved masks
    assert len(qc_rows) == 4 and qc_rows[field_key(field)]["source"] == "corrected"
    assert int(qc_rows[field_key(field)]["n_cells"]) == len(np.unique(edited)) - 1

    # the next field: its own (automatic) labels replace the layers in place; save a second correction
    browser.next_btn.click()
    qtbot.waitUntil(lambda: browser.current != first and not browser.busy
                    and viewer.layers["Cells"].metadata["dinocell_field"] == browser.current.key, timeout=30000)
    assert len([la for la in viewer.layers if la.__class__.__name__ == "Labels"]) == 2
    second, _, _ = _edit_and_save(browser, viewer, qtbot, store_dir)
    # back to the first: the corrected labels are what is shown now
    browser.prev_btn.click()
    qtbot.waitUntil(lambda: browser.current == first and not browser.busy
                    and viewer.layers["Cells"].metadata["dinocell_field"] == first.key, timeout=30000)
    assert viewer.layers["Cells"].metadata["labels_source"] == "corrected"
    np.testing.assert_array_equal(viewer.layers["Cells"].data, edited)

    # retrain from the Train decoder widget with "corrected only"
    _, trainer = viewer.window.add_plugin_dock_widget("dinocell", "Train decoder")
    trainer.editors["data.path"].set(str(info.root))
    trainer.editors["data.labels"].set(str(store_dir))
    trainer.editors["data.corrected_only"].set(True)
    trainer.set_channels(["Mito"])
    trainer.out_dir.widget.setText(str(tmp_path))
    trainer.run_name.setText("retrain")
    cfg = trainer.build_config(["train.steps=2", "train.tile_size=32", "train.batch_size=2", "train.eval_every=2",
                                "inference.overlap=8", f"models_dir={tmp_path / 'models'}"])
    assert cfg.data.labels == str(store_dir) and cfg.data.corrected_only
    (bundle,) = run_decoder_training(cfg, tmp_path / "retrain")
    data = load_bundle(bundle).metadata["training_data"]
    assert data["train"]["images"] + data["val"]["images"] == 2  # the two corrected fields, nothing else
    assert {n.rsplit("/ch", 1)[0] for n in data["fields"]} <= {first.key, second.key}


def test_save_without_labels_layers_is_refused(make_napari_viewer, qtbot, labelled):
    info, store_dir = labelled
    viewer = make_napari_viewer()
    _, browser = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    browser.save_corrections()
    assert "set a labels store" in browser.message.text()
    browser.load_root(str(info.root))
    qtbot.waitUntil(lambda: len(viewer.layers) == 8 and not browser.busy, timeout=30000)
    browser.labels_store.setText(str(store_dir))  # (starts reading the shown field's labels)
    browser.save_corrections()
    assert "nothing saved" in browser.message.text()
    qtbot.waitUntil(lambda: not browser.busy, timeout=30000)


def test_moving_away_from_unsaved_corrections_asks(make_napari_viewer, qtbot, labelled, tmp_path):
    """Unsaved edits of the Nuclei / Cells layers: moving to another site asks Save / Discard / Cancel (the prompt
    is the widget's replaceable ``ask_unsaved``); re-reading the same field (fluorescent mean) keeps the edits."""
    info, shared_store = labelled
    store_dir = shutil.copytree(shared_store, tmp_path / "LABELS")  # untouched by the other tests' saves
    viewer = make_napari_viewer()
    _, browser = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    browser.labels_store.setText(str(store_dir))
    browser.load_root(str(info.root))
    qtbot.waitUntil(lambda: "Cells" in viewer.layers and not browser.busy, timeout=30000)
    first = browser.current
    saved_before = LabelStore.open(store_dir).get(field_key(first), "corrected")
    asked: list[str] = []
    answers: list[str] = []
    browser.ask_unsaved = lambda text: (asked.append(text), answers.pop(0))[1]

    def edit() -> np.ndarray:
        cells = viewer.layers["Cells"]
        cells.paint((5, 5), 777, refresh=True)  # a brush stroke
        return np.asarray(cells.data).copy()

    edited = edit()
    browser.fluor_mean.setChecked(True)  # the same field read again: the edits stay, nothing asked
    qtbot.waitUntil(lambda: "Fluorescent mean" in viewer.layers and not browser.busy, timeout=30000)
    np.testing.assert_array_equal(viewer.layers["Cells"].data, edited)
    assert not asked

    answers.append("cancel")
    browser.next_btn.click()
    assert len(asked) == 1 and f"{first.well} site {first.site}" in asked[0]
    qtbot.wait(300)
    assert browser.current == first and browser.selected_field() == first and not browser.busy
    np.testing.assert_array_equal(viewer.layers["Cells"].data, edited)

    answers.append("discard")
    browser.next_btn.click()
    qtbot.waitUntil(lambda: browser.current != first and not browser.busy
                    and viewer.layers["Cells"].metadata["dinocell_field"] == browser.current.key, timeout=30000)
    assert len(asked) == 2
    assert LabelStore.open(store_dir).get(field_key(first), "corrected") == saved_before  # discarded
    second = browser.current

    browser.prev_btn.click()  # nothing edited: no question
    qtbot.waitUntil(lambda: browser.current == first and not browser.busy
                    and viewer.layers["Cells"].metadata["dinocell_field"] == first.key, timeout=30000)
    assert len(asked) == 2
    edited = edit()
    answers.append("save")
    browser.select(second)
    qtbot.waitUntil(lambda: browser.current == second and not browser.busy
                    and viewer.layers["Cells"].metadata["dinocell_field"] == second.key, timeout=30000)
    assert len(asked) == 3
    store = LabelStore.open(store_dir)
    np.testing.assert_array_equal(store.read(store.get(field_key(first), "corrected"), "cells"), edited)


def test_labels_overlay_on_top_at_once_and_store_remembered(make_napari_viewer, qtbot, labelled):
    """A fresh session: the Nuclei / Cells layers land on top of the channel layers, visible; setting the store
    after a field is shown reads its labels at once; the store is remembered for the next session."""
    from dinocell_core.labels.store import LabelStore
    from napari_dinocell.widgets.common import remembered

    info, store_dir = labelled
    viewer = make_napari_viewer()
    _, browser = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    browser.labels_store.setText(str(store_dir))
    browser.load_root(str(info.root))
    qtbot.waitUntil(lambda: "Cells" in viewer.layers and len(viewer.layers) == 10 and not browser.busy,
                    timeout=30000)
    assert [layer.name for layer in viewer.layers][-2:] == ["Nuclei", "Cells"]
    assert viewer.layers["Nuclei"].visible and viewer.layers["Cells"].visible
    browser.fluor_mean.setChecked(True)  # a channel layer added later goes under the overlay
    qtbot.waitUntil(lambda: "Fluorescent mean" in viewer.layers and not browser.busy, timeout=30000)
    assert [layer.name for layer in viewer.layers][-2:] == ["Nuclei", "Cells"]
    assert remembered("browser/labels_store") == str(store_dir)

    viewer2 = make_napari_viewer()
    _, browser2 = viewer2.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    assert browser2.labels_store.text() == str(store_dir)  # remembered
    browser2.labels_store.setText("")
    browser2.load_root(str(info.root))
    qtbot.waitUntil(lambda: len(viewer2.layers) == 8 and not browser2.busy, timeout=30000)
    assert "Cells" not in viewer2.layers
    browser2.labels_store.setText(str(store_dir))  # shown at once, not only from the next site on
    qtbot.waitUntil(lambda: "Cells" in viewer2.layers and not browser2.busy, timeout=30000)
    store = LabelStore.open(store_dir)
    row = store.best(field_key(browser2.current))
    np.testing.assert_array_equal(viewer2.layers["Cells"].data, store.read(row, "cells"))
    assert [layer.name for layer in viewer2.layers][-2:] == ["Nuclei", "Cells"]
    assert viewer2.layers["Cells"].visible
