"""Driving the Segment dock in a real viewer: open it on a models folder, wait until its jobs are done."""

from __future__ import annotations

from pathlib import Path


def segment_widget(viewer, qtbot, folder: Path):
    """The Segment dock with ``folder``'s models listed."""
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Segment")
    widget.picker.scan_models(str(folder))
    qtbot.waitUntil(lambda: widget.picker.model_combo.count() > 0, timeout=20_000)
    return widget


def wait_idle(widget, qtbot) -> None:
    """Until no segmentation, result placement or re-threshold is under way."""
    qtbot.waitUntil(lambda: widget.worker is None and not widget.status.busy and not widget.showing
                    and not widget._thresholding, timeout=60_000)
