"""Correct → retrain from napari: launch a decoder run that fine-tunes the chosen bundle on the labels store's
corrected fields (a normal run directory in the runs folder, so the Runs widget shows it; the trainer is a detached
subprocess, so it outlives napari), then follow it to its end off the GUI thread and hand back its before/after AP.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_dinocell.jobs.runner import Progress

POLL_S = 1.0


@dataclass
class FinetuneResult:
    run_dir: Path
    state: str  # finished, failed, stopped or lost
    scores: dict[str, Any] | None  # RUN/finetune.json: before/after AP on the held-out corrected fields
    error: str | None = None


def finetune_job(bundle: Path, root: str, labels: str, runs_folder: Path, steps: int, with_auto: bool,
                 val_fraction: float, device: str) -> Generator[Progress, None, FinetuneResult]:
    """Build the config from the bundle, launch the run, yield its step progress until it ends."""
    from dinocell_core.runs.launch import launch_local
    from dinocell_core.runs.records import effective_state
    from dinocell_core.runs.rundir import RunDir
    from dinocell_core.seg.finetune import finetune_config, read_finetune

    cfg = finetune_config(bundle, root, labels, steps=steps, with_auto=with_auto, val_fraction=val_fraction,
                          device=device)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(runs_folder).expanduser() / f"finetune-{Path(bundle).stem}-{stamp}"
    launch_local("decoder", run_dir, cfg)
    run = RunDir(run_dir)
    while True:
        status = run.read_status()
        state = effective_state(status)
        if state not in ("running", "queued"):
            return FinetuneResult(run_dir, state, read_finetune(run_dir), status.get("error"))
        yield Progress(int(status.get("step") or 0), int(status.get("total_steps") or steps),
                       f"fine-tuning {Path(bundle).stem}")
        time.sleep(POLL_S)
