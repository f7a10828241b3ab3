"""Full garbage collections in a viewer with a DINOCell dock: what lives is frozen after a full collection (later
ones skip it), yet a removed layer is still freed, no job's worker or result is frozen, and a closed dock thaws."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

from napari_dinocell.jobs.runner import jobs_in_flight, start_job
from napari_dinocell.status import JobStatus
from napari_dinocell.widgets.jump_browser import JumpBrowserWidget


@pytest.fixture
def watched_viewer(make_napari_viewer, qtbot):
    """A viewer with a DINOCell dock (which watches it), nothing frozen and no job in flight."""
    viewer = make_napari_viewer(show=True)
    viewer.window.add_dock_widget(JumpBrowserWidget(viewer), name="JUMP browser")
    qtbot.waitUntil(lambda: jobs_in_flight() == 0, timeout=10_000)
    gc.unfreeze()
    return viewer


def test_a_full_collection_freezes_what_lives_and_later_ones_walk_only_the_rest(watched_viewer, qtbot) -> None:
    gc.collect()
    frozen = gc.get_freeze_count()
    assert frozen > 100_000  # napari, Qt wrappers, numpy, torch… (the modules alone are tens of thousands)
    qtbot.wait(50)  # the queued settle collection
    assert len(gc.get_objects()) * 20 < frozen  # what a full collection walks now


def test_a_removed_layer_is_freed_though_it_was_frozen(watched_viewer, qtbot) -> None:
    data = np.zeros((256, 256), np.uint16)
    layer = watched_viewer.add_image(data, name="to remove")
    layer_ref, data_ref = weakref.ref(layer), weakref.ref(data)
    del layer, data
    gc.collect()
    assert gc.get_freeze_count() > 0

    watched_viewer.layers.remove("to remove")
    qtbot.wait(20)
    gc.collect()  # a removed layer that outlives a full collection (frozen in a cycle) thaws the collector…
    gc.collect()  # …and the next one frees it, then freezes again
    assert layer_ref() is None and data_ref() is None
    assert gc.get_freeze_count() > 0


def test_nothing_is_frozen_while_a_job_is_in_flight(watched_viewer, qtbot) -> None:
    release = threading.Event()
    result_refs: list[weakref.ref] = []

    def job() -> np.ndarray:
        release.wait(10)
        result = np.ones((64, 64))
        result_refs.append(weakref.ref(result))
        return result

    worker = start_job(job, status=JobStatus(), title="waiting job")
    worker_ref = weakref.ref(worker)
    del worker
    qtbot.waitUntil(lambda: jobs_in_flight() == 1, timeout=5000)
    gc.collect()
    assert gc.get_freeze_count() == 0  # the job's worker is alive: it must not be frozen

    release.set()
    qtbot.waitUntil(lambda: jobs_in_flight() == 0, timeout=10_000)
    qtbot.wait(20)
    gc.collect()
    assert gc.get_freeze_count() > 0  # no job in flight: frozen
    assert worker_ref() is None and result_refs and result_refs[0]() is None  # the worker and its result were freed


def test_a_destroyed_dock_thaws(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    dock = JumpBrowserWidget(viewer)
    qtbot.waitUntil(lambda: jobs_in_flight() == 0, timeout=10_000)
    gc.collect()
    assert gc.get_freeze_count() > 0
    with qtbot.waitSignal(dock.destroyed, timeout=5000):
        dock.deleteLater()
    assert gc.get_freeze_count() == 0
