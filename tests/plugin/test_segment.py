"""Segment widget in a real viewer with decoder bundles trained in this test session (tiny, on the fixture):
labels, instant re-threshold from the cached distance map, in-place re-run, model auto-selection, the whole
field, cancel, broken/missing model files as notifications; the bundle's thresholds give the CLI's labels;
results tied to their data; model/channel checks; saving labels and measurements; display options."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from dinocell_core.seg.bundle import load_bundle, save_bundle
from dinocell_core.seg.inference import Segmenter
from napari_dinocell.jobs.segment import threshold_job
from napari_dinocell.sample_data import sample_field
from napari_dinocell.status import JobState
from tests.helpers.segment_dock import segment_widget, wait_idle


def add_field(viewer, size: int = 128, seed: int = 2) -> None:
    for data, kwargs, kind in sample_field(size=size, seed=seed):
        if kind == "image":
            viewer.add_image(data, **kwargs)


def test_segment_rethreshold_rerun_autoselect_and_field(make_napari_viewer, qtbot, models_dir):
    viewer = make_napari_viewer()
    add_field(viewer)
    widget = segment_widget(viewer, qtbot, models_dir)
    assert [widget.picker.model_combo.itemText(i) for i in range(2)] == ["Mito · demo-Mito", "DNA · demo-DNA"]

    # the model follows the layer's channel
    widget.picker.layer_combo.set_layer(viewer.layers["Mito"])
    assert widget.picker.model_combo.currentData().endswith("demo-Mito.safetensors")
    widget.picker.layer_combo.set_layer(viewer.layers["DNA"])
    assert widget.picker.model_combo.currentData().endswith("demo-DNA.safetensors")

    network_runs: list[JobState] = []
    widget.status.events.state.connect(lambda s: network_runs.append(s) if s == JobState.RUNNING else None)
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.state == JobState.DONE, widget.status.message
    labels = viewer.layers["DNA labels"]
    assert labels.__class__.__name__ == "Labels" and labels.data.shape == viewer.layers["DNA"].data.shape
    assert labels.visible  # added hidden, shown on the next event-loop turn
    assert len(network_runs) == 1
    assert widget.progress.bar.value() == widget.progress.bar.maximum() and "done after" in widget.progress.detail_text

    # sliders: labels recomputed from the cached distance map; no network job starts
    out = widget.outputs.get(viewer.layers["DNA"])
    distance = out.distance
    for peak, fill in ((float(np.quantile(distance, 0.95)), float(np.quantile(distance, 0.5))), (0.99, 0.98)):
        widget.thresholds.peak.setValue(peak)
        widget.thresholds.fill.setValue(fill)
        expected = threshold_job(out.segmenter, distance, widget.thresholds.peak.value(),
                                 widget.thresholds.fill.value(), 0)
        qtbot.waitUntil(lambda e=expected: np.array_equal(labels.data, e), timeout=10_000)
        assert widget.worker is None
    assert len(network_runs) == 1  # still the one segmentation: re-thresholding never ran the network

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

    # the distance-map toggle works both ways without a re-run
    widget.show_distance.setChecked(False)
    assert not viewer.layers["DNA distance"].visible and not viewer.layers["Mito distance"].visible
    widget.show_distance.setChecked(True)
    qtbot.waitUntil(lambda: viewer.layers["DNA distance"].visible, timeout=5000)
    assert len(network_runs) == 3
    # outlines as a display option
    widget.outlines.setChecked(True)
    assert labels.contour > 0 and viewer.layers["Mito labels"].contour > 0
    widget.outlines.setChecked(False)
    assert labels.contour == 0


def test_bundle_thresholds_and_min_size_give_the_cli_labels(make_napari_viewer, qtbot, models_dir, tmp_path):
    """A bundle with recorded non-default peak/fill/min_size: the widget starts from them, and its labels equal
    those `dinocell-core segment` writes for the same image."""
    image = sample_field(size=160, seed=5)[4][0]  # the DNA plane
    img_path = tmp_path / "field_DNA.tiff"
    tifffile.imwrite(img_path, image)
    bundle = load_bundle(models_dir / "demo-DNA.safetensors")
    seg = Segmenter(bundle, device="cpu")
    distance = seg.predict_distance(image)
    peak, fill = round(float(np.quantile(distance, 0.97)), 2), round(float(np.quantile(distance, 0.7)), 2)
    assert fill < peak
    default_labels = seg.labels(distance)
    seg.release()
    custom = tmp_path / "models"
    meta = {**bundle.metadata, "name": "custom-DNA", "thresholds": {"peak": peak, "fill": fill, "min_size": 25}}
    save_bundle(custom / "custom-DNA.safetensors", bundle.build_model(), meta)

    out_dir = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "dinocell_core.cli", "segment", str(custom / "custom-DNA.safetensors"),
                    str(img_path), "-o", str(out_dir), "--device", "cpu"], check=True, capture_output=True)
    cli_labels = tifffile.imread(out_dir / "field_DNA_labels.tiff")

    viewer = make_napari_viewer()
    layer = viewer.add_image(tifffile.imread(img_path), name="DNA")
    widget = segment_widget(viewer, qtbot, custom)
    assert (widget.thresholds.peak.value(), widget.thresholds.fill.value(),
            widget.thresholds.min_size.value()) == (peak, fill, 25)
    assert "peak" in widget.picker.model_info.text() and "custom-DNA" in widget.picker.model_info.text()
    widget.picker.layer_combo.set_layer(layer)
    widget.device.setCurrentText("cpu")
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    napari_labels = viewer.layers["DNA labels"].data
    assert cli_labels.max() > 0
    np.testing.assert_array_equal(napari_labels, cli_labels)
    assert not np.array_equal(compact(default_labels), cli_labels)  # the recorded values did matter


def compact(labels):
    from dinocell_core.seg.distance import compact_labels

    return compact_labels(labels)


def test_results_are_tied_to_their_data(make_napari_viewer, qtbot, models_dir, notifications, tmp_path):
    viewer = make_napari_viewer()
    add_field(viewer)
    widget = segment_widget(viewer, qtbot, models_dir)
    dna = viewer.layers["DNA"]
    widget.picker.layer_combo.set_layer(dna)
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    labels = viewer.layers["DNA labels"]
    before = labels.data.copy()

    # the image changes (the browser's next site): results marked stale, sliders do nothing
    dna.data = sample_field(size=128, seed=9)[4][0]
    assert labels.name == "DNA labels [stale]" and not labels.visible
    assert widget.outputs.get(dna).stale and "stale" in widget.message.text()
    widget.thresholds.peak.setValue(0.9)
    qtbot.wait(200)
    wait_idle(widget, qtbot)
    np.testing.assert_array_equal(labels.data, before)

    # a re-run on the new data clears the mark, in place
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    assert viewer.layers["DNA labels"] is labels and labels.visible and not widget.outputs.get(dna).stale

    # the image changes while the network runs: its result is dropped, not shown over the new image
    widget.run_btn.click()
    dna.data = sample_field(size=128, seed=11)[4][0]
    wait_idle(widget, qtbot)
    assert "dropped the result of DNA" in widget.status.message
    assert labels.name.endswith("[stale]")

    # saving stale labels is refused
    widget.export.folder.setText(str(tmp_path))
    widget.export.save_btn.click()
    assert any("stale" in m for m in notifications) and not list(tmp_path.iterdir())


def test_model_channel_checks_selection_and_channel_picker(make_napari_viewer, qtbot, models_dir, notifications):
    viewer = make_napari_viewer()
    add_field(viewer)
    widget = segment_widget(viewer, qtbot, models_dir)

    # follows the layer selection
    viewer.layers.selection.active = viewer.layers["ER"]
    assert widget.picker.layer_combo.current_layer() is viewer.layers["ER"]
    viewer.layers.selection.active = viewer.layers["Brightfield"]
    assert widget.picker.layer_combo.current_layer() is viewer.layers["Brightfield"]
    # no Brightfield model: the DNA/Mito model left selected is flagged
    assert "trained on" in widget.picker.match_warning.text() and "Brightfield" in widget.picker.match_warning.text()
    viewer.layers.selection.active = viewer.layers["DNA"]
    assert widget.picker.match_warning.text() == ""
    assert "validation" in widget.picker.model_info.text() and "tile 32 px" in widget.picker.model_info.text()

    # fill stays below peak
    widget.thresholds.peak.setValue(0.3)
    widget.thresholds.fill.setValue(0.5)
    assert widget.thresholds.fill.value() < widget.thresholds.peak.value()

    # a multichannel layer: a channel picker, and the picked plane is segmented
    stack = np.stack([sample_field(size=96, seed=3)[i][0] for i in (0, 4)])  # [Mito, DNA]
    multi = viewer.add_image(stack, name="stack", channel_axis=None)
    widget.picker.layer_combo.set_layer(multi)
    assert widget.picker.channel_pick.isEnabled() and widget.picker.channel_pick.count() == 2
    widget.picker.channel_pick.setCurrentIndex(1)
    widget.picker.model_combo.setCurrentIndex(widget.picker.model_combo.findText("DNA · demo-DNA"))
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.state == JobState.DONE, widget.status.message
    assert viewer.layers["stack labels"].data.shape == (96, 96)
    seg = Segmenter(models_dir / "demo-DNA.safetensors", device="cpu", tile_size=widget.tile.value())
    expected = compact(seg.labels(seg.predict_distance(stack[1]), *widget.thresholds.values()))
    np.testing.assert_array_equal(viewer.layers["stack labels"].data, expected)

    # an RGB layer too
    rgb = viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="rgb", rgb=True)
    widget.picker.layer_combo.set_layer(rgb)
    assert [widget.picker.channel_pick.itemText(i) for i in range(3)] == ["red", "green", "blue"]

    # segmenting with a mismatched model warns
    widget.picker.layer_combo.set_layer(viewer.layers["Brightfield"])
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    assert any("trained on" in m for m in notifications)


def test_save_labels_measurements_and_edit_warning(make_napari_viewer, qtbot, models_dir, notifications, tmp_path):
    viewer = make_napari_viewer()
    data = sample_field(size=128, seed=2)[4][0]
    dna = viewer.add_image(data, name="DNA", metadata={"channel": 5, "plate": "BR00116991", "well": "A01",
                                                        "site": 3})
    widget = segment_widget(viewer, qtbot, models_dir)
    widget.picker.layer_combo.set_layer(dna)
    widget.thresholds.peak.setValue(float(np.round(0.35, 2)))
    widget.thresholds.fill.setValue(0.1)
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    labels = viewer.layers["DNA labels"]

    # a hand edit, then a slider move: warned, edits kept until confirmed
    labels.paint((5, 5), 999)
    edited = labels.data.copy()
    widget.thresholds.peak.setValue(0.6)
    qtbot.waitUntil(lambda: widget.overwrite_btn.isVisibleTo(widget), timeout=5000)
    assert any("edited by hand" in m for m in notifications)
    np.testing.assert_array_equal(labels.data, edited)

    # save: the current (edited) labels, named by plate / well / site
    widget.export.folder.setText(str(tmp_path / "results"))
    widget.export.save_btn.click()
    saved = tmp_path / "results" / "BR00116991_A01_s3_DNA_labels.tiff"
    qtbot.waitUntil(saved.exists, timeout=10_000)
    np.testing.assert_array_equal(tifffile.imread(saved), edited)  # the hand edit is saved too

    widget.export.export_btn.click()
    table = tmp_path / "results" / "BR00116991_A01_s3_DNA_objects.parquet"  # Parquet, like segment-plate's
    qtbot.waitUntil(table.exists, timeout=10_000)
    import json

    import pandas as pd
    import pyarrow.parquet as pq

    frame = pd.read_parquet(table)
    rows = frame.to_dict("records")
    assert len(rows) == len(set(np.unique(edited)) - {0})
    first = rows[0]
    assert first["Metadata_Plate"] == "BR00116991" and first["Metadata_Well"] == "A01" and first["Metadata_Site"] == 3
    mask = edited == int(first["ObjectNumber"])
    assert float(first["Nuclei_AreaShape_Area"]) == int(mask.sum())  # a DNA image: nuclei, as segment-plate names
    assert not any(c.startswith("Cells_") for c in frame.columns)
    centre = [c for c in frame.columns if "Center" in c]
    assert centre == ["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]  # the centre once
    scale = float(np.iinfo(data.dtype).max) if np.issubdtype(data.dtype, np.integer) else 1.0  # CellProfiler's
    assert float(first["Nuclei_Intensity_MeanIntensity_DNA"]) == pytest.approx(float(data[mask].mean()) / scale,
                                                                               rel=1e-4)
    units = json.loads(pq.read_schema(table).metadata[b"dinocell_units"])
    assert f"÷ {scale:g}" in units["Intensity"] and "pixels" in units["AreaShape"]  # the scale is stated

    # confirmed overwrite applies the thresholds
    widget.overwrite_btn.click()
    qtbot.waitUntil(lambda: not np.array_equal(labels.data, edited), timeout=10_000)
    assert not widget.overwrite_btn.isVisibleTo(widget)

    # "full": CellProfiler's measurements by cp-measure, the minimal columns among them with the same areas
    pytest.importorskip("cp_measure")
    widget.export.features.setCurrentText("full")
    stamp = table.stat().st_mtime_ns
    widget.export.export_btn.click()
    qtbot.waitUntil(lambda: table.stat().st_mtime_ns != stamp, timeout=30_000)
    full = pd.read_parquet(table)
    assert "Nuclei_Texture_AngularSecondMoment_DNA_3_00_256" in full and "Nuclei_Granularity_1_DNA" in full
    assert set(frame.columns) <= set(full.columns)


def test_cancel_and_model_file_errors(make_napari_viewer, qtbot, models_dir, notifications, tmp_path):
    viewer = make_napari_viewer()
    big = viewer.add_image(np.random.default_rng(0).integers(0, 4000, (1024, 1024)).astype(np.uint16), name="DNA")
    widget = segment_widget(viewer, qtbot, models_dir)
    widget.picker.layer_combo.set_layer(big)
    widget.tile.setValue(32)  # thousands of tile batches: time to cancel between two of them
    widget.run_btn.click()
    qtbot.waitUntil(lambda: widget.status.done > 0, timeout=30_000)
    assert widget.progress.cancel_btn.isEnabled()
    assert "tiles" in widget.progress.detail_text and "elapsed" in widget.progress.detail_text
    widget.progress.cancel_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.state == JobState.CANCELLED
    assert widget.status.done < widget.status.total
    assert "DNA labels" not in viewer.layers and widget.run_btn.isEnabled()

    # a bundle whose weights were altered after it was listed
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(models_dir / "demo-DNA.safetensors", bad / "demo-DNA.safetensors")
    widget.picker.scan_models(str(bad))
    qtbot.waitUntil(lambda: widget.picker.listing is not None and widget.picker.listing.verified
                    and widget.picker.listing.folder == bad and widget.picker.model_combo.count() == 1, timeout=20_000)
    data = bytearray((bad / "demo-DNA.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (bad / "demo-DNA.safetensors").write_bytes(bytes(data))
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
    widget.picker.scan_models(str(tmp_path))
    qtbot.waitUntil(lambda: any("no model bundles" in m for m in notifications), timeout=20_000)
    assert "DNA labels" not in viewer.layers


def test_segment_this_well_and_plate_to_disk(make_napari_viewer, qtbot, models_dir, tmp_path):
    """From a JUMP browser layer: every site of the well (then the plate) segmented in the background by
    segment-plate's runner — its labels layout (equal to Segmenter on that field's file) and Parquet measurements;
    the plate run skips the well's finished fields and writes the plate table."""
    import pandas as pd

    from dinocell_core.seg.plate import PlateLayout, read_plate
    from dinocell_core.synthetic.fixture import make_jump_fixture

    info = make_jump_fixture(tmp_path / "fx", plates=1, wells=2, sites=2, size=64, seed=4)
    viewer = make_napari_viewer()
    _, browser = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    browser.load_root(str(info.source_root))
    qtbot.waitUntil(lambda: len(viewer.layers) == 8 and not browser.busy, timeout=20_000)
    widget = segment_widget(viewer, qtbot, models_dir)
    widget.picker.layer_combo.set_layer(viewer.layers["DNA"])
    widget.device.setCurrentText("cpu")
    results = tmp_path / "results"
    widget.export.folder.setText(str(results))
    widget.export.well_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.state == JobState.DONE, widget.status.message
    field = browser.current
    layout = PlateLayout(results)
    well_fields = sorted((f for f in browser.fields if f.well == field.well), key=lambda f: f.site)
    assert [p.name for p in sorted(results.glob("labels/*/*/*.tiff"))] == [
        layout.labels(f, "Nuclei").name for f in well_fields]
    assert all(layout.part(f).is_file() for f in well_fields)
    assert not layout.plate_table(field.plate_folder).exists()  # the other well is not done yet
    seg = Segmenter(models_dir / "demo-DNA.safetensors", device="cpu", tile_size=widget.tile.value())
    first = well_fields[0]
    image = tifffile.imread(first.path(str(info.source_root), 5))
    expected = compact(seg.labels(seg.predict_distance(image), *widget.thresholds.values()))
    np.testing.assert_array_equal(tifffile.imread(layout.labels(first, "Nuclei")), expected)
    part = pd.read_parquet(layout.part(first))
    assert list(part["ObjectNumber"]) == list(range(1, int(expected.max()) + 1))
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_Site", "Nuclei_AreaShape_Area",
            "Nuclei_Intensity_MeanIntensity_DNA"} <= set(part.columns)
    assert f"{len(well_fields)} fields" in widget.status.message
    mtimes = [layout.part(f).stat().st_mtime_ns for f in well_fields]

    widget.export.plate_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.state == JobState.DONE, widget.status.message
    assert len(list(results.glob("labels/*/*/*.tiff"))) == len(browser.fields)
    assert [layout.part(f).stat().st_mtime_ns for f in well_fields] == mtimes  # resumed: not segmented again
    table = read_plate(results, field.plate_folder)
    assert sorted(set(table["Metadata_Well"])) == sorted({f.well for f in browser.fields})
    assert str(layout.plate_table(field.plate_folder)) in widget.status.message


