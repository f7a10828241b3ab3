"""``torchrun`` for DINOCell jobs: the same launcher, but a clean stop exits 0.

Slurm time limits, ``scancel`` and systemd send SIGTERM to the whole process group, torchrun's agent included.
The agent then forwards the signal to its workers, waits ``--shutdown_timeout`` seconds for them (they checkpoint
and end "stopped") and re-raises it as a ``SignalException``: plain torchrun exits 1 with a traceback even though
the run stopped exactly as asked. Here that exception is checked against the run's ``status.json``; a recorded
clean stop exits 0, anything else exits non-zero with one line naming the run directory.

Usage: ``python -m dinocell_core.runs.torchrun [torchrun options] -m dinocell_core.cli JOB ... --run-dir DIR``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from dinocell_core.runs.rundir import RunDir


def _run_dir(argv: Sequence[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--run-dir" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--run-dir="):
            return Path(arg.split("=", 1)[1])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    run_dir = _run_dir(args)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    where = f"run dir {run_dir}" if run_dir else "the job"
    try:
        torchrun_main(args)
    except SignalException as exc:
        state = RunDir(run_dir).read_status().get("state") if run_dir else None
        if state == "stopped":
            print(f"dinocell-core: stopped by {exc.sigval.name} with a checkpoint; resume with the same command "
                  f"({where})", file=sys.stderr)
            return 0
        print(f"dinocell-core: error: torchrun received {exc.sigval.name} and the job recorded no clean stop "
              f"(state {state!r}); see {where}", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        codes = ", ".join(f"rank {rank}: exit {f.exitcode}" for rank, f in sorted(exc.failures.items()))
        print(f"dinocell-core: error: job processes failed ({codes}); see run.log in {where}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
