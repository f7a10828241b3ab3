"""Shared-cluster hardening of run directories, with real processes and signals: one writer per run (OS lock,
stale-safe after kill -9), process-group SIGTERM with DataLoader workers (alone and under torchrun), counters
and metrics exact across restarts, refused resumes that leave the run alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dinocell_core.config import ConfigError
from dinocell_core.io.checkpoint import CheckpointError, CheckpointManager, load_state
from dinocell_core.runs.launch import LaunchError, launch_local
from dinocell_core.runs.rundir import RunDir, RunLock, RunLockedError, read_metrics
from dinocell_core.ssl.trainer import run_pretraining
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers import REPO
from tests.helpers.pretrain import (
    comparable,
    pretrain_command,
    subprocess_env,
    tiny_config,
    tiny_overrides,
    wait_for_step,
)

HOLD = "import sys, time; from dinocell_core.runs.rundir import RunLock; RunLock(sys.argv[1]).acquire(); " \
       "print('held', flush=True); time.sleep(600)"


@pytest.mark.slow
def test_lock_names_the_holder_and_a_killed_holder_frees_it(tmp_path):
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run.holder()["pid"] == holder.pid
        with pytest.raises(RunLockedError, match=f"in use by pid {holder.pid} on host {socket.gethostname()}"):
            RunLock(run.path).acquire()
        run.write_config(tiny_config(tmp_path, 4))
        with pytest.raises(LaunchError, match=f"in use by pid {holder.pid}"):  # Resume / launch refused
            launch_local("pretrain", run.path, None)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert run.holder() is None  # the OS released it: nothing stale to clear by hand
    with RunLock(run.path), RunLock(run.path):  # re-entrant within one process
        assert run.holder()["pid"] == os.getpid()
    assert run.holder() is None


@pytest.mark.slow
def test_second_trainer_on_a_running_run_is_refused(fixture_root, tmp_path):
    run = tmp_path / "run"
    ov = tiny_overrides(fixture_root, 6, **{"train.epochs": 100, "train.checkpoint_every": 2})
    first = subprocess.Popen(pretrain_command(run, ov), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_step(run, first, 2)
        log_before = (run / "run.log").read_text()
        second = subprocess.run(pretrain_command(run, ov), env=subprocess_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and f"in use by pid {first.pid} on host {socket.gethostname()}" in err[0], err
        assert first.poll() is None  # the first job runs on, untouched
        assert RunDir(run).read_status()["pid"] == first.pid
        assert (run / "run.log").read_text().startswith(log_before)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no interleaving, no duplicates
    # after kill -9 the lock is free: a new job resumes (more epochs would be allowed; fewer finish at once)
    again = subprocess.run(pretrain_command(run, [*ov, "train.epochs=1"]), env=subprocess_env(), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert RunDir(run).read_status()["state"] == "finished"


def _wait_metrics(run: RunDir, proc: subprocess.Popen, lines: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not (run.metrics_path.exists() and run.metrics_path.read_text().count("\n") >= lines):
        assert time.time() < deadline and proc.poll() is None, run.console_path.read_text()[-3000:] \
            if run.console_path.exists() else "ended early"
        time.sleep(0.1)


@pytest.mark.slow
def test_process_group_sigterm_with_dataloader_workers_stops_cleanly(fixture_root, tmp_path):
    """What Slurm/scancel/systemd/Ctrl-C do: TERM to every process of the group, DataLoader workers included."""
    run = RunDir(tmp_path / "run")
    ov = tiny_overrides(fixture_root, 400, **{"train.checkpoint_every": 1000, "data.num_workers": 2})
    proc = subprocess.Popen(pretrain_command(run.path, ov), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    wait_for_step(run.path, proc, 2, timeout=240)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.stderr.read().decode()[-3000:]
    status = run.read_status()
    assert status["state"] == "stopped", status
    assert load_state(Path(status["last_checkpoint"]))["step"] == status["step"] >= 2


@pytest.mark.slow
def test_process_group_sigterm_under_torchrun_exits_0_stopped(fixture_root, tmp_path, monkeypatch):
    """TERM to torchrun's whole group (agent, 2 ranks, their DataLoader workers): checkpoint, "stopped", exit 0."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = RunDir(tmp_path / "ddp")
    cfg = tiny_config(fixture_root, 5000, **{"train.checkpoint_every": 1000, "data.num_workers": 1})
    launched = launch_local("pretrain", run.path, cfg, gpus=[0, 1])  # own session: its pid is the group id
    _wait_metrics(run, launched.process, 2)
    os.killpg(launched.pid, signal.SIGTERM)
    assert launched.process.wait(timeout=150) == 0, run.console_path.read_text()[-3000:]
    status = run.read_status()
    assert status["state"] == "stopped", (status, run.console_path.read_text()[-3000:])
    state = load_state(CheckpointManager(run.checkpoints_dir).latest())
    assert state["step"] == status["step"] and state["world_size"] == 2
    assert "stopped by SIGTERM with a checkpoint" in run.console_path.read_text()


