"""Start training jobs that outlive the GUI: a detached local process, ``torchrun`` for several GPUs, or Slurm.

The run directory is the only link between whoever launched a job and the job itself: the launcher writes the
validated ``config.yaml`` and a first ``status.json``, the trainer keeps ``status.json`` current, and stopping is a
SIGTERM to the pid recorded there (the trainer then saves a checkpoint and ends in state "stopped"). Resuming is a
relaunch on the same run directory. Nothing here imports Qt, so the CLI and the napari plugin share it.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import BaseModel

from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_write_text
from dinocell_core.runs.records import effective_state, is_local
from dinocell_core.runs.rundir import RunDir, RunLockedError, check_run_free

log = logging.getLogger(__name__)

#: run kind (status.json "kind") → ``dinocell-core`` subcommand
JOB_COMMANDS: dict[str, str] = {"pretrain": "pretrain", "decoder": "train-decoder"}
#: kinds whose trainer is DDP-aware; N torchrun copies of any other trainer would each train the same run
DISTRIBUTED_KINDS = frozenset({"pretrain"})
#: seconds torchrun waits for its ranks to checkpoint after a stop signal before it kills them
SHUTDOWN_TIMEOUT_S = 100


class LaunchError(DinocellError, RuntimeError):
    """A job could not be started, stopped or resumed; the message says why and names the run directory."""


@dataclass
class SlurmOptions:
    """What ``sbatch`` needs beyond the command; empty values leave the cluster's defaults."""

    partition: str = ""
    time: str = ""
    cpus_per_task: int = 8
    mem: str = ""
    account: str = ""
    extra: list[str] = field(default_factory=list)


@dataclass
class Launched:
    run_dir: Path
    command: list[str]
    pid: int | None = None
    slurm_job_id: str | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)


def slurm_available() -> bool:
    """Slurm submission is offered only where ``sbatch`` is on PATH."""
    return shutil.which("sbatch") is not None


def job_command(kind: str, run_dir: str | os.PathLike[str], nproc: int = 1, python: str | None = None) -> list[str]:
    """The command line that runs (or resumes) the job in ``run_dir`` from its ``config.yaml``."""
    if kind not in JOB_COMMANDS:
        raise LaunchError(f"unknown job kind {kind!r}; expected one of {sorted(JOB_COMMANDS)}")
    if nproc < 1:
        raise LaunchError(f"number of processes must be >= 1, got {nproc}")
    if nproc > 1 and kind not in DISTRIBUTED_KINDS:
        raise LaunchError(f"{kind} training runs on one device; choose at most 1 GPU (got {nproc})")
    run = RunDir(Path(run_dir).resolve())
    python = python or sys.executable
    job = ["-m", "dinocell_core.cli", JOB_COMMANDS[kind], str(run.config_path), "--run-dir", str(run.path)]
    if nproc == 1:
        return [python, *job]
    # our torchrun front exits 0 after a clean stop; 100 s for the ranks to checkpoint (Slurm warns 120 s ahead)
    return [python, "-m", "dinocell_core.runs.torchrun", "--standalone", f"--nproc_per_node={nproc}",
            f"--shutdown_timeout={SHUTDOWN_TIMEOUT_S}", *job]


def _check_not_running(run: RunDir) -> None:
    try:  # the trainer's OS lock: exact even when status.json is stale or the job runs under another launcher
        check_run_free(run.path)
    except RunLockedError as exc:
        raise LaunchError(str(exc)) from None
    status = run.read_status()
    if effective_state(status) in ("running", "queued"):
        raise LaunchError(
            f"run {run.path} is already {effective_state(status)} (pid {status.get('pid')} on "
            f"{status.get('host')}); stop it first"
        )


def _prepare(kind: str, run_dir: str | os.PathLike[str], cfg: BaseModel | None) -> RunDir:
    """Write the validated config (new run) or check it is there (resume)."""
    if kind not in JOB_COMMANDS:
        raise LaunchError(f"unknown job kind {kind!r}; expected one of {sorted(JOB_COMMANDS)}")
    run = RunDir(Path(run_dir).resolve())
    _check_not_running(run)
    if cfg is not None:
        if run.exists() and run.checkpoints_dir.is_dir() and any(run.checkpoints_dir.iterdir()):
            raise LaunchError(
                f"run {run.path} already has checkpoints; resume it or choose a new run directory"
            )
        run.write_config(cfg)
    elif not run.exists():
        raise LaunchError(f"cannot resume {run.path}: it has no config.yaml (not a run directory)")
    run.create()
    return run


