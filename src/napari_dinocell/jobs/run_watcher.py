"""The one run watcher of the application: every dock that follows runs (the Runs table, a training form waiting
for its launched run) subscribes to it instead of polling status.json on a timer of its own.

One timer, one background read at a time (a slow disk never queues polls up), each status.json read once per
poll. A dock says what it watches (a runs folder or one run, and the metrics tail of a run it plots) and gets each
poll that read exactly that; a watch ends when the dock asks or is destroyed, and the timer runs only while
something is watched. The watcher holds its docks weakly, so it never keeps a closed viewer alive.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from qtpy.QtCore import QCoreApplication, QObject, QTimer

from dinocell_core.runs.rundir import MetricsTail
from napari_dinocell.jobs.runner import start_job
from napari_dinocell.jobs.runs import RunPoll, poll_runs
from napari_dinocell.status import JobStatus

POLL_MS = 1000
OBJECT_NAME = "dinocell_run_watcher"


class Subscriber(Protocol):
    """A dock that watches runs: a QObject (its ``destroyed`` signal ends the watch) with a handler for polls."""

    destroyed: Any

    def runs_polled(self, poll: RunPoll) -> None: ...


@dataclass(eq=False)
class Watch:
    owner: weakref.ref[Subscriber]
    folder: Path
    tail: MetricsTail | None


class RunWatcher(QObject):
    """Polls what its subscribers watch and hands each of them the poll (see the module docstring)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.status = JobStatus()
        self.polling = False
        self._watches: dict[int, Watch] = {}
        self._hooked: set[int] = set()  # owners whose destruction ends their watch
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)

    def watch(self, owner: Subscriber, folder: Path, tail: MetricsTail | None = None) -> None:
        """Watch ``folder`` (a runs folder or one run) and follow ``tail``'s run for ``owner``, instead of what it
        watched before."""
        key = id(owner)
        if key not in self._hooked:
            self._hooked.add(key)
            owner.destroyed.connect(partial(self._forget, key))
        current = self._watches.get(key)
        if current is None or (current.folder, current.tail) != (folder, tail):  # unchanged: a poll in flight
            self._watches[key] = Watch(weakref.ref(owner), folder, tail)  # still reads what the owner shows
        if not self.timer.isActive():
            self.timer.start()

    def unwatch(self, owner: Subscriber) -> None:
        self._drop(id(owner))

    def _drop(self, key: int) -> None:
        self._watches.pop(key, None)
        if not self._watches:
            self.timer.stop()

    def _forget(self, key: int, *_: Any) -> None:
        self._hooked.discard(key)
        self._drop(key)

    def poll(self) -> None:
        """Start one background read of everything watched, unless one is still running."""
        if self.polling or not self._watches:
            return
        self.polling = True
        watches = list(self._watches.items())
        folders = [w.folder for _, w in watches]
        tails = [w.tail for _, w in watches if w.tail is not None]
        start_job(poll_runs, folders, tails, status=self.status, title="Runs refresh",
                  on_returned=partial(self._deliver, watches), on_finished=self._finished, show_progress=False)

    def _deliver(self, watches: list[tuple[int, Watch]], poll: RunPoll) -> None:
        """Hand the poll to each owner whose watch has not changed since the poll started (a poll of a folder or
        run it no longer shows is not its own)."""
        for key, watch in watches:
            owner = watch.owner()
            if owner is not None and self._watches.get(key) is watch:
                owner.runs_polled(poll)

    def _finished(self) -> None:
        self.polling = False


def shared_watcher() -> RunWatcher:
    """The application's run watcher, created on first use and owned by the QApplication (no module global)."""
    app = QCoreApplication.instance()
    found = app.findChild(RunWatcher, OBJECT_NAME)
    if found is None:
        found = RunWatcher(app)
        found.setObjectName(OBJECT_NAME)
    return found