@pytest.mark.slow
def test_killed_before_first_checkpoint_does_not_duplicate_metrics(fixture_root, tmp_path):
    run = tmp_path / "run"
    ov = tiny_overrides(fixture_root, 10, **{"train.checkpoint_every": 1000})
    proc = subprocess.Popen(pretrain_command(run, ov), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_step(run, proc, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not CheckpointManager(run / "checkpoints").steps()
    orphan = run / "checkpoints" / ".step_00000004.safetensors.x1y2.tmp"  # as a kill -9 mid-write leaves
    orphan.write_bytes(b"\0" * 4096)
    subprocess.run(pretrain_command(run, ov), check=True, env=subprocess_env(), capture_output=True, timeout=300)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 11))
    assert not orphan.exists()


@pytest.mark.slow
def test_failed_reads_and_budget_survive_a_resume(tmp_path):
    root = make_jump_fixture(tmp_path / "fx", plates=1, wells=2, sites=2, size=64, seed=3, edge_cases=False).root
    bad = sorted(root.rglob("Images/*-ch1sk1*.tiff"))[0]
    bad.write_bytes(b"II*\0garbage")  # a truncated TIFF: each read of its field fails and is counted
    extra = {"train.checkpoint_every": 4, "data.max_failure_fraction": 1.0}
    full, part = tmp_path / "full", tmp_path / "part"
    run_pretraining(tiny_config(root, 4, **{**extra, "train.epochs": 2}), full)
    run_pretraining(tiny_config(root, 4, **extra), part)
    run_pretraining(tiny_config(root, 4, **{**extra, "train.epochs": 2}), part)  # resume at step 4
    a, b = comparable(read_metrics(full / "metrics.jsonl")), comparable(read_metrics(part / "metrics.jsonl"))
    assert a[8]["failed_reads"] > a[4]["failed_reads"] > 0
    assert [b[s]["failed_reads"] for s in range(1, 9)] == [a[s]["failed_reads"] for s in range(1, 9)]
    assert load_state(CheckpointManager(part / "checkpoints").latest())["data_counters"][0][1] == a[8]["failed_reads"]


@pytest.mark.slow
def test_resume_without_config_yaml_checks_the_checkpoint_and_a_refusal_changes_nothing(fixture_root, tmp_path):
    run = RunDir(tmp_path / "run")
    run_pretraining(tiny_config(fixture_root, 4), run.path)
    run.config_path.unlink()
    before = (run.status_path.read_bytes(), run.metrics_path.read_bytes())
    with pytest.raises(ConfigError, match=r"step_00000004\.safetensors.*heads\.out_dim"):
        run_pretraining(tiny_config(fixture_root, 4, **{"heads.out_dim": 128}), run.path)
    assert (run.status_path.read_bytes(), run.metrics_path.read_bytes()) == before  # still "finished"
    assert run.read_status()["state"] == "finished" and not run.config_path.exists()