def test_image_never_follows_a_result_layer(make_napari_viewer, qtbot, models_dir, tmp_path):
    """Ticking "show distance map" adds (and napari activates) the DNA distance layer: the Image stays DNA, Save and
    Export still work, and "Segment all channels" never runs a model on a result layer."""
    viewer = make_napari_viewer()
    add_field(viewer)
    widget = segment_widget(viewer, qtbot, models_dir)
    dna = viewer.layers["DNA"]
    viewer.layers.selection.active = dna
    widget.run_btn.click()
    wait_idle(widget, qtbot)
    widget.show_distance.setChecked(True)
    qtbot.waitUntil(lambda: "DNA distance" in viewer.layers and viewer.layers["DNA distance"].visible,
                    timeout=5000)
    distance = viewer.layers["DNA distance"]
    viewer.layers.selection.active = distance  # also when the user clicks it
    assert widget.picker.current_layer() is dna
    combo = widget.picker.layer_combo
    assert "DNA distance" not in [combo.itemText(i) for i in range(combo.count())]

    widget.export.folder.setText(str(tmp_path))
    widget.export.save_btn.click()
    qtbot.waitUntil(lambda: (tmp_path / "DNA_labels.tiff").exists(), timeout=10_000)
    widget.export.export_btn.click()
    qtbot.waitUntil(lambda: any(tmp_path.glob("DNA_objects.*")), timeout=10_000)

    viewer.layers.selection.active = distance
    widget.all_btn.click()
    wait_idle(widget, qtbot)
    assert widget.status.message.endswith("in 2 image(s)"), widget.status.message  # DNA and Mito, nothing else
    assert not any("distance labels" in layer.name or "distance distance" in layer.name for layer in viewer.layers)


