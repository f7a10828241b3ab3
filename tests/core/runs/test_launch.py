"""dinocell_core.runs.launch: command lines, detached jobs, SIGTERM stop, resume, Slurm submission."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from dinocell_core.config import StrictModel
from dinocell_core.io.checkpoint import CheckpointManager, load_state
from dinocell_core.runs.launch import (
    LaunchError,
    SlurmOptions,
    job_command,
    launch_local,
    sbatch_script,
    stop_run,
    submit_slurm,
)
from dinocell_core.runs.records import effective_state, pid_alive
from dinocell_core.runs.rundir import RunDir
from tests.helpers.pretrain import tiny_config


class _Cfg(StrictModel):
    steps: int = 3


def test_job_command_single_and_torchrun(tmp_path):
    single = job_command("pretrain", tmp_path / "r", python="py")
    assert single == ["py", "-m", "dinocell_core.cli", "pretrain", str(tmp_path / "r" / "config.yaml"),
                      "--run-dir", str(tmp_path / "r")]
    multi = job_command("pretrain", tmp_path / "r", nproc=4, python="py")
    assert multi[:6] == ["py", "-m", "dinocell_core.runs.torchrun", "--standalone", "--nproc_per_node=4",
                         "--shutdown_timeout=100"]
    assert multi[6:10] == ["-m", "dinocell_core.cli", "pretrain", str(tmp_path / "r" / "config.yaml")]
    assert job_command("decoder", tmp_path / "r", python="py")[3] == "train-decoder"
    with pytest.raises(LaunchError, match="one device"):  # the decoder trainer is not DDP-aware
        job_command("decoder", tmp_path / "r", nproc=2)
    with pytest.raises(LaunchError, match="unknown job kind"):
        job_command("nope", tmp_path)


def test_sbatch_script_content(tmp_path):
    text = sbatch_script("pretrain", tmp_path / "run1", gpus=4,
                         options=SlurmOptions(partition="gpu", time="48:00:00", extra=["--qos=high"]))
    assert text.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --gres=gpu:4", "#SBATCH --partition=gpu", "#SBATCH --time=48:00:00",
                 "#SBATCH --qos=high", f"#SBATCH --output={tmp_path / 'run1' / 'console.log'}",
                 "#SBATCH --signal=B:TERM@120"):
        assert line in text.splitlines()
    assert "--nproc_per_node=4" in text and "exec " in text
    assert "--partition" not in sbatch_script("pretrain", tmp_path / "r", gpus=0, options=SlurmOptions())


def _stand_in(tmp_path, name: str, body: str) -> None:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_submit_slurm_records_job_and_scancel(tmp_path, monkeypatch):
    """sbatch/scancel are stand-in executables here (no cluster in CI) recording their arguments."""
    record = tmp_path / "calls.txt"
    _stand_in(tmp_path, "sbatch", f'echo "sbatch $@" >> {record}\necho "4242;cluster"\n')
    _stand_in(tmp_path, "scancel", f'echo "scancel $@" >> {record}\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    launched = submit_slurm("pretrain", tmp_path / "run", _Cfg(), gpus=2, options=SlurmOptions(partition="a100"))
    assert launched.slurm_job_id == "4242"
    run = RunDir(tmp_path / "run")
    assert run.exists() and (run.path / "job.sbatch").is_file()
    status = run.read_status()
    assert status["slurm_job_id"] == "4242" and status["launcher"] == "slurm"
    assert effective_state(status) == "queued"
    with pytest.raises(LaunchError, match="already queued"):
        submit_slurm("pretrain", tmp_path / "run", _Cfg())
    assert stop_run(run.path) == "sent TERM to Slurm job 4242"
    calls = record.read_text().splitlines()
    assert calls[0] == f"sbatch --parsable {run.path / 'job.sbatch'}"
    assert calls[1] == "scancel --full --signal=TERM 4242"


def test_submit_slurm_without_sbatch_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match="no 'sbatch' on PATH"):
        submit_slurm("pretrain", tmp_path / "run", _Cfg())


def test_dead_process_reads_lost_and_stop_refuses(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run = RunDir(tmp_path / "run")
    run.write_config(_Cfg())
    run.update_status(state="running", kind="pretrain", pid=proc.pid)
    assert not pid_alive(proc.pid)
    assert effective_state(run.read_status()) == "lost"
    with pytest.raises(LaunchError, match="not running"):
        stop_run(run.path)


def test_launch_failure_before_status_is_recorded(tmp_path):
    """A job that dies before writing a final state (here: an invalid config for the real CLI) ends "failed"."""
    run = RunDir(tmp_path / "run")
    launched = launch_local("pretrain", run.path, _Cfg())
    assert launched.pid and effective_state(run.read_status()) in ("running", "failed", "lost")
    launched.process.wait(timeout=120)
    deadline = time.time() + 10
    while run.read_status().get("state") == "running" and time.time() < deadline:
        time.sleep(0.05)
    status = run.read_status()
    assert status["state"] == "failed", status
    assert status.get("error")
    assert "launch:" in run.console_path.read_text()  # the child's raw output, with the config error
    with pytest.raises(LaunchError, match="has no config.yaml"):
        launch_local("pretrain", tmp_path / "empty", None)


@pytest.mark.slow
def test_torchrun_stop_signals_rank0_and_every_rank_stops(fixture_root, tmp_path, monkeypatch):
    """Under torchrun the pid in status.json is rank 0's trainer (not the torchrun agent): SIGTERM to it reaches
    every rank through the per-step any_rank vote, so the job checkpoints once and ends "stopped"."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = RunDir(tmp_path / "ddp")
    cfg = tiny_config(fixture_root, 5000, **{"train.checkpoint_every": 1000})
    launched = launch_local("pretrain", run.path, cfg, gpus=[0, 1])
    assert run.read_status()["launcher"] == "torchrun" and "--nproc_per_node=2" in launched.command
    deadline = time.time() + 180
    while not (run.metrics_path.exists() and run.metrics_path.read_text().count("\n") >= 2):
        assert time.time() < deadline and launched.process.poll() is None, run.console_path.read_text()[-3000:]
        time.sleep(0.1)
    status = run.read_status()
    assert status["world_size"] == 2 and status["pid"] != launched.pid  # the trainer replaced the agent's pid
    assert "pid " + str(status["pid"]) in stop_run(run.path)
    assert launched.process.wait(timeout=120) == 0  # a clean stop, not a torchrun ChildFailedError
    status = run.read_status()
    assert status["state"] == "stopped", (status, run.console_path.read_text()[-3000:])
    ckpt = CheckpointManager(run.checkpoints_dir).latest()
    state = load_state(ckpt)
    assert state["step"] == status["step"] and state["world_size"] == 2
    assert "stopped at step" in (run.path / "run.rank1.log").read_text()  # rank 1 stopped too, not killed


