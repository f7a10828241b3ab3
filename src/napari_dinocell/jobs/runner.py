"""The job runner: every background job of the plugin runs through :func:`start_job`, in a thread worker, never on
the GUI thread.

A job function is a plain function or a generator that yields :class:`Progress` (so a cancel takes effect between
steps) and returns its result. :func:`start_job` wires it to a :class:`JobStatus` and error notifications; widgets
only pass callbacks for the result and show the status (bar, ETA, Cancel) themselves.

What superqt's worker does not do for us, done here:

- **Every exception reaches the GUI.** superqt treats a job that ends in a ``RuntimeError`` (or a subclass:
  ``LaunchError``, ``CheckpointError``, CUDA out-of-memory…) as "the Qt object was deleted" and emits neither
  ``errored`` nor ``finished``, leaving the widget busy for good. The job is wrapped so that any exception is
  returned as a :class:`JobFailed` value, which :func:`start_job` turns into a notification and a failed status.
- **Shared lazy state is ready before a job starts.** pint's application registry (napari's units) parses its
  definitions on first use (0.6–0.9 s), and that load is not thread-safe: a worker that first touches it while the
  GUI thread adds a layer leaves a registry without ``pixel`` (every later ``add_image`` fails). A complete registry
  is built in a worker of its own, installed on the GUI thread, and jobs asked for meanwhile start after it
  (:class:`_UnitRegistry`); triton's native library is opened safely before a job can import torch
  (:func:`~napari_dinocell._triton.isolate_triton`).
- **Progress is throttled at the source.** Each delivered progress update costs GUI-thread work (a repaint; on
  software OpenGL or a remote desktop napari's progress bar cost seconds per update); jobs yield one per tile
  batch. Updates closer than :data:`PROGRESS_INTERVAL_S` are dropped in the worker (the last one always passes).
- **A closed widget is not called back.** A dock closed while its job runs leaves bound-method callbacks on a
  deleted Qt object; calling one raises "wrapped C/C++ object … has been deleted", which used to surface as a false
  "<title> failed" toast. Callbacks whose owner is a deleted ``QObject`` are skipped (:func:`_alive`); the job's own
  errors are still shown.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import QObject
from superqt.utils import WorkerBase, create_worker

from napari_dinocell._triton import isolate_triton
from napari_dinocell.notify import show_error
from napari_dinocell.status import JobStatus

#: least time between two progress updates delivered to the GUI thread
PROGRESS_INTERVAL_S = 0.25


@dataclass
class Progress:
    done: int
    total: int
    message: str = ""


@dataclass
class JobFailed:
    """What a job returns instead of raising (see the module docstring)."""

    error: BaseException


def deliver_errors(func: Callable[..., Any], interval_s: float = PROGRESS_INTERVAL_S) -> Callable[..., Any]:
    """``func`` with every exception returned as :class:`JobFailed`; for a generator, progress also throttled."""
    if inspect.isgeneratorfunction(func):

        @functools.wraps(func)
        def generator(*args: Any, **kwargs: Any) -> Generator[Any, None, Any]:
            try:
                isolate_triton()
                return (yield from throttled(func(*args, **kwargs), interval_s))
            except Exception as exc:  # noqa: BLE001 (every error must reach the user)
                return JobFailed(exc)

        return generator

    @functools.wraps(func)
    def plain(*args: Any, **kwargs: Any) -> Any:
        try:
            isolate_triton()
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            return JobFailed(exc)

    return plain


def throttled(gen: Generator[Any, None, Any], interval_s: float) -> Generator[Any, None, Any]:
    """Pass on ``gen``'s items, dropping :class:`Progress` items that follow the last one by < ``interval_s``
    (a finished count, ``done == total``, always passes); returns ``gen``'s return value."""
    last = float("-inf")
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if isinstance(item, Progress):
            now = time.perf_counter()
            if now - last < interval_s and item.done < item.total:
                continue
            last = now
        yield item


