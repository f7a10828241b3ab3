import json

import pytest

from dinocell_core.runs.rundir import MetricsTail, RunDir, list_runs, read_metrics
from tests.helpers.configs import Job


def test_run_dir_contract(tmp_path):
    run = RunDir(tmp_path / "r1")
    assert not run.exists()
    run.write_config(Job())
    assert run.exists() and run.checkpoints_dir.is_dir()
    run.update_status(state="running", kind="pretrain", step=0, total_steps=10)
    run.update_status(step=5)
    status = run.read_status()
    assert status["state"] == "running" and status["step"] == 5 and status["total_steps"] == 10
    assert {"pid", "host", "updated_at"} <= set(status)
    with pytest.raises(ValueError, match="unknown run state"):
        run.update_status(state="exploded")


def test_metrics_tail_is_incremental_and_tolerates_partial_lines(tmp_path):
    run = RunDir(tmp_path / "r")
    tail = MetricsTail(run.metrics_path)
    assert tail.read_new() == []
    run.append_metrics({"step": 1, "loss": 2.0})
    run.append_metrics({"step": 2, "loss": 1.5})
    assert [r["step"] for r in tail.read_new()] == [1, 2]
    assert tail.read_new() == []
    with open(run.metrics_path, "a") as fh:
        fh.write('{"step": 3, "lo')  # writer killed mid-line
    assert tail.read_new() == []
    with open(run.metrics_path, "a") as fh:
        fh.write('ss": 1.0}\n')
    assert tail.read_new() == [{"step": 3, "loss": 1.0}]


def test_truncate_after_resume_restarts_tail(tmp_path):
    run = RunDir(tmp_path / "r")
    for step in range(1, 6):
        run.append_metrics({"step": step})
    tail = MetricsTail(run.metrics_path)
    assert len(tail.read_new()) == 5
    run.truncate_metrics_after(3)
    assert [r["step"] for r in read_metrics(run.metrics_path)] == [1, 2, 3]
    assert [r["step"] for r in tail.read_new()] == [1, 2, 3]


def test_list_runs(tmp_path):
    for name, state in [("a", "finished"), ("b", "failed")]:
        run = RunDir(tmp_path / name)
        run.write_config(Job())
        run.update_status(state=state, kind="decoder", error="boom" if state == "failed" else None)
    (tmp_path / "not_a_run").mkdir()
    runs = list_runs(tmp_path)
    assert sorted(r.name for r in runs) == ["a", "b"]
    failed = next(r for r in runs if r.name == "b")
    assert failed.error == "boom" and failed.kind == "decoder"
    assert json.loads((tmp_path / "a" / "status.json").read_text())["state"] == "finished"
    with pytest.raises(FileNotFoundError):
        list_runs(tmp_path / "missing")


def test_concurrent_status_updates_lose_nothing(tmp_path):
    """The trainer and a Stop from napari write status.json from different processes: no update may be lost."""
    import subprocess
    import sys

    code = ("import sys\nfrom dinocell_core.runs.rundir import RunDir\nrun = RunDir(sys.argv[1])\n"
            "for i in range(150):\n    run.update_status(**{f'{sys.argv[2]}{i}': i})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"), tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    status = RunDir(tmp_path / "run").read_status()
    assert {k for k in status if k[0] in "ab" and k[1:].isdigit()} == {f"{t}{i}" for t in "ab" for i in range(150)}