@pytest.mark.slow
def test_stop_before_the_trainer_started_reads_stopped(fixture_root, tmp_path):
    """Stop pressed while the job still imports torch (no signal handler yet): stopped as asked, not "failed"."""
    run = RunDir(tmp_path / "early")
    launched = launch_local("pretrain", run.path, tiny_config(fixture_root, 50))
    assert run.read_status()["pid"] == launched.pid
    assert f"pid {launched.pid}" in stop_run(run.path)
    launched.process.wait(timeout=60)
    deadline = time.time() + 10
    while run.read_status().get("state") == "running" and time.time() < deadline:
        time.sleep(0.05)
    status = run.read_status()
    assert status["state"] == "stopped" and status["error"] is None, status
    assert not any(run.checkpoints_dir.iterdir())


def test_resume_just_after_stop_keeps_the_new_runs_status(tmp_path):
    """Resume pressed while the stopped process is still exiting: that process's reaper must not write its exit
    (code 143, no final state) into the resumed run's status.json. Real subprocesses: stand-in "python"s that
    ignore the job command (the first exits 143 when told to, the second runs until stopped)."""
    import signal
    import threading

    from dinocell_core.runs.launch import resume_run

    go = tmp_path / "go"
    _stand_in(tmp_path, "old_job", f"trap '' TERM\nwhile [ ! -e {go} ]; do sleep 0.05; done\nexit 143\n")
    _stand_in(tmp_path, "new_job", "trap 'exit 143' TERM\nwhile true; do sleep 0.05; done\n")
    run = RunDir(tmp_path / "run")
    old = launch_local("pretrain", run.path, _Cfg(), python=str(tmp_path / "bin" / "old_job"))
    assert run.read_status()["pid"] == old.pid
    stop_run(run.path)  # the old process gets SIGTERM (a stand-in that survives it for a while, as torchrun does)
    run.update_status(state="stopped")  # ... and, like the trainer, records its checkpointed stop before exiting
    new = resume_run(run.path, python=str(tmp_path / "bin" / "new_job"))
    status = run.read_status()
    assert status["state"] == "running" and status["pid"] == new.pid
    go.touch()  # the stopped process exits now, after the resume: code 143
    assert old.process.wait(timeout=30) == 143
    for thread in threading.enumerate():
        if thread.name == f"dinocell-reap-{old.pid}":
            thread.join(timeout=30)
    status = run.read_status()
    assert status["state"] == "running" and status["pid"] == new.pid and status.get("error") is None, status

    # the new process's own reaper still records how it ends
    stop_run(run.path)
    assert new.process.wait(timeout=30) in (143, -signal.SIGTERM)
    deadline = time.time() + 10
    while run.read_status().get("state") == "running" and time.time() < deadline:
        time.sleep(0.05)
    assert run.read_status()["state"] == "stopped"
