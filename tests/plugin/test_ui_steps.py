"""UiSteps: GUI-thread steps spread over event-loop turns, in order, with "next" steps jumping the queue; a layer
added in steps ends up as napari's own add leaves it."""

from __future__ import annotations

from functools import partial

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import QApplication

from napari_dinocell.ui_steps import EDITING_OVERLAYS, UiSteps


def test_steps_run_in_order_one_per_turn(qtbot) -> None:
    steps = UiSteps()
    ran: list[object] = []

    def place(i: int) -> None:
        ran.append(i)
        steps.push_next(partial(ran.append, f"show {i}"))  # the second half of this step, before the next step

    for i in range(3):
        steps.push(partial(place, i))
    assert steps.pending and ran == []  # nothing runs inside the caller's turn

    for _ in range(50):  # one event-loop pass at a time, until the first step ran
        QApplication.processEvents()
        if ran:
            break
    assert ran[0] == 0 and len(ran) < 6  # the viewer got control back before the remaining steps
    qtbot.waitUntil(lambda: not steps.pending, timeout=2000)
    assert ran == [0, "show 0", 1, "show 1", 2, "show 2"]


def test_add_layer_finishes_a_labels_layer_over_turns_as_napari_would(make_napari_viewer, qtbot) -> None:
    """A Labels layer added in steps ends up as napari's own add leaves it (editing overlays with their vispy
    visuals, shown, the polygon and brush tools usable), without the overlays built in the add's turn."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((64, 64), np.float32), name="image")
    plain = viewer.add_labels(np.zeros((64, 64), np.uint8), name="plain")
    canvas = viewer.window._qt_viewer.canvas
    steps = UiSteps()
    layer = Labels(np.zeros((64, 64), np.uint8), name="stepped")

    steps.add_layer(viewer, layer)
    assert layer in viewer.layers and not layer.visible and steps.pending
    assert not set(EDITING_OVERLAYS) & set(layer._overlays)  # napari built no editing overlay in this turn

    qtbot.waitUntil(lambda: not steps.pending, timeout=5000)
    assert list(layer._overlays) == list(plain._overlays)  # same overlays, same order
    visuals = {type(v).__name__ for v in canvas._layer_overlay_to_visual[layer].values()}
    assert visuals == {type(v).__name__ for v in canvas._layer_overlay_to_visual[plain].values()}
    assert layer.visible and viewer.layers.selection.active is layer
    layer.mode = "polygon"
    assert layer._overlays["polygon"].enabled
    layer.mode = "paint"
    assert layer._overlays["brush_stroke"].enabled and not layer._overlays["polygon"].enabled


def test_add_layer_can_leave_the_layer_hidden(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    steps = UiSteps()
    layer = Labels(np.zeros((32, 32), np.uint8))
    steps.add_layer(viewer, layer, show=False)
    qtbot.waitUntil(lambda: not steps.pending, timeout=5000)
    assert not layer.visible and set(EDITING_OVERLAYS) <= set(layer._overlays)
