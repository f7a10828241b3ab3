"""The plugin's notifications (napari toasts): each event once, not once per dock that saw it.

Two docks that follow the same run (the Runs table and the training form that launched it) see its failure in the
same poll and would each raise the same toast. A notification given an ``event`` key (e.g. the run, its state and
the status time it was read from) is shown only the first time that key comes within :data:`REPEAT_S` seconds;
without a key every call shows (two jobs failing alike are two events).

napari's collapsed toast gives its one-line message 2 px less than the font's height, which cuts off the
descenders: every underscore vanishes, and ``BR00116991_A01_s3_DNA_labels.tiff`` reads as if it had spaces. The toasts
shown here get the height their line needs (:func:`keep_underscores`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from napari.utils.notifications import show_error as _show_error
from napari.utils.notifications import show_info as _show_info
from napari.utils.notifications import show_warning as _show_warning

#: seconds during which the same message is not shown again
REPEAT_S = 10.0
_shown: dict[Hashable, float] = {}  # event key → when it was shown


def _first_time(event: Hashable | None) -> bool:
    if event is None:
        return True
    now = time.monotonic()
    for key in [k for k, t in _shown.items() if now - t >= REPEAT_S]:
        del _shown[key]
    if event in _shown:
        return False
    _shown[event] = now
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


def show_error(message: str, event: Hashable | None = None) -> None:
    if _first_time(event):
        _after(_show_error, message)


def show_warning(message: str, event: Hashable | None = None) -> None:
    if _first_time(event):
        _after(_show_warning, message)


def show_info(message: str, event: Hashable | None = None) -> None:
    if _first_time(event):
        _after(_show_info, message)
