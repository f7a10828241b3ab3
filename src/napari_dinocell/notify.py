"""The plugin's notifications (napari toasts): each message once, not once per dock that saw the same event.

Two docks that follow the same run (the Runs table and the training form that launched it) see its failure in the
same poll and would each raise the same toast; a job error is also shown by the job runner. A message identical to
one shown less than :data:`REPEAT_S` seconds ago is not shown again.

napari's collapsed toast gives its one-line message 2 px less than the font's height, which cuts off the
descenders: every underscore vanishes, and ``BR00116991_A01_s3_DNA_labels.tiff`` reads as if it had spaces. The toasts
shown here get the height their line needs (:func:`keep_underscores`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from napari.utils.notifications import show_error as _show_error
from napari.utils.notifications import show_info as _show_info
from napari.utils.notifications import show_warning as _show_warning

#: seconds during which the same message is not shown again
REPEAT_S = 10.0
_shown: dict[tuple[str, str], float] = {}  # (severity, message) → when it was last shown


def _first_time(severity: str, message: str) -> bool:
    now = time.monotonic()
    for key in [k for k, t in _shown.items() if now - t >= REPEAT_S]:
        del _shown[key]
    if (severity, message) in _shown:
        return False
    _shown[(severity, message)] = now
    return True


def keep_underscores() -> None:
    """Give the message line of every toast on screen the font's full height (napari's own layout clips its
    descenders). A no-op where napari's toast is built otherwise."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in list(getattr(NapariQtNotification, "_instances", [])):
            row = getattr(toast, "row1", None)
            if row is None or getattr(toast, "_dinocell_fitted", False):
                continue
            m = row.contentsMargins()  # napari: 12 above, 8 below the line in a 40-px toast → 8 and 4
            row.setContentsMargins(m.left(), min(m.top(), 8), m.right(), min(m.bottom(), 4))
            toast._dinocell_fitted = True
    except Exception:  # noqa: BLE001 (cosmetic: never let it break a notification)
        return


def _after(show: Callable[[str], None], message: str) -> None:
    show(message)
    keep_underscores()


def show_error(message: str) -> None:
    if _first_time("error", message):
        _after(_show_error, message)


def show_warning(message: str) -> None:
    if _first_time("warning", message):
        _after(_show_warning, message)


def show_info(message: str) -> None:
    if _first_time("info", message):
        _after(_show_info, message)
