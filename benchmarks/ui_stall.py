"""The Segment button against the model, and the longest napari event-loop stalls, in a shown viewer.

- **button vs model**: the real "Segment" button of the Segment dock, clicked with qtbot (a mouse click on the
  shown button), until the result Labels layer is shown, against ``Segmenter.predict_distance`` + ``labels()`` on
  the same image and tile called directly in the same process (timed before and after the button, the ratio uses
  their mean). For every image size × tile size asked (default 384² and 1080², tiles 64 and 256). Goal ≤ 1.25×.
- **stalls**: a QTimer fires every 5 ms on the GUI thread and records the gaps between ticks; the longest gap is
  the longest time the viewer could not react. Printed for the button run, a slider move (re-threshold), the JUMP
  browser (first 1080² field, next site, the labels overlay appearing) and the sample data. Goal ≤ 100 ms.
- **session**: one viewer, the JUMP browser with its labels overlay, ``--session`` site changes back and forth:
  the longest stall and the full garbage collections over a stretch of ordinary work.
- **docks**: how long opening each dock takes (``add_plugin_dock_widget``, the first dock of a fresh napari
  process, so imports count). Goal ≤ 1 s.

Each phase also counts Python's full garbage collections and the longest (``--gc-freeze off`` runs without the
plugin's freezing of long-lived objects, ``napari_dinocell.jobs.gc_pauses``, to compare).

Everything runs idle and then with ``--busy N`` CPU-bound background processes (default: 0 and 2), as on a busy
login node or remote desktop. The machine's load average is printed with each set of figures: on a shared
machine report the figures with the load they were measured under.

    python benchmarks/ui_stall.py [--sizes 384 1080] [--tiles 64 256] [--busy 0 2] [--arch vit_test]
                                  [--skip-docks] [--skip-browse] [--gc-freeze on|off]

Needs a display: uses $DISPLAY, or starts Xvfb through pyvirtualdisplay.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# this folder holds benchmarks/profile.py, which would shadow the standard library's profile (torch imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

DOCKS = ("Segment", "JUMP browser", "Runs", "Profiles", "Backbone features", "Pretrain", "Train decoder")


class FullCollections:
    """Times Python's full garbage collections (each holds the GIL: the viewer cannot react during one, whichever
    thread ran it)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds.append(time.perf_counter() - self._started)

    def start(self) -> None:
        self.seconds.clear()
        gc.callbacks.insert(0, self._collected)

    def stop(self) -> None:
        gc.callbacks.remove(self._collected)


class StallMeter:
    """Records the gaps between ticks of a fast QTimer on the GUI thread, and the full garbage collections."""

    def __init__(self, interval_ms: int = 5) -> None:
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self.collections = FullCollections()
        self._last = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def start(self) -> None:
        self.gaps.clear()
        self.collections.start()
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> dict[str, float]:
        self.timer.stop()
        self._tick()
        self.collections.stop()
        gaps_ms = np.asarray(self.gaps) * 1000.0
        full = self.collections.seconds
        return {"max_ms": float(gaps_ms.max()), "p99_ms": float(np.percentile(gaps_ms, 99)),
                "over_100ms": int((gaps_ms > 100).sum()), "ticks": len(gaps_ms),
                "full_gc": len(full), "full_gc_max_ms": 1000.0 * max(full, default=0)}


def wait_until(app, predicate, timeout: float, check_ms: int = 10) -> None:
    """Run the Qt event loop until ``predicate()`` holds, as napari's own loop runs: blocked until an event or a
    timer is due (a loop that called processEvents every millisecond would take a CPU from the worker it waits on,
    which on a busy 2-core machine doubled the button's time)."""
    from qtpy.QtCore import QEventLoop, QTimer

    if predicate():
        return
    loop = QEventLoop()
    deadline = time.perf_counter() + timeout
    expired = []

    def check() -> None:
        if predicate():
            loop.quit()
        elif time.perf_counter() > deadline:
            expired.append(True)
            loop.quit()

    timer = QTimer()
    timer.setInterval(check_ms)
    timer.timeout.connect(check)
    timer.start()
    loop.exec()
    timer.stop()
    if expired:
        raise TimeoutError("benchmark step did not finish in time")


def settle(app, turns: int = 50) -> None:
    """Let queued steps and redraws run (their stalls are part of the measured phase)."""
    for _ in range(turns):
        app.processEvents()
        time.sleep(0.002)


def ensure_display() -> object | None:
    if os.environ.get("DISPLAY"):
        return None
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(1600, 1000), color_depth=24)
    display.start()
    return display


