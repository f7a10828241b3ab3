"""All six DINOCell docks open in one window fit a 1000-px-high screen (their content scrolls), and folders are
remembered between sessions (QSettings)."""

from __future__ import annotations

from qtpy.QtCore import QThreadPool
from qtpy.QtWidgets import QScrollArea

DOCKS = ("Pretrain", "Train decoder", "Runs", "JUMP browser", "Segment", "Backbone features")


def test_all_docks_fit_a_1000_px_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    widgets = []
    for name in DOCKS:
        _, widget = viewer.window.add_plugin_dock_widget("dinocell", name)
        widgets.append(widget)
    for widget in widgets:
        assert widget.findChild(QScrollArea) is not None, type(widget).__name__
        assert widget.minimumSizeHint().height() <= 200, (type(widget).__name__, widget.minimumSizeHint())
    qt_window = viewer.window._qt_window
    assert qt_window.minimumSizeHint().height() <= 1000, qt_window.minimumSizeHint()
    qt_window.resize(1400, 1000)
    qtbot.wait(50)
    assert qt_window.height() <= 1000


def test_folders_are_remembered_between_sessions(make_napari_viewer, tmp_path):
    from napari_dinocell.widgets.jump_browser import JumpBrowserWidget
    from napari_dinocell.widgets.pretrain import PretrainWidget
    from napari_dinocell.widgets.segment.dock import SegmentWidget

    viewer = make_napari_viewer()
    browser = JumpBrowserWidget(viewer)
    browser.root.setText(str(tmp_path / "cpjump1"))
    seg = SegmentWidget(viewer)
    seg.picker.models_dir.setText(str(tmp_path / "models"))
    seg.export.folder.setText(str(tmp_path / "results"))
    pre = PretrainWidget(viewer)
    pre.out_dir.set(str(tmp_path / "runs"))
    for w in (browser, seg, pre):
        w.deleteLater()

    assert JumpBrowserWidget(viewer).root.text() == str(tmp_path / "cpjump1")
    seg2 = SegmentWidget(viewer)
    assert seg2.picker.models_dir.text() == str(tmp_path / "models")
    assert seg2.export.folder.text() == str(tmp_path / "results")
    assert PretrainWidget(viewer).out_dir.get() == str(tmp_path / "runs")


def test_segment_dock_warms_up_once_after_it_is_first_shown(make_napari_viewer, qtbot, monkeypatch, models_dir):
    """The warm-up (torch, the model code, napari's first-Labels work) and the remembered models folder's listing
    (whose model is then preloaded: torch again) hold the GIL for ~0.5 s: they start after the dock is first shown
    and painted, once, not while napari builds and paints the dock."""
    import napari_dinocell.widgets.segment.dock as dock_module
    from napari_dinocell.widgets.common import remember

    remember("segment/models_folder", str(models_dir))
    calls: list[str] = []
    real = dock_module.warm_segmentation
    monkeypatch.setattr(dock_module, "warm_segmentation", lambda: (real(), calls.append("warm"))[0])
    viewer = make_napari_viewer()  # hidden: a dock in it is never shown
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Segment")
    qtbot.wait(100)
    assert calls == [] and widget.picker.listing is None
    assert widget.picker.models_dir.text() == str(models_dir)
    viewer.window.show()
    qtbot.waitUntil(lambda: calls == ["warm"], timeout=30_000)
    qtbot.waitUntil(lambda: widget.picker.model_combo.count() == 2, timeout=30_000)  # the remembered folder listed
    widget.hide()
    widget.show()
    qtbot.wait(100)
    assert calls == ["warm"]
    # the listed model's preload, then nothing left running when the viewer closes
    qtbot.waitUntil(lambda: widget.preload_status.state.name == "DONE", timeout=30_000)
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=10_000)
