"""Hostile resumes and run directories (issue 25 rows 3 and 16): an edited config.yaml of an unfinished run, a
``--run-dir`` that is a file or read-only, and a SIGTERM during start-up. The checkpoint's own config is the
reference (a change needs ``--allow-config-change`` and is recorded in the run), and each problem is one line or
a clean "stopped" run with its status written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from dinocell_core.cli import main
from dinocell_core.config import ConfigError
from dinocell_core.io.checkpoint import CheckpointManager, load_state
from dinocell_core.runs.rundir import RunDir, read_metrics
from dinocell_core.ssl.trainer import run_pretraining
from tests.helpers.hostile import one_error_line
from tests.helpers.pretrain import (
    DEMO,
    pretrain_command,
    subprocess_env,
    tiny_config,
    tiny_overrides,
)
from tests.helpers.processes import run_unprivileged


def _snapshot(run: RunDir) -> tuple:
    return (run.status_path.read_bytes(), run.metrics_path.read_bytes(),
            sorted(p.name for p in run.checkpoints_dir.iterdir()))


@pytest.mark.slow
@pytest.mark.hostile(row=3, case="edit config.yaml of an unfinished run (batch 4 → 8), rerun with train.batch_size=8")
def test_an_edited_config_yaml_cannot_change_a_resumed_run(fixture_root, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run_pretraining(tiny_config(fixture_root, 4), run.path)  # 4 of the 8 steps an epochs=2 run has
    cfg = yaml.safe_load(run.config_path.read_text())
    cfg["train"]["batch_size"] = 8
    run.config_path.write_text(yaml.safe_dump(cfg))  # the user's edit: config.yaml now agrees with the rerun
    before = _snapshot(run)
    bigger = tiny_config(fixture_root, 4, **{"train.batch_size": 8, "train.epochs": 2})
    with pytest.raises(ConfigError, match=r"step_00000004\.safetensors: .*train\.batch_size: 4 → 8.*"
                                          r"--allow-config-change"):
        run_pretraining(bigger, run.path)
    assert _snapshot(run) == before and run.read_status()["state"] == "finished"
    # the explicit override resumes and is recorded in the run
    ov = [*tiny_overrides(fixture_root, 4), "train.batch_size=8", "train.epochs=2"]
    assert main(["pretrain", str(DEMO), *ov, "--run-dir", str(run.path), "--allow-config-change"]) == 0
    status = run.read_status()
    assert status["state"] == "finished" and status["step"] == 8
    assert status["config_changes"]["keys"] == ["train.batch_size"]
    (entry,) = [json.loads(ln) for ln in run.config_history_path.read_text().splitlines()]
    assert entry["changes"] == {"train.batch_size": [4, 8]} and entry["checkpoint"].endswith("step_00000004.safetensors")
    assert entry["allowed_by"] == "--allow-config-change"
    assert [r["step"] for r in read_metrics(run.metrics_path)] == list(range(1, 9))
    assert load_state(CheckpointManager(run.checkpoints_dir).latest())["config"]["train"]["batch_size"] == 8


@pytest.mark.hostile(row=16, case="--run-dir pointing at an existing file")
def test_a_run_dir_that_is_a_file_is_one_line(fixture_root, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert main(["pretrain", str(DEMO), *tiny_overrides(fixture_root, 2), "--run-dir", str(target)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{target}: is a file, not a run directory" in line and target.read_text() == "mine"


@pytest.mark.hostile(row=16, case="a read-only run dir")
def test_a_read_only_run_dir_is_one_line(fixture_root, tmp_path):
    run = tmp_path / "ro"
    run.mkdir()
    run.chmod(0o555)
    try:
        args = ["pretrain", str(DEMO), *tiny_overrides(fixture_root, 2), "--run-dir", str(run)]
        r = run_unprivileged(f"import sys; from dinocell_core.cli import main; sys.exit(main({args!r}))")
    finally:
        run.chmod(0o755)
    assert r.returncode == 1, r.stderr[-2000:]
    line = one_error_line(r.stderr)
    assert f"{run / '.run.lock'}: cannot create the lock file (Permission denied)" in line
    assert list(run.iterdir()) == []


@pytest.mark.hostile(row=16, case="a run dir whose lock file cannot be opened (an OSError other than EACCES)")
def test_an_unopenable_lock_file_is_one_line(fixture_root, tmp_path, capsys):
    run = tmp_path / "run"
    (run / ".run.lock").mkdir(parents=True)  # what a broken copy or another tool can leave
    assert main(["pretrain", str(DEMO), *tiny_overrides(fixture_root, 2), "--run-dir", str(run)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{run / '.run.lock'}: cannot create the lock file (Is a directory)" in line


@pytest.mark.slow
@pytest.mark.hostile(row=16, case="SIGTERM during start-up")
def test_sigterm_during_start_up_ends_stopped_with_a_status(fixture_root, tmp_path):
    run = RunDir(tmp_path / "run")
    proc = subprocess.Popen(pretrain_command(run.path, tiny_overrides(fixture_root, 400)), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run.path / ".run.lock").exists():  # taken right after start-up's imports and config
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGTERM)
    rc = proc.wait(timeout=240)
    err = proc.stderr.read()
    assert rc == 143, err[-3000:]
    assert "Traceback" not in err
    status = run.read_status()
    assert status["state"] == "stopped" and status["kind"] == "pretrain", status
    assert status["step"] < 400  # stopped where it was: at start-up (0) or after the step in flight
