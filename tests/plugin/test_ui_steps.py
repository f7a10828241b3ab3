"""UiSteps: GUI-thread steps spread over event-loop turns, in order, with "next" steps jumping the queue."""

from __future__ import annotations

from functools import partial

from qtpy.QtWidgets import QApplication

from napari_dinocell.ui_steps import UiSteps


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
