"""What a run directory's records mean, declared once: the metric key families of ``metrics.jsonl`` and the run
state read from ``status.json``.

The trainers write keys through these names and the Runs plot chooses its series by family, so a new loss term
or validation metric needs no change in the plugin. Families:

- ``loss``: ``loss`` (decoders) and every ``loss_*`` term (pretraining: total, DINO global/local, iBOT, KoLeo);
- ``validation``: a decoder's held-out scores, ``val_<metric>`` (``val_tuned_<metric>`` after threshold tuning);
- ``eval``: the pretraining ``eval:`` benchmark (copairs retrieval on held-out plates);
- ``throughput``: samples/s, step time, data-wait share, peak GPU memory;
- ``schedule``: learning rates, weight decay, teacher momentum and temperature;
- ``diagnostic``: teacher entropies and view agreement, skipped steps, failed reads;
- ``index``: step, epoch, channel (what a record is about, never plotted).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

Family = Literal["loss", "validation", "eval", "throughput", "schedule", "diagnostic", "index"]

INDEX_KEYS = ("step", "epoch", "channel")
SCHEDULE_KEYS = ("lr", "last_layer_lr", "backbone_lr_factor", "wd", "momentum", "teacher_temp")
THROUGHPUT_KEYS = ("samples_per_s", "step_time_s", "data_wait_fraction", "peak_gpu_mem_gb")
DIAGNOSTIC_KEYS = ("teacher_entropy", "teacher_batch_entropy", "teacher_view_agreement", "teacher_cls_std",
                   "skipped", "nonfinite_skipped_total", "failed_reads", "tuned_thresholds")
EVAL_FRACTION_RETRIEVED = "eval_fraction_retrieved"
EVAL_MEAN_MAP = "eval_mean_map"
EVAL_SECONDS = "eval_seconds"
EVAL_ERROR = "eval_error"
#: the eval figures on a 0–1 scale (drawn beside the validation scores)
EVAL_SCORES = (EVAL_FRACTION_RETRIEVED, EVAL_MEAN_MAP)
VALIDATION_PREFIX = "val_"
TUNED_PREFIX = "val_tuned_"
#: the validation metrics a plot shows; the rest (AP at every IoU, counts) would crowd a legend
SHOWN_VALIDATION = ("ap@0.50", "ap_mean", "f1@0.50", "seg", "det")


def validation_record(metrics: Mapping[str, Any], tuned: bool = False) -> dict[str, Any]:
    """``{"val_<metric>": value}`` (``val_tuned_…`` for scores after threshold tuning)."""
    prefix = TUNED_PREFIX if tuned else VALIDATION_PREFIX
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def family(key: str) -> Family:
    """The family of one ``metrics.jsonl`` key (unknown numeric keys count as diagnostics)."""
    if key in INDEX_KEYS:
        return "index"
    if key == "loss" or key.startswith("loss_"):
        return "loss"
    if key.startswith(VALIDATION_PREFIX):
        return "validation"
    if key.startswith("eval_"):
        return "eval"
    if key in THROUGHPUT_KEYS:
        return "throughput"
    if key in SCHEDULE_KEYS:
        return "schedule"
    return "diagnostic"


def _numeric(record: Mapping[str, Any]) -> list[str]:
    return [k for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def loss_keys(record: Mapping[str, Any]) -> list[str]:
    """The keys of a record drawn on a loss axis: its loss terms."""
    return [k for k in _numeric(record) if family(k) == "loss"]


def score_keys(record: Mapping[str, Any]) -> list[str]:
    """The keys of a record drawn on a 0–1 axis: shown validation metrics (untuned) and the eval scores."""
    return [k for k in _numeric(record)
            if (family(k) == "validation" and k[len(VALIDATION_PREFIX):] in SHOWN_VALIDATION) or k in EVAL_SCORES]


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` is a live process on this host (an unreaped zombie counts as dead)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def is_local(status: Mapping[str, object]) -> bool:
    return status.get("host") in (None, socket.gethostname())


def effective_state(status: Mapping[str, object]) -> str:
    """The state to show: "running" runs whose local process is gone without a final state read as "lost"."""
    state = status.get("state")
    if state is None:
        return "queued" if status.get("slurm_job_id") else "unknown"
    if state == "running" and is_local(status) and status.get("launcher") != "slurm":
        pid = status.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
            return "lost"
    return str(state)