@pytest.mark.slow
def test_decoder_resume_checks_its_config_and_a_refusal_changes_nothing(tmp_path):
    from dinocell_core.config import load_config
    from dinocell_core.seg.config import DecoderConfig
    from dinocell_core.seg.train import run_decoder_training

    root = make_jump_fixture(tmp_path / "fx", plates=1, wells=2, sites=2, size=64, seed=5, edge_cases=False).root
    demo = REPO / "configs" / "decoder_demo.yaml"
    base = [f"data.path={root}", "channels=[DNA]", "train.steps=2", "train.tile_size=32", "train.eval_every=2",
            "train.checkpoint_every=2", "train.batch_size=2", "inference.overlap=8", "data.max_images=4"]
    run = RunDir(tmp_path / "run")
    run_decoder_training(load_config(DecoderConfig, demo, base), run.path)
    before = (run.status_path.read_bytes(), run.config_path.read_bytes(), run.metrics_path.read_bytes())
    with pytest.raises(ConfigError, match=r"step_00000002\.safetensors.*decoder\.width: 64 → 32"):
        run_decoder_training(load_config(DecoderConfig, demo, [*base, "decoder.width=32"]), run.path)
    assert (run.status_path.read_bytes(), run.config_path.read_bytes(), run.metrics_path.read_bytes()) == before
    run.config_path.unlink()  # the checkpoint's own config is the reference, with or without config.yaml
    with pytest.raises(ConfigError, match=r"step_00000002\.safetensors.*decoder\.width"):
        run_decoder_training(load_config(DecoderConfig, demo, [*base, "decoder.width=32"]), run.path)
    assert run.read_status()["state"] == "finished"


@pytest.mark.slow
def test_checkpoints_that_all_fail_to_verify_refuse_a_restart_from_zero(fixture_root, tmp_path):
    """E.g. files written before the digest covered metadata, or all corrupted: never silently start over."""
    run = RunDir(tmp_path / "run")
    run_pretraining(tiny_config(fixture_root, 4), run.path)
    for p in run.checkpoints_dir.glob("step_*.safetensors"):
        data = bytearray(p.read_bytes())
        data[-10] ^= 0xFF
        p.write_bytes(bytes(data))
    metrics = run.metrics_path.read_bytes()
    with pytest.raises(CheckpointError, match="checkpoint\\(s\\) but none is usable.*move them away"):
        run_pretraining(tiny_config(fixture_root, 4), run.path)
    assert run.metrics_path.read_bytes() == metrics and run.read_status()["state"] == "finished"


def _worker(ready) -> None:
    from dinocell_core.runs.stopping import ignore_stop_signals

    ignore_stop_signals()
    ready.set()
    time.sleep(120)


def test_a_worker_ignores_group_signals_but_not_its_parents_terminate():
    """Started as SSLLoader starts DataLoader workers (stop signals blocked), so every thread the worker creates
    (torch's OpenMP pool included) keeps TERM blocked and only the watcher thread receives it."""
    import multiprocessing as mp

    from dinocell_core.runs.stopping import stop_signals_blocked

    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_worker, args=(ready,), daemon=True)
    with stop_signals_blocked():
        proc.start()
    assert ready.wait(60)
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):  # as Slurm / systemd / Ctrl-C send them: from another process
            subprocess.run(["kill", f"-{sig.name[3:]}", str(proc.pid)], check=True)
        time.sleep(0.5)
        assert proc.is_alive()
        proc.terminate()  # the parent's SIGTERM (torch's shutdown of a worker that did not exit)
        proc.join(timeout=10)
        assert proc.exitcode == 128 + signal.SIGTERM
    finally:
        if proc.is_alive():
            proc.kill()


STARTUP = """
import os, signal, subprocess, sys
from dinocell_core.synthetic.fixture import make_jump_fixture
from dinocell_core.runs.stopping import stop_signals_blocked
from dinocell_core.ssl.config import DataConfig
from dinocell_core.ssl.data import make_ssl_loader
if __name__ == "__main__":
    got = []
    signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    root = make_jump_fixture(sys.argv[1], plates=1, wells=2, sites=2, size=64, seed=0, edge_cases=False).root
    cfg = DataConfig(root=str(root), global_size=32, local_size=16, n_local=0, num_workers=2)
    loader = make_ssl_loader(cfg, 8, 2, 0, steps=2)
    with stop_signals_blocked():
        it = iter(loader)  # workers are spawned now and still importing torch when the TERM comes
        subprocess.run(["kill", "-TERM", "--", f"-{os.getpgid(0)}"], check=True)  # as Slurm would: not the parent
    n = sum(1 for _ in it)
    print(f"batches {n} signals {got}", flush=True)
"""


def test_a_group_signal_while_workers_start_neither_kills_them_nor_is_lost(tmp_path):
    script = tmp_path / "startup.py"
    script.write_text(STARTUP)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "fx")], capture_output=True, text=True,
                       env=subprocess_env(), timeout=180, start_new_session=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == f"batches 2 signals [{int(signal.SIGTERM)}]"
