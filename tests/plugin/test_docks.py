"""All six DINOCell docks open in one window fit a 1000-px-high screen (their content scrolls), and folders are
remembered between sessions (QSettings)."""

from __future__ import annotations

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