def launch_local(
    kind: str,
    run_dir: str | os.PathLike[str],
    cfg: BaseModel | None = None,
    gpus: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
    python: str | None = None,
) -> Launched:
    """Start the job as a detached process (own session: it survives the caller, e.g. napari, closing).

    ``cfg`` None resumes the run from its own config.yaml. Several ``gpus`` run under ``torchrun`` with one
    process per GPU. The child's stdout/stderr go to ``console.log``, not ``run.log``: the trainer writes
    ``run.log`` itself through logging, so redirecting into it too would duplicate every line.
    """
    nproc = max(1, len(gpus))
    cmd = job_command(kind, run_dir, nproc=nproc, python=python)  # refuses bad requests before anything is written
    run = _prepare(kind, run_dir, cfg)
    child_env = dict(os.environ if env is None else env)
    if gpus:
        child_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(int(g)) for g in gpus)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    launch_id = uuid.uuid4().hex  # whose status this is: the reaper of an older process must not write it
    run.update_status(
        state="running",
        launch_id=launch_id,
        kind=kind,
        host=socket.gethostname(),
        pid=None,
        started_at=time.time(),
        stop_requested_at=None,
        error=None,
        launcher="torchrun" if nproc > 1 else "local",
        gpus=[int(g) for g in gpus],
        world_size=nproc,
        slurm=None,
        command=shlex.join(cmd),
    )
    with open(run.console_path, "ab") as log_fh:
        log_fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} launch: {shlex.join(cmd)}\n".encode())
        log_fh.flush()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env=child_env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            run.update_status_if({"launch_id": launch_id}, state="failed", error=f"could not start {cmd[0]}: {exc}")
            raise LaunchError(f"could not start the job for {run.path}: {exc}") from exc
    run.update_status_if({"launch_id": launch_id, "pid": None}, pid=proc.pid)  # unless the trainer wrote its own
    threading.Thread(target=_reap, args=(proc, run, launch_id), name=f"dinocell-reap-{proc.pid}",
                     daemon=True).start()
    log.info("launched %s job pid %d in %s", kind, proc.pid, run.path)
    return Launched(run_dir=run.path, command=cmd, pid=proc.pid, process=proc)


def _reap(proc: subprocess.Popen, run: RunDir, launch_id: str) -> None:
    """Wait for the child (no zombie) and record how it ended if it could not say so itself.

    Only while status.json is still this launch's (its ``launch_id``, checked under the status lock): a Resume
    pressed just after Stop relaunches the run before the stopped process has exited, and that process's exit must
    not become the new run's state. A Stop that lands before the trainer has installed its signal handlers (while
    it still imports torch) ends the process at once: that run was stopped as asked, with no new checkpoint, rather
    than failed."""
    code = proc.wait()
    mine = {"launch_id": launch_id, "state": "running"}
    status = run.read_status()
    if any(status.get(key) != value for key, value in mine.items()):
        return
    if status.get("stop_requested_at") and code in (-signal.SIGTERM, 128 + signal.SIGTERM):
        run.update_status_if({**mine, "stop_requested_at": status["stop_requested_at"]}, state="stopped", error=None)
        return
    run.update_status_if(
        mine,
        state="failed",
        error=f"job process exited with code {code} without reporting a final state; see {run.console_path}",
    )


def sbatch_script(kind: str, run_dir: str | os.PathLike[str], gpus: int, options: SlurmOptions) -> str:
    """A batch script that runs the job on one node (``torchrun`` over ``gpus`` GPUs when more than one).

    ``--signal=B:TERM@120`` warns the job two minutes before the time limit; ``exec`` makes the trainer (or
    torchrun) the batch step's main process so it receives that signal and checkpoints.
    """
    run = RunDir(Path(run_dir).resolve())
    cmd = job_command(kind, run.path, nproc=max(1, gpus))
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=dinocell-{kind}-{run.path.name}",
        f"#SBATCH --output={run.console_path}",
        "#SBATCH --open-mode=append",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={int(options.cpus_per_task)}",
        "#SBATCH --signal=B:TERM@120",
    ]
    if gpus > 0:
        lines.append(f"#SBATCH --gres=gpu:{int(gpus)}")
    for key, value in (("partition", options.partition), ("time", options.time), ("mem", options.mem),
                       ("account", options.account)):
        if value:
            lines.append(f"#SBATCH --{key}={value}")
    lines += [f"#SBATCH {opt}" for opt in options.extra]
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(run.path))}", "export PYTHONUNBUFFERED=1",
              f"exec {shlex.join(cmd)}", ""]
    return "\n".join(lines)