def test_unusable_bundles_listed_greyed_with_why(make_napari_viewer, qtbot, models_dir, tmp_path):
    """A truncated bundle and one with altered weights (same metadata as the good one) are listed as unusable,
    greyed, with why as their tooltip, after the good model; neither is ever chosen."""
    from qtpy.QtCore import Qt

    folder = tmp_path / "models"
    folder.mkdir()
    good = folder / "demo-DNA.safetensors"
    shutil.copy(models_dir / "demo-DNA.safetensors", good)
    blob = good.read_bytes()
    (folder / "truncated-DNA.safetensors").write_bytes(blob[: len(blob) // 2])
    altered = bytearray(blob)
    altered[-100] ^= 0xFF
    (folder / "altered-DNA.safetensors").write_bytes(bytes(altered))
    viewer = make_napari_viewer()
    viewer.add_image(sample_field(size=64, seed=2)[4][0], name="DNA", metadata={"channel": 5})
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Segment")
    widget.picker.scan_models(str(folder))
    qtbot.waitUntil(lambda: widget.picker.listing is not None and widget.picker.listing.verified, timeout=30_000)
    combo = widget.picker.model_combo
    texts = [combo.itemText(i) for i in range(combo.count())]
    assert texts[0] == "DNA · demo-DNA" and len(texts) == 3, texts
    for name in ("truncated-DNA.safetensors", "altered-DNA.safetensors"):
        i = next(i for i, t in enumerate(texts) if name in t)
        assert "unusable" in texts[i] and not combo.model().item(i).isEnabled()
        assert combo.itemData(i, Qt.ItemDataRole.ToolTipRole)  # why
    tips = " ".join(str(combo.itemData(i, Qt.ItemDataRole.ToolTipRole)) for i in (1, 2))
    assert "digest" in tips, tips  # the altered one: its weights do not match
    assert "2 unusable" in widget.picker.models_problem.text()
    assert combo.currentData() == str(good) and [b.path for b in widget.picker.bundles] == [good]
