"""Background jobs of the plugin: each runs in a thread worker, never on the GUI thread.

A job function is a plain function or a generator that yields :class:`Progress` (so a cancel takes effect between
steps) and returns its result. :func:`start_job` wires it to a :class:`JobStatus`, a napari progress bar and
error notifications; widgets only pass callbacks for the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error
from superqt.utils import WorkerBase, create_worker

from napari_dinocell.status import JobStatus


@dataclass
class Progress:
    done: int
    total: int
    message: str = ""


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

    Errors become a napari notification ("<title> failed: <message>") and a failed status, never an exception
    in the viewer. Generator jobs can be cancelled with ``worker.quit()`` (status "cancelled").
    """
    bar: list[napari_progress] = []
    ended: list[bool] = []

    def yielded(value: Any) -> None:
        if isinstance(value, Progress):
            status.progress(value.done, value.total, value.message or None)
            # updating the bar can process Qt events, so "finished" may run in the middle of this call: work on a
            # local reference and never open a bar once the job has ended
            if show_progress and value.total > 0 and not ended:
                if not bar:
                    bar.append(napari_progress(total=value.total, desc=title))
                pbar = bar[0]
                pbar.total = value.total
                if value.message:
                    pbar.set_description(f"{title}: {value.message}")
                pbar.update(value.done - pbar.n)
        if on_yielded is not None:
            on_yielded(value)

    def returned(value: Any) -> None:
        try:
            if on_returned is not None:
                on_returned(value)
        except Exception as exc:  # a failing result handler must not take the viewer down
            errored(exc)
            return
        if status.busy:  # the handler may already have set a final message
            status.finish(f"{title}: done")

    def errored(exc: BaseException) -> None:
        message = f"{title} failed: {exc}"
        status.fail(message)
        show_error(message)

    def finished() -> None:
        ended.append(True)
        if bar:
            bar[0].close()
            bar.clear()
        if status.busy:  # aborted without returning
            status.cancel(f"{title}: cancelled")
        if on_finished is not None:
            on_finished()

    worker = create_worker(
        func,
        *args,
        _start_thread=False,
        _connect={"returned": returned, "errored": errored, "finished": finished},
        **kwargs,
    )
    if hasattr(worker, "yielded"):
        worker.yielded.connect(yielded)
    status.start(f"{title}…")
    worker.start()
    return worker