def submit_slurm(
    kind: str,
    run_dir: str | os.PathLike[str],
    cfg: BaseModel | None = None,
    gpus: int = 1,
    options: SlurmOptions | None = None,
) -> Launched:
    """Write ``RUN/job.sbatch`` and submit it; the job id is recorded in status.json (state "queued" until
    the trainer starts). ``cfg`` None resubmits (resumes) the run from its own config."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LaunchError("Slurm is not available here: no 'sbatch' on PATH")
    text = sbatch_script(kind, run_dir, gpus, options or SlurmOptions())  # refuses bad requests before writing
    run = _prepare(kind, run_dir, cfg)
    script = run.path / "job.sbatch"
    atomic_write_text(script, text)
    try:
        out = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"sbatch failed for {run.path}: {exc}") from exc
    if out.returncode != 0:
        raise LaunchError(f"sbatch rejected {script}: {out.stderr.strip() or out.stdout.strip()}")
    job_id = out.stdout.strip().split(";")[0]
    status = run.read_status()
    fields = dict(kind=kind, launcher="slurm", slurm_job_id=job_id, submitted_at=time.time(), error=None,
                  launch_id=uuid.uuid4().hex,  # a local process of an earlier launch no longer owns the status
                  world_size=max(1, gpus), gpus=None, slurm={"gpus": int(gpus), **asdict(options or SlurmOptions())})
    if status.get("state") in ("failed", "stopped", "finished"):
        fields["state"] = status["state"]  # keep the previous final state until the job reports
    run.update_status(**fields)
    return Launched(run_dir=run.path, command=[sbatch, "--parsable", str(script)], slurm_job_id=job_id)


def stop_run(run_dir: str | os.PathLike[str], sig: int = signal.SIGTERM) -> str:
    """Ask a running job to stop cleanly (it checkpoints and ends "stopped"); returns what was done."""
    run = RunDir(run_dir)
    status = run.read_status()
    state = effective_state(status)
    job_id = status.get("slurm_job_id")
    if job_id and state in ("running", "queued") and (status.get("launcher") == "slurm"):
        scancel = shutil.which("scancel")
        if scancel is None:
            raise LaunchError(f"run {run.path} is Slurm job {job_id} but 'scancel' is not on PATH")
        sig_name = signal.Signals(sig).name.removeprefix("SIG")
        out = subprocess.run([scancel, "--full", f"--signal={sig_name}", str(job_id)],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise LaunchError(f"scancel of job {job_id} failed: {out.stderr.strip()}")
        return f"sent {sig_name} to Slurm job {job_id}"
    if state != "running":
        raise LaunchError(f"run {run.path} is not running (state: {state})")
    if not is_local(status):
        raise LaunchError(f"run {run.path} runs on host {status.get('host')}; stop it from that host")
    pid = status.get("pid")
    if not isinstance(pid, int):
        raise LaunchError(f"run {run.path} has no pid in {run.status_path}")
    try:
        run.update_status(stop_requested_at=time.time())  # before the signal: the reaper may read it at once
        os.kill(pid, sig)
    except ProcessLookupError as exc:
        raise LaunchError(f"run {run.path}: process {pid} no longer exists") from exc
    return f"sent {signal.Signals(sig).name} to pid {pid}"


def recorded_launch(status: Mapping[str, object]) -> tuple[list[int], SlurmOptions | None, int]:
    """How a run was launched, from its status.json: local GPU ids, Slurm options (None: local) and GPU count.

    Runs launched before the GPU list was recorded give their process count through the recorded torchrun
    command (``--nproc_per_node=N``)."""
    slurm = status.get("slurm")
    if status.get("launcher") == "slurm" and isinstance(slurm, Mapping):
        opts = {k: v for k, v in slurm.items() if k in SlurmOptions.__dataclass_fields__}
        return [], SlurmOptions(**opts), int(slurm.get("gpus", 0))  # type: ignore[arg-type]
    if status.get("launcher") == "slurm":
        return [], SlurmOptions(), int(status.get("world_size", 1))  # type: ignore[arg-type]
    gpus = status.get("gpus")
    if isinstance(gpus, list):
        return [int(g) for g in gpus], None, len(gpus)
    command = str(status.get("command") or "")
    for part in shlex.split(command):
        if part.startswith("--nproc_per_node="):
            n = int(part.split("=", 1)[1])
            return list(range(n)), None, n
    return [], None, 0


def resume_run(
    run_dir: str | os.PathLike[str],
    gpus: Sequence[int] | None = None,
    slurm: SlurmOptions | None = None,
    python: str | None = None,
) -> Launched:
    """Relaunch a stopped/failed/lost run on its own directory; the trainer continues from the last checkpoint.

    By default the run is relaunched the way it was launched (status.json: the local GPUs, i.e. the torchrun
    world size, or Slurm with the same options and GPU count); ``gpus`` / ``slurm`` override that."""
    run = RunDir(run_dir)
    status = run.read_status()
    kind = status.get("kind")
    if kind not in JOB_COMMANDS:
        raise LaunchError(f"cannot resume {run.path}: unknown kind {kind!r} in {run.status_path}")
    rec_gpus, rec_slurm, rec_count = recorded_launch(status)
    if slurm is None and gpus is None:
        slurm = rec_slurm
    if slurm is not None:
        count = len(gpus) if gpus is not None else rec_count
        return submit_slurm(kind, run.path, None, gpus=count, options=slurm)
    return launch_local(kind, run.path, None, gpus=rec_gpus if gpus is None else gpus, python=python)
