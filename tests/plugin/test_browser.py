"""JUMP browser on the synthetic CPJUMP1 fixture, the reader and the sample data, in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from dinocell_core.jump.channels import CHANNELS
from dinocell_core.synthetic.fixture import make_jump_fixture
from napari_dinocell.layers import contrast_limits

NAMES = ["Mito", "AGP", "RNA", "ER", "DNA", "HighZBF", "LowZBF", "Brightfield"]


@pytest.fixture(scope="module")
def jump_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("jump")
    info = make_jump_fixture(out, plates=2, wells=2, sites=2, size=96, seed=1)
    return info


def _images(viewer):
    return [layer for layer in viewer.layers if layer.__class__.__name__ == "Image"]


def test_browse_fixture_plate_well_site(make_napari_viewer, qtbot, jump_root):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    widget.refresh_box.setChecked(True)
    widget.load_root(str(jump_root.source_root))
    qtbot.waitUntil(lambda: len(viewer.layers) == 8 and not widget.busy, timeout=20000)
    assert [layer.name for layer in viewer.layers] == NAMES
    assert [layer.visible for layer in viewer.layers] == [True] * 5 + [False] * 3  # shown after placing; BF hidden
    assert widget.plate.count() == 2
    assert viewer.layers["DNA"].colormap.name == "blue"
    assert viewer.layers["Mito"].colormap.name == "magenta"
    assert viewer.layers["Brightfield"].colormap.name == "gray"
    assert viewer.layers["DNA"].data.dtype == np.uint16
    lo, hi = viewer.layers["DNA"].contrast_limits
    assert lo < hi <= viewer.layers["DNA"].data.max()

    first = widget.current
    dna_layer = viewer.layers["DNA"]
    first_data = dna_layer.data.copy()
    widget.next_btn.click()
    qtbot.waitUntil(lambda: widget.current is not first and not widget.busy, timeout=20000)
    assert widget.current.site != first.site or widget.current.well != first.well
    assert len(viewer.layers) == 8  # replaced in place, no pile-up
    assert viewer.layers["DNA"] is dna_layer
    assert not np.array_equal(dna_layer.data, first_data)
    expected = tifffile.imread(widget.current.path(str(jump_root.source_root), 5))
    np.testing.assert_array_equal(dna_layer.data, expected)

    widget.prev_btn.click()
    qtbot.waitUntil(lambda: widget.current == first and not widget.busy, timeout=20000)
    np.testing.assert_array_equal(viewer.layers["DNA"].data, first_data)

    widget.fluor_mean.setChecked(True)
    qtbot.waitUntil(lambda: "Fluorescent mean" in viewer.layers and not widget.busy, timeout=20000)
    assert len(viewer.layers) == 9
    # well selection drives the site list
    widget.plate.setCurrentIndex(1)
    qtbot.waitUntil(lambda: widget.current.plate == widget.plate.currentText() and not widget.busy,
                    timeout=20000)
    assert len(viewer.layers) == 9


def test_browse_unreachable_root_is_notification(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    widget.load_root(str(tmp_path / "missing"))
    qtbot.waitUntil(lambda: widget.index_status.state.value in ("failed", "done"), timeout=20000)
    assert widget.index_status.state.value == "failed"
    assert "missing" in widget.index_status.message
    assert len(viewer.layers) == 0


def test_reader_opens_whole_field_and_plain_tiff(make_napari_viewer, jump_root, tmp_path):
    viewer = make_napari_viewer()
    images = next(jump_root.source_root.rglob("Images"))
    one = sorted(images.glob("*-ch5sk*.tiff"))[0]
    layers = viewer.open(str(one), plugin="dinocell")
    assert [layer.name for layer in layers] == NAMES
    assert layers[4].metadata["channel"] == 5
    np.testing.assert_array_equal(layers[4].data, tifffile.imread(one))

    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    (layer,) = viewer.open(str(plain), plugin="dinocell")
    assert layer.name == "plain" and layer.data.shape == (64, 64)

    assert viewer.open(str(one), plugin="dinocell") == []  # that field is open already: not twice
    viewer.layers.clear()
    folder_layers = viewer.open(str(images), plugin="dinocell")  # an Images folder: its first field
    assert len(folder_layers) == 8


def test_reader_labels_field_selection_and_jump_folders(make_napari_viewer, qtbot, jump_root, tmp_path):
    viewer = make_napari_viewer()
    # label TIFFs (the CLI's *_labels.tiff, ground-truth masks) open as Labels
    labels = np.zeros((64, 64), np.uint16)
    labels[10:20, 10:20] = 1
    tifffile.imwrite(tmp_path / "field_labels.tiff", labels)
    (layer,) = viewer.open(str(tmp_path / "field_labels.tiff"), plugin="dinocell")
    assert layer.__class__.__name__ == "Labels"
    gt = next(jump_root.source_root.rglob("*_nuclei.tiff"))
    (gt_layer,) = viewer.open(str(gt), plugin="dinocell")
    assert gt_layer.__class__.__name__ == "Labels" and gt_layer.data.max() > 0

    # a field's 8 channel files selected together: one field, not 8 × 8 layers
    images = next(jump_root.source_root.rglob("Images"))
    first = sorted(images.glob("*.tiff"))[0].name.split("-ch")[0]
    files = sorted(str(p) for p in images.glob(f"{first}-ch*.tiff"))
    assert len(files) == 8
    n_before = len(viewer.layers)
    viewer.open(files, plugin="dinocell")
    assert len(viewer.layers) == n_before + 8
    assert [layer.name for layer in list(viewer.layers)[-8:]] == NAMES

    # a CPJUMP1 root folder and a plate folder open the JUMP browser on them
    viewer.open(str(jump_root.source_root), plugin="dinocell")
    docks = dict(viewer.window.dock_widgets)
    browser = next(w for w in docks.values() if hasattr(w, "load_root"))
    qtbot.waitUntil(lambda: bool(browser.fields) and not browser.busy, timeout=20_000)
    assert browser.plate.count() == 2 and browser.root.text() == str(jump_root.source_root)
    plate_folder = images.parent
    viewer.open(str(plate_folder), plugin="dinocell")
    qtbot.waitUntil(lambda: browser.plate.count() == 1 and not browser.index_status.busy and not browser.busy,
                    timeout=20_000)
    assert browser.root.text() == str(plate_folder)
    assert browser.plate.currentText() == plate_folder.name.split("__")[0]
    assert {f.plate_folder for f in browser.fields} == {plate_folder.name}


def test_browser_never_clobbers_user_layers_and_keeps_contrast(make_napari_viewer, qtbot, jump_root):
    viewer = make_napari_viewer()
    viewer.open_sample("dinocell", "cell_painting_field")  # the sample's own "DNA" etc. and ground truth
    from napari_dinocell.widgets.sample_layers import sample_pending

    qtbot.waitUntil(lambda: not sample_pending() and len(viewer.layers) == 10, timeout=20_000)
    sample_dna = viewer.layers["DNA"]
    sample_data = sample_dna.data.copy()
    n_sample = len(viewer.layers)
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    widget.refresh_box.setChecked(True)
    widget.load_root(str(jump_root.source_root))
    qtbot.waitUntil(lambda: len(viewer.layers) == n_sample + 8 and not widget.busy, timeout=20_000)
    np.testing.assert_array_equal(sample_dna.data, sample_data)  # untouched
    ours = [layer for layer in viewer.layers if layer.metadata.get("dinocell_owner") == "jump_browser"]
    assert len(ours) == 8 and sample_dna not in ours
    browser_dna = next(layer for layer in ours if layer.metadata["channel"] == 5)
    assert browser_dna.name == "DNA [1]"

    # per-channel contrast survives a site change; only the browser's layers change
    browser_dna.contrast_limits = (11.0, 555.0)
    widget.next_btn.click()
    qtbot.waitUntil(lambda: widget.current.site == 2 and not widget.busy, timeout=20_000)
    assert tuple(browser_dna.contrast_limits) == (11.0, 555.0)
    np.testing.assert_array_equal(browser_dna.data, tifffile.imread(widget.current.path(str(jump_root.source_root), 5)))
    np.testing.assert_array_equal(sample_dna.data, sample_data)
    assert len(viewer.layers) == n_sample + 8

    # the fluorescent mean is removed when unticked (it would go stale)
    widget.fluor_mean.setChecked(True)
    qtbot.waitUntil(lambda: any(layer.name == "Fluorescent mean" for layer in viewer.layers) and not widget.busy,
                    timeout=20_000)
    widget.fluor_mean.setChecked(False)
    assert not any(layer.name == "Fluorescent mean" for layer in viewer.layers)


def test_sample_data_field_with_labels(make_napari_viewer, qtbot):
    from napari_dinocell.widgets.sample_layers import sample_pending

    viewer = make_napari_viewer()
    viewer.open_sample("dinocell", "cell_painting_field")
    assert [layer.name for layer in viewer.layers] == ["DNA"]  # at once, empty; the field is made in a job
    assert not viewer.layers["DNA"].data.any() and sample_pending()
    qtbot.waitUntil(lambda: not sample_pending() and len(viewer.layers) == 10, timeout=20_000)
    dna = viewer.layers["DNA"]
    assert dna.data.max() > 0 and dna.contrast_limits == list(contrast_limits(dna.data))  # filled, with its limits
    names = [layer.name for layer in viewer.layers]
    assert names[:8] == [CHANNELS[c] for c in range(1, 9)]
    assert "nuclei (ground truth)" in names and "cells (ground truth)" in names
    nuclei = viewer.layers["nuclei (ground truth)"].data
    assert nuclei.max() > 5 and nuclei.shape == viewer.layers["DNA"].data.shape


def test_fluorescent_mean_shown_and_view_fits_a_bigger_field(make_napari_viewer, qtbot, jump_root):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 16), np.uint16), name="small")  # the view fits this 16-px image
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    widget.fluor_mean.setChecked(True)
    widget.load_root(str(jump_root.source_root))
    qtbot.waitUntil(lambda: "Fluorescent mean" in viewer.layers and not widget.busy, timeout=20_000)
    assert viewer.layers["Fluorescent mean"].visible  # ticked to be seen: added visible
    size = viewer.layers["DNA"].data.shape[0]
    assert viewer.scene.camera.center[-1] == pytest.approx((size - 1) / 2, abs=1.0)  # the view was reset to the field
