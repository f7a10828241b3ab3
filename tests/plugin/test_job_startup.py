"""What a job needs before it runs, done off the GUI thread: loaded models kept between Segment clicks, pint's unit
registry built in a worker, and triton's library opened safely before a worker imports torch in a shown viewer."""

from __future__ import annotations

import os
import subprocess
import sys
import weakref

import numpy as np
import pytest

from dinocell_core.seg.bundle import BundleError
from dinocell_core.seg.inference import Segmenter
from napari_dinocell.jobs.model_cache import ModelCache
from napari_dinocell.jobs.runner import start_job
from napari_dinocell.jobs.segment import SegmentTask, segment_job, threshold_job
from napari_dinocell.status import JobStatus
from tests.helpers import REPO
from tests.helpers.bundles import tiny_dna_bundle


def test_model_cache_loads_each_file_once_and_follows_replaced_files(tmp_path):
    a, b = tiny_dna_bundle(tmp_path, "a"), tiny_dna_bundle(tmp_path, "b")
    cache = ModelCache(capacity=1)
    first = cache.model(a, "cpu")[1]
    assert cache.model(a, "cpu")[1] is first  # a second click reuses the loaded network
    assert cache.model(a, "cpu")[0].state_dict == {}  # the weights live once, in the network
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the bundle was retrained / replaced
    replaced = cache.model(a, "cpu")[1]
    assert replaced is not first
    cache.model(b, "cpu")
    assert len(cache) == 1 and cache.model(a, "cpu")[1] is not replaced  # capacity 1: b evicted a
    with pytest.raises(BundleError, match=r"missing\.safetensors: file does not exist"):
        cache.model(tmp_path / "missing.safetensors", "cpu")


def test_cached_model_segments_like_a_fresh_segmenter(tmp_path):
    path = tiny_dna_bundle(tmp_path, "dna")
    image = np.random.default_rng(0).integers(0, 4000, (96, 96)).astype(np.uint16)
    cache = ModelCache()
    cached = cache.segmenter(path, "cpu", tile_size=64, channel=None)
    fresh = Segmenter(path, device="cpu", tile_size=64)
    np.testing.assert_array_equal(cached.predict_distance(image), fresh.predict_distance(image))


def test_segment_job_results_hold_no_network(qtbot, tmp_path):
    """A result keeps its Segmenter for re-thresholding; the network stays only in the cache."""
    from napari.layers import Image

    path = tiny_dna_bundle(tmp_path, "dna")
    layer = Image(np.random.default_rng(1).integers(0, 4000, (80, 80)).astype(np.uint16), name="DNA")
    gen = segment_job([SegmentTask(weakref.ref(layer), np.asarray(layer.data), path, 0)], "cpu", 64, 0.47, 0.09, 0)
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    (result,) = stop.value.value
    assert result.segmenter.model is None and result.labels.shape == (80, 80)
    np.testing.assert_array_equal(threshold_job(result.segmenter, result.distance, 0.47, 0.09, 0), result.labels)


def test_jobs_wait_for_a_unit_registry_built_off_the_gui_thread(qtbot):
    import pint
    from pint.registry import LazyRegistry

    from napari_dinocell.jobs import runner

    saved = pint.get_application_registry().get()
    pint.set_application_registry(LazyRegistry())  # a fresh session: pint has parsed nothing yet
    runner._UNITS.ready = False
    try:
        status = JobStatus()
        seen: list[object] = []
        start_job(lambda: "ran", status=status, title="Job", on_returned=seen.append)
        assert isinstance(pint.get_application_registry().get(), LazyRegistry)  # nothing parsed on this thread
        qtbot.waitUntil(lambda: seen == ["ran"], timeout=60_000)
        registry = pint.get_application_registry().get()
        assert not isinstance(registry, LazyRegistry) and str(registry.pixel) == "pixel"
    finally:
        pint.set_application_registry(saved)
        runner._UNITS.ready = True


SHOWN_VIEWER_TIMM = """
import napari
from napari.qt import get_qapp
from napari_dinocell.jobs.runner import start_job
from napari_dinocell.status import JobStatus

app = get_qapp()
viewer = napari.Viewer(show=True)
for _ in range(20):
    app.processEvents()
done = []

def load():
    import timm
    import torch._dynamo
    return timm.__version__

start_job(load, status=JobStatus(), title="Loading timm", on_returned=done.append)
while not done:
    app.processEvents()
print("imported timm", done[0])
viewer.close()
"""


def test_a_job_imports_timm_in_a_shown_viewer():
    """With software GL (Mesa's LLVM loaded), importing triton unprotected segfaulted the viewer."""
    if sys.platform != "linux":
        pytest.skip("RTLD_DEEPBIND and Mesa's LLVM clash are Linux-only")
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    out = subprocess.run([sys.executable, "-c", SHOWN_VIEWER_TIMM], capture_output=True, text=True, timeout=300,
                         cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "imported timm" in out.stdout
