"""Every job error ends as a notification with the widget usable again, whatever the exception type — including
the RuntimeError family (superqt's worker drops those) and CUDA out-of-memory — and progress is throttled."""

from __future__ import annotations

import time

import pytest
import torch

from dinocell_core.io.checkpoint import CheckpointError
from dinocell_core.runs.launch import LaunchError
from dinocell_core.ssl.data import TooManyFailures
from napari_dinocell.jobs.runner import Progress, start_job, throttled
from napari_dinocell.status import JobState, JobStatus

ERRORS = [
    ValueError("bad value"),
    RuntimeError("plain runtime error"),
    LaunchError("could not launch"),
    CheckpointError("checkpoint is corrupt"),
    TooManyFailures("too many unreadable images"),
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    KeyError("missing_key"),
]


def _plain(exc: BaseException) -> None:
    raise exc


def _generator(exc: BaseException):
    yield Progress(1, 3, "first step")
    raise exc


@pytest.mark.parametrize("kind", ["plain", "generator"])
@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: type(e).__name__)
def test_every_exception_is_a_notification_and_finishes(qtbot, notifications, kind, exc):
    status = JobStatus()
    finished: list[bool] = []
    func = _plain if kind == "plain" else _generator
    worker = start_job(func, exc, status=status, title="Job", on_finished=lambda: finished.append(True))
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert status.state == JobState.FAILED
    assert str(exc).strip("'") in status.message
    assert any(m.startswith("Job failed") and str(exc).strip("'") in m for m in notifications), notifications
    del worker


def test_progress_is_throttled_in_the_worker():
    def fast():
        for i in range(1, 1001):
            yield Progress(i, 1000)
        return "result"

    gen = throttled(fast(), interval_s=10.0)
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            assert stop.value == "result"
            break
    assert [p.done for p in items] == [1, 1000]  # the first, then only the final count


def test_eta_from_progress(qtbot):
    status = JobStatus()
    status.start("x")
    status.started_at = time.monotonic() - 10.0
    status.progress(1, 5)
    assert status.eta_s == pytest.approx(40.0, rel=0.05)
    status.finish()
    assert status.eta_s is None


def test_features_widget_given_a_decoder_bundle_is_usable_again(make_napari_viewer, qtbot, models_dir,
                                                                notifications):
    """The case seen in use: a decoder bundle is not a backbone checkpoint (a RuntimeError subclass deep down)."""
    import numpy as np

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="DNA")
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Backbone features")
    widget.weights.setText(str(models_dir / "demo-DNA.safetensors"))
    widget.device.setCurrentText("cpu")
    widget.run_btn.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.status.state == JobState.FAILED
    assert widget.run_btn.isEnabled() and not widget.progress.cancel_btn.isEnabled()
    assert any("Backbone features failed" in m for m in notifications), notifications


def test_a_closed_widget_is_not_called_back_and_no_false_failure(qtbot, notifications):
    """A dock closed while its job runs: its result handler is skipped instead of failing on the deleted widget."""
    import threading

    from qtpy.QtWidgets import QLineEdit, QWidget

    class Dock(QWidget):
        def __init__(self) -> None:
            super().__init__()
            self.edit = QLineEdit(self)
            self.results: list[str] = []

        def listed(self, value: str) -> None:
            self.results.append(value)
            self.edit.setText(value)  # raises on a deleted widget

    release = threading.Event()

    def job() -> str:
        release.wait(10)
        return "listing"

    dock = Dock()
    results = dock.results
    finished: list[bool] = []
    status = JobStatus()
    worker = start_job(job, status=status, title="Scanning models", on_returned=dock.listed,
                       on_finished=lambda: finished.append(True))
    with qtbot.waitSignal(dock.destroyed, timeout=5_000):
        dock.deleteLater()
    release.set()
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert results == []
    assert not [m for m in notifications if "failed" in m], notifications
    assert status.state != JobState.FAILED

    live = Dock()
    start_job(lambda: "again", status=JobStatus(), title="Scanning models", on_returned=live.listed)
    qtbot.waitUntil(lambda: live.results == ["again"], timeout=10_000)
    assert live.edit.text() == "again"
    del worker
