"""The plugin's toasts in a real viewer: one per event however many docks saw it, underscores readable."""

from __future__ import annotations

import os

from dinocell_core.config import StrictModel
from dinocell_core.runs.rundir import RunDir


class _Cfg(StrictModel):
    lr: float = 1e-3


def test_a_failed_run_seen_by_two_docks_is_one_toast(make_napari_viewer, qtbot, tmp_path, notifications):
    run = RunDir(tmp_path / "runs" / "r")
    run.write_config(_Cfg())
    run.update_status(state="running", kind="pretrain", pid=os.getpid())
    viewer = make_napari_viewer()
    _, runs = viewer.window.add_plugin_dock_widget("dinocell", "Runs")
    _, form = viewer.window.add_plugin_dock_widget("dinocell", "Pretrain")
    runs.watcher.timer.setInterval(50)
    runs.set_folder(tmp_path / "runs")
    form.run_controls._started(run.path)  # the form that launched it waits for its end too
    qtbot.waitUntil(lambda: runs.table.rowCount() == 1, timeout=5000)
    qtbot.wait(200)
    run.update_status(state="failed", error="CUDA out of memory")
    qtbot.waitUntil(lambda: "CUDA out of memory" in form.run_controls.message.text(), timeout=5000)
    qtbot.wait(300)
    failed = [m for m in notifications if "CUDA out of memory" in m]
    assert failed == ["run r failed: CUDA out of memory"], notifications
    runs.watcher.timer.stop()
    qtbot.waitUntil(lambda: not runs.watcher.polling, timeout=5000)


def test_toasts_keep_underscores(make_napari_viewer, qtbot):
    """napari's collapsed toast clipped the descenders of its one line: underscores looked like spaces."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    from napari_dinocell.notify import show_error

    make_napari_viewer(show=True)
    show_error("Saving failed: BR00116991_A01_s3_DNA_labels.tiff")
    qtbot.waitUntil(lambda: bool(NapariQtNotification._instances), timeout=5000)
    toast = NapariQtNotification._instances[-1]
    qtbot.wait(300)  # laid out and faded in
    label = toast.message
    assert "BR00116991_A01_s3" in label.text()
    assert label.contentsRect().height() >= label.fontMetrics().height()
    toast.close()
