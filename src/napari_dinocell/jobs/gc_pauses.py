"""Keep Python's full garbage collections from freezing the viewer.

With napari, torch and timm imported the collector tracks ~570,000 objects, nearly all modules, classes and
functions that live as long as the process. Each full (oldest-generation) collection walks all of them with the GIL
held, 0.4–0.5 s on a 2-core machine, and freezes the viewer whichever thread set it off (239 ms of one 352 ms browser
step was one). At the end of a full collection nothing alive is garbage: that is when everything alive is moved to
the collector's permanent generation (:func:`gc.freeze`), which later collections skip, so they walk only what was
made since. A freeze is followed by one collection of that small rest, because CPython schedules its next full
collection by the size it last walked.

A frozen object is still freed when its last reference goes; only *cyclic* garbage waits for a collection, and a
frozen cycle waits for good. In a viewer the cycles that die later are layers (with their arrays) and closed docks
and viewers: a removed layer still alive after a full collection, or a destroyed dock, thaws the collector
(:func:`gc.unfreeze`) so the next full collection frees them, as it would have without the freeze. Nothing is frozen
while a plugin job is in flight, so a job's worker and its result (which may be discarded) never are.
"""

from __future__ import annotations

import gc
import weakref
from functools import cache
from typing import Any

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QWidget

from napari_dinocell.jobs.runner import jobs_in_flight

#: a freeze that moved more objects than this is followed by a collection of the rest (see the module docstring)
SETTLE_ABOVE = 20_000


class GcPauses(QObject):
    """Freezes the collector after full collections; thaws it for removed layers and destroyed docks."""

    _settle_requested = Signal()

    def __init__(self) -> None:
        super().__init__()
        self._viewers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._removed: list[weakref.ref[Any]] = []
        self._settling = False
        self._settle_requested.connect(self._settle, Qt.ConnectionType.QueuedConnection)
        gc.callbacks.append(self._collected)

    def watch(self, viewer: Any, dock: QWidget | None = None) -> None:
        """Check the layers that leave ``viewer`` (all do when it closes); thaw when ``dock`` is destroyed."""
        if viewer not in self._viewers:
            self._viewers.add(viewer)
            viewer.layers.events.removed.connect(self._layer_removed)
        if dock is not None:
            dock.destroyed.connect(thaw)

    def stop(self) -> None:
        """Back to CPython's own collections for good (benchmarks/ui_stall.py compares the two)."""
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        gc.unfreeze()

    def _layer_removed(self, event: Any) -> None:
        self._removed.append(weakref.ref(event.value))

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        """``gc.callbacks`` hook, on whichever thread collected (nested collections do nothing in here)."""
        if phase != "stop" or info["generation"] != 2 or self._thaw_for_removed() or jobs_in_flight():
            return
        before = gc.get_freeze_count()
        gc.freeze()
        if gc.get_freeze_count() - before > SETTLE_ABOVE and not self._settling:
            try:
                self._settle_requested.emit()
            except RuntimeError:  # the Qt side is gone (interpreter exit)
                pass

    def _thaw_for_removed(self) -> bool:
        """Thaw when a removed layer outlived a full collection while frozen. Each removed layer is checked once:
        one that outlives the thawed collection after is held by something else, and thawing again would not help."""
        removed = self._removed  # a layer removed meanwhile on the GUI thread lands in one list or the other
        self._removed = []
        alive = [ref for ref in removed if ref() is not None]
        if alive and gc.get_freeze_count():
            gc.unfreeze()
            return True
        return False

    def _settle(self) -> None:
        """A full collection of the small rest right after a big freeze (CPython schedules its next one by it)."""
        if jobs_in_flight() == 0 and gc.get_freeze_count():
            self._settling = True
            try:
                gc.collect()
            finally:
                self._settling = False


def thaw(*_: Any) -> None:
    """Give frozen objects back to the collector: the next full collection frees those that died, then refreezes."""
    gc.unfreeze()


@cache
def gc_pauses() -> GcPauses:
    """The one per process (the collector is process-wide), made on the GUI thread by the first dock."""
    return GcPauses()


def watch(viewer: Any, dock: QWidget | None = None) -> None:
    """Keep full collections short in ``viewer``'s process, from the first DINOCell dock (or sample) on."""
    gc_pauses().watch(viewer, dock)