class _UnitRegistry:
    """pint's application registry, made complete off the GUI thread before any job runs (module docstring)."""

    def __init__(self) -> None:
        self.ready = False
        self.waiting: list[WorkerBase] = []
        self.loader: WorkerBase | None = None

    def start_after(self, worker: WorkerBase) -> None:
        """Start ``worker`` now if the registry is complete, else when it is."""
        if self.ready or self._loaded():
            self.ready = True
            worker.start()
            return
        self.waiting.append(worker)
        if self.loader is None:
            self.loader = create_worker(deliver_errors(_build_registry), _start_thread=False,
                                        _connect={"returned": self._install})
            self.loader.start()

    @staticmethod
    def _loaded() -> bool:
        import pint
        from pint.registry import LazyRegistry

        return not isinstance(pint.get_application_registry().get(), LazyRegistry)

    def _install(self, registry: Any) -> None:
        """On the GUI thread. If building it failed, the lazy registry is loaded here instead (where its error, if
        it has one, surfaces as in napari itself)."""
        import pint

        if isinstance(registry, JobFailed):
            pint.get_application_registry().pixel  # noqa: B018 (the attribute access loads the definitions)
        elif not self._loaded():  # the GUI thread may have loaded it meanwhile (a layer added): keep that one
            pint.set_application_registry(registry)
        self._release()

    def _release(self) -> None:
        self.ready, self.loader = True, None
        waiting, self.waiting = self.waiting, []
        for worker in waiting:
            worker.start()


def _build_registry() -> Any:
    """A complete registry like the one pint's lazy application registry would load."""
    import pint

    return pint.UnitRegistry(on_redefinition="raise")


_UNITS = _UnitRegistry()
_IN_FLIGHT = [0]


def jobs_in_flight() -> int:
    """Jobs started and not yet finished on the GUI thread (their callbacks included)."""
    return _IN_FLIGHT[0]


def _alive(callback: Callable[..., Any] | None) -> bool:
    """False for a missing callback or a bound method of a Qt object whose C++ side was deleted."""
    if callback is None:
        return False
    owner = getattr(callback, "__self__", None)
    if not isinstance(owner, QObject):
        return True
    try:
        owner.objectName()
    except RuntimeError:  # PyQt/PySide: the wrapped C++ object has been deleted
        return False
    return True


def start_job(
    func: Callable[..., Any],
    *args: Any,
    status: JobStatus,
    title: str,
    on_returned: Callable[[Any], None] | None = None,
    on_yielded: Callable[[Any], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    show_progress: bool = True,
    **kwargs: Any,
) -> WorkerBase:
    """Run ``func(*args, **kwargs)`` in a worker thread; results/errors come back on the GUI thread.

    Errors of any type become a napari notification ("<title> failed: <message>") and a failed status, never an
    exception in the viewer, and ``on_finished`` always runs. Generator jobs can be cancelled with
    ``worker.quit()`` (status "cancelled"). ``show_progress`` False keeps the status's progress counts untouched
    (background polls that should not flicker a bar).
    """

    def yielded(value: Any) -> None:
        if isinstance(value, Progress) and show_progress:
            status.progress(value.done, value.total, value.message or None)
        if _alive(on_yielded):
            on_yielded(value)

    def returned(value: Any) -> None:
        if isinstance(value, JobFailed):
            errored(value.error)
            return
        try:
            if _alive(on_returned):
                on_returned(value)
        except Exception as exc:  # noqa: BLE001 (a failing result handler must not take the viewer down)
            errored(exc)
            return
        if status.busy:  # the handler may already have set a final message
            status.finish(f"{title}: done")

    def errored(exc: BaseException) -> None:
        message = f"{title} failed: {exc}" if str(exc) else f"{title} failed: {type(exc).__name__}"
        status.fail(message)
        show_error(message)

    def finished() -> None:
        _IN_FLIGHT[0] -= 1
        if status.busy:  # aborted without returning
            status.cancel(f"{title}: cancelled")
        if _alive(on_finished):
            on_finished()

    worker = create_worker(
        deliver_errors(func),
        *args,
        _start_thread=False,
        _connect={"returned": returned, "errored": errored, "finished": finished},
        **kwargs,
    )
    if hasattr(worker, "yielded"):
        worker.yielded.connect(yielded)
    status.start(f"{title}…")
    _IN_FLIGHT[0] += 1
    _UNITS.start_after(worker)
    return worker