@contextmanager
def busy_processes(n: int):
    """``n`` CPU-bound processes (a busy login node) for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def clicker():
    """A real mouse click on a shown button: qtbot's (pytest-qt imported here, before any timing), else QTest's."""
    from qtpy.QtCore import Qt

    try:
        from pytestqt.qt_compat import qt_api
        from pytestqt.qtbot import QtBot

        if not hasattr(qt_api, "QtTest"):
            qt_api.set_qt_api(None)  # what pytest-qt does at start-up
        mouse_click = QtBot.mouseClick
    except ImportError:  # pytest-qt missing: the same QTest call
        from qtpy.QtTest import QTest

        mouse_click = QTest.mouseClick
    return lambda button: mouse_click(button, Qt.MouseButton.LeftButton)


def direct_segment(bundle: Path, image: np.ndarray, tile: int) -> float:
    """Seconds of ``Segmenter.predict_distance`` + ``labels()`` (the model, without the dock)."""
    from dinocell_core.seg.bundle import load_bundle
    from dinocell_core.seg.inference import Segmenter

    seg = Segmenter(load_bundle(bundle), device="cpu", tile_size=tile)
    t0 = time.perf_counter()
    seg.labels(seg.predict_distance(image))
    elapsed = time.perf_counter() - t0
    seg.release()
    return elapsed


def measure_button(app, bundle: Path, sizes: list[int], tiles: list[int], repeats: int) -> list[dict]:
    """Each size × tile: the Segment button (click → labels shown) vs the model called directly, ``repeats`` times
    (the median ratio is kept, with its run's times)."""
    import napari

    from dinocell_core.synthetic.fixture import make_field
    from napari_dinocell.widgets.segment.dock import SegmentWidget

    click = clicker()
    rows = []
    for size in sizes:
        channels, _, _ = make_field(size=size, seed=0)
        image = channels[4]
        viewer = napari.Viewer(show=True)
        viewer.add_image(image, name="DNA", metadata={"channel": 5})
        widget = SegmentWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Segment")
        widget.device.setCurrentText("cpu")
        widget.picker.scan_models(str(bundle.parent))
        # ready as the user sees it: models listed and verified, the picked one loaded ("Loading …" gone)
        wait_until(app, lambda: widget.picker.listing is not None and widget.picker.listing.verified
                   and widget.preload_status.state.name == "DONE", 120)
        settle(app, 20)
        for tile in tiles:
            widget.tile.setValue(tile)
            runs = []
            for _ in range(repeats):
                before = direct_segment(bundle, image, tile)
                meter = StallMeter()
                meter.start()
                t0 = time.perf_counter()
                click(widget.run_btn)
                wait_until(app, lambda: widget.worker is None and not widget.showing and "DNA labels" in
                           viewer.layers and viewer.layers["DNA labels"].visible, 3600)
                wall = time.perf_counter() - t0
                settle(app)
                stalls = meter.stop()
                after = direct_segment(bundle, image, tile)
                direct = (before + after) / 2
                runs.append({"size": size, "tile": tile, "button_s": wall, "direct_s": direct,
                             "ratio": wall / direct, "tiles": widget.status.total, **stalls})
            in_order = list(runs)
            runs.sort(key=lambda r: r["ratio"])
            row = dict(runs[len(runs) // 2])
            row["max_ms"] = max(r["max_ms"] for r in runs)  # the longest stall of all repeats
            row["ratios"] = [round(r["ratio"], 2) for r in runs]
            row["stalls_in_order"] = [round(r["max_ms"]) for r in in_order]
            rows.append(row)
        # a slider move: labels re-thresholded from the cached distance map
        meter = StallMeter()
        meter.start()
        labels = viewer.layers["DNA labels"]
        old = labels.data.copy()
        widget.thresholds.peak.setValue(0.7 if widget.thresholds.peak.value() != 0.7 else 0.6)
        t0 = time.perf_counter()
        wait_until(app, lambda: not np.array_equal(labels.data, old) or time.perf_counter() - t0 > 20, 60)
        wait_until(app, lambda: not widget._thresholding, 60)
        settle(app)
        rows.append({"size": size, "phase": "slider move", **meter.stop()})
        viewer.close()
    return rows


def measure_browse(app, work: Path, field_size: int) -> list[dict]:
    """JUMP browser on real-size fields: the first field (8 new layers), the next site, the labels overlay."""
    import napari

    from napari_dinocell.widgets.jump_browser import JumpBrowserWidget

    source, store = jump_fixture(work, field_size)
    viewer = napari.Viewer(show=True)
    widget = JumpBrowserWidget(viewer)
    viewer.window.add_dock_widget(widget, name="JUMP browser")
    widget.labels_store.setText("")
    settle(app, 20)
    rows = []
    for name, action, done in (
        ("browse: first field", lambda: widget.load_root(str(source)), lambda: widget.current is not None),
        ("browse: next site", widget.next_btn.click, lambda: widget.current.site == 2),
        ("labels overlay appears", lambda: widget.labels_store.setText(str(store)),
         lambda: "Cells" in viewer.layers and viewer.layers["Cells"].visible),
    ):
        meter = StallMeter()
        meter.start()
        t0 = time.perf_counter()
        action()
        wait_until(app, lambda d=done: d() and not widget.busy, 600)
        wall = time.perf_counter() - t0
        settle(app)
        rows.append({"phase": name, "wall_s": wall, **meter.stop()})
    viewer.close()
    return rows


def measure_session(app, work: Path, field_size: int, site_changes: int) -> list[dict]:
    """A working session in one viewer: the JUMP browser with its labels overlay, ``site_changes`` moves between two
    sites. Started right after a full collection (as a viewer is after its first minutes), so the full collections
    counted are the ones the session's own work sets off."""
    import napari

    from napari_dinocell.widgets.jump_browser import JumpBrowserWidget

    source, store = jump_fixture(work, field_size)
    viewer = napari.Viewer(show=True)
    widget = JumpBrowserWidget(viewer)
    viewer.window.add_dock_widget(widget, name="JUMP browser")
    widget.labels_store.setText(str(store))
    widget.load_root(str(source))
    wait_until(app, lambda: widget.current is not None and "Cells" in viewer.layers and not widget.busy, 600)
    settle(app)
    gc.collect()
    meter = StallMeter()
    meter.start()
    t0 = time.perf_counter()
    for i in range(site_changes):
        site = 2 if i % 2 == 0 else 1
        (widget.next_btn if site == 2 else widget.prev_btn).click()
        wait_until(app, lambda s=site: widget.current.site == s and not widget.busy, 600)
        settle(app, 10)
    row = {"phase": f"session: {site_changes} site changes", "wall_s": time.perf_counter() - t0, **meter.stop()}
    viewer.close()
    return [row]


def jump_fixture(work: Path, field_size: int) -> tuple[Path, Path]:
    """The JUMP fixture's source folder (one well, 2 sites of ``field_size``²) and its labels store."""
    from dinocell_core.labels.run import label_tree
    from dinocell_core.synthetic.fixture import make_jump_fixture

    root = work / f"jump{field_size}"
    store = work / f"jump{field_size}_LABELS"  # beside the tree: `jump label` never writes into its source
    if not root.exists():
        info = make_jump_fixture(root, plates=1, wells=1, sites=2, size=field_size, seed=1, edge_cases=False)
        label_tree(info.root, store, qc_fields=0)
    return next(p for p in root.iterdir() if p.is_dir()), store


def measure_sample(app) -> list[dict]:
    import napari

    from napari_dinocell.widgets.sample_layers import sample_pending

    viewer = napari.Viewer(show=True)
    settle(app, 20)
    meter = StallMeter()
    meter.start()
    t0 = time.perf_counter()
    viewer.open_sample("dinocell", "cell_painting_field")
    wait_until(app, lambda: not sample_pending() and len(viewer.layers) == 10, 120)
    wall = time.perf_counter() - t0
    settle(app)
    row = {"phase": "sample data", "wall_s": wall, **meter.stop()}
    viewer.close()
    return [row]


DOCK_SCRIPT = """
import json, sys, time
from napari.qt import get_qapp
import napari
app = get_qapp()
viewer = napari.Viewer(show=True)
for _ in range(20):
    app.processEvents()
t0 = time.perf_counter()
viewer.window.add_plugin_dock_widget("dinocell", sys.argv[1])
app.processEvents()
print(json.dumps({"open_s": time.perf_counter() - t0}))
viewer.close()
"""


def measure_docks() -> list[dict]:
    """Each dock opened as the first DINOCell dock of a fresh napari process (its imports count)."""
    rows = []
    for dock in DOCKS:
        out = subprocess.run([sys.executable, "-c", DOCK_SCRIPT, dock], capture_output=True, text=True,
                             timeout=300, env=os.environ)
        try:
            rows.append({"dock": dock, **json.loads(out.stdout.strip().splitlines()[-1])})
        except (IndexError, json.JSONDecodeError):
            rows.append({"dock": dock, "open_s": float("nan"), "error": out.stderr[-500:]})
    return rows


def make_untrained_bundle(folder: Path, arch: str) -> Path:
    """A DNA decoder bundle with random weights: the cost depends on compute and data sizes, not on accuracy."""
    import torch

    from dinocell_core.backbones.loading import load_backbone
    from dinocell_core.seg.bundle import save_bundle
    from dinocell_core.seg.decoder import DistanceDecoder

    torch.manual_seed(0)
    model = DistanceDecoder(load_backbone(arch, patch_size=8, weights=None), width=32, stem_width=8).eval()
    meta = {
        "name": f"bench-{arch}-DNA", "channel": "DNA",
        "backbone": {"arch": arch, "patch_size": 8, "kwargs": {}},
        "decoder": {"layers": list(model.layers), "width": 32, "stem_width": 8},
        "preprocessing": {"normalisation": "percentile", "low": 1.0, "high": 99.8, "channel_index": None},
        "thresholds": {"peak": 0.47, "fill": 0.09, "min_size": 0},
        "tile_size": 64, "overlap": 16,
    }
    return save_bundle(folder / f"bench-{arch}-DNA.safetensors", model, meta)


def report(busy: int, load: float, button: list[dict], other: list[dict], docks: list[dict]) -> None:
    print(f"\n== {busy} CPU-bound background process(es); load average {load:.1f} on {os.cpu_count()} CPUs ==")
    for r in button:
        if "ratio" in r:
            more = f" (runs: {', '.join(map(str, r['ratios']))})" if len(r["ratios"]) > 1 else ""
            each = f" (runs in order: {', '.join(map(str, r['stalls_in_order']))} ms)" if len(r["ratios"]) > 1 else ""
            print(f"  Segment button {r['size']}² tile {r['tile']:>3} ({r['tiles']:>4} tiles): button "
                  f"{r['button_s']:6.2f} s vs model {r['direct_s']:6.2f} s → {r['ratio']:.2f}×{more} "
                  f"(goal ≤ 1.25×: {'met' if r['ratio'] <= 1.25 else 'NOT met'}) | longest stall {r['max_ms']:5.0f} ms{each}"
                  f" | full GCs: {r['full_gc']}")
    for r in [b for b in button if "phase" in b] + other:
        where = f"{r['size']}² " if "size" in r else ""
        wall = f"wall {r['wall_s']:5.2f} s | " if "wall_s" in r else ""
        print(f"  {where + r['phase']:28s} {wall}longest stall {r['max_ms']:5.0f} ms | p99 {r['p99_ms']:4.0f} ms"
              f" | stalls > 100 ms: {r['over_100ms']} | full GCs: {r['full_gc']} (longest {r['full_gc_max_ms']:.0f} ms)")
    for r in docks:
        print(f"  open {r['dock']:18s} {r['open_s']:5.2f} s" + (f"  ({r['error']})" if "error" in r else ""))
    ratios = [r["ratio"] for r in button if "ratio" in r]
    stalls = [r["max_ms"] for r in button + other]
    if ratios:
        print(f"  → button/model ratio {min(ratios):.2f}–{max(ratios):.2f}×; longest stall of all phases "
              f"{max(stalls):.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[384, 1080], help="none: no button runs")
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="CPU-bound background processes")
    parser.add_argument("--arch", default="vit_test", help="backbone of the throw-away bundle")
    parser.add_argument("--repeats", type=int, default=1, help="button runs per size × tile (median kept)")
    parser.add_argument("--field-size", type=int, default=1080, help="JUMP fixture field size for the browser")
    parser.add_argument("--skip-docks", action="store_true")
    parser.add_argument("--skip-browse", action="store_true")
    parser.add_argument("--session", type=int, default=30, help="site changes of the working session (0: none)")
    parser.add_argument("--gc-freeze", choices=("on", "off"), default="on",
                        help="off: CPython's own full collections (napari_dinocell.jobs.gc_pauses stopped), to compare")
    args = parser.parse_args(argv)

    display = ensure_display()
    os.environ.pop("QT_QPA_PLATFORM", None)
    import napari_dinocell  # noqa: F401 (its OpenMP setting applies before torch loads, as in napari)
    from napari.qt import get_qapp

    from napari_dinocell.jobs.gc_pauses import gc_pauses

    if args.gc_freeze == "off":
        gc_pauses().stop()
    whole_run = FullCollections()  # over every phase and what happens between them
    whole_run.start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "models").mkdir()
        bundle = make_untrained_bundle(work / "models", args.arch)
        app = get_qapp()
        for busy in args.busy:
            with busy_processes(busy):
                load = load_average()
                button = measure_button(app, bundle, args.sizes, args.tiles, args.repeats)
                other = [] if args.skip_browse else measure_browse(app, work, args.field_size) + measure_sample(app)
                if args.session:
                    other += measure_session(app, work, args.field_size, args.session)
                docks = [] if args.skip_docks else measure_docks()
                report(busy, max(load, load_average()), button, other, docks)
    whole_run.stop()
    durations = [round(1000 * d) for d in whole_run.seconds]
    print(f"\nfull garbage collections over the whole run (gc-freeze {args.gc_freeze}): {len(durations)}, "
          f"longest {max(durations, default=0)} ms, over 100 ms: {sum(d > 100 for d in durations)}; "
          f"in order (ms): {durations}")
    if display is not None:
        display.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
