"""Clean stops for long jobs: SIGTERM/SIGINT (Ctrl-C, the napari Stop button, Slurm pre-emption) set a flag that
the training loop checks after each step, so it can checkpoint and end in state "stopped" instead of dying."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


class StopRequest:
    """Context manager installing the handlers; ``requested`` turns True on the first signal. Nested in an active
    one (the CLI installs one before its slow start-up, the trainer its own around the loop), it is that one: a
    signal during start-up is not lost, and the handlers are restored once, by the outer one."""

    _active: StopRequest | None = None  # the installed one (main thread)

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if StopRequest._active is not None:
            return StopRequest._active
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a napari worker): the caller stops the job another way
                pass
        if self._old:
            StopRequest._active = self
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("signal %d received: checkpointing after this step and stopping", signum)
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if StopRequest._active is not self:
            return  # nested in the active one, or never installed
        for sig, old in self._old.items():
            signal.signal(sig, old)
        StopRequest._active = None


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGTERM/SIGINT while child processes (DataLoader workers) start, so they are born with them blocked.

    Slurm, ``scancel``, systemd and Ctrl-C signal the whole process group: workers that died of it first made the
    trainer's next batch fail, so the run ended "failed" without its stop checkpoint. A blocked mask survives
    fork and exec; a signal arriving meanwhile is held pending and reaches this process's handler on exit."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    # multiprocessing starts its resource tracker on first use with TERM/INT blocked and then UNBLOCKS them, which
    # would silently undo this block for every worker started after it: start the tracker first.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_stop_signals() -> None:
    """For worker processes: a stop signal from anyone but the parent is ignored (the parent decides when to stop
    and shuts its workers down itself), but the parent's own SIGTERM — torch's ``terminate()`` of a worker that
    does not exit — still ends it. Where the sender cannot be told (no ``sigwaitinfo``), both are ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    import os
    import threading

    parent = os.getppid()
    signal.signal(signal.SIGTERM, _ignore)  # a TERM reaching an unblocked thread runs this no-op, never kills
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def watch() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent:
                os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="dinocell-term-watch", daemon=True).start()


def _ignore(signum: int, frame: Any) -> None:
    """Stop signals meant for the trainer (process group, cgroup) are not this worker's to act on."""
