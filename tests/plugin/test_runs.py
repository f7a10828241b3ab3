"""Runs widget against the run-directory contract: table, incremental live plot, failed-run error."""

from __future__ import annotations

import os

from dinocell_core.config import StrictModel
from dinocell_core.runs.rundir import RunDir


class _Cfg(StrictModel):
    lr: float = 1e-3


def _cell(widget, row: int, col: str) -> str:
    from napari_dinocell.widgets.runs import COLUMNS

    item = widget.table.item(row, COLUMNS.index(col))
    return item.text() if item is not None else ""


def test_runs_widget_table_plot_and_error(make_napari_viewer, qtbot, tmp_path):
    run = RunDir(tmp_path / "run_a")
    run.write_config(_Cfg())
    run.update_status(state="running", kind="pretrain", step=2, total_steps=10, pid=os.getpid(),
                      samples_per_s=12.5, eta_s=3725.0, last_checkpoint=str(run.checkpoints_dir / "step_2.st"))
    for step in (1, 2):
        run.append_metrics({"step": step, "loss": 5.0 - step, "loss_dino": 3.0 - step, "lr": 1e-3})

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Runs")
    widget.watcher.timer.setInterval(50)
    widget.set_folder(tmp_path)
    qtbot.waitUntil(lambda: widget.table.rowCount() == 1, timeout=5000)
    assert _cell(widget, 0, "State") == "running"
    assert _cell(widget, 0, "Step") == "2/10"
    assert _cell(widget, 0, "Throughput") == "12.5 img/s"
    assert _cell(widget, 0, "ETA") == "1:02:05"
    assert _cell(widget, 0, "Last checkpoint") == "step_2.st"

    widget.table.selectRow(0)
    assert widget.selected == run.path
    qtbot.waitUntil(lambda: len(widget.plot.series["loss"].steps if "loss" in widget.plot.series else []) == 2,
                    timeout=5000)
    assert set(widget.plot.series) == {"loss", "loss_dino"}  # every loss term; lr is not a loss
    first_offset = widget.tail.offset

    # a torn (partial) last line is not read until it is complete; reads continue from the byte offset
    run.append_metrics({"step": 3, "loss": 1.5, "loss_dino": 0.5})
    with open(run.metrics_path, "a") as fh:
        fh.write('{"step": 4, "loss": 1.2')
    qtbot.waitUntil(lambda: len(widget.plot.series["loss"].steps) == 3, timeout=5000)
    assert widget.tail.offset > first_offset
    with open(run.metrics_path, "a") as fh:
        fh.write(', "loss_dino": 0.4}\n')
    qtbot.waitUntil(lambda: len(widget.plot.series["loss"].steps) == 4, timeout=5000)
    assert widget.plot.series["loss"].steps == [1.0, 2.0, 3.0, 4.0]
    assert widget.plot.series["loss"].values == [4.0, 3.0, 1.5, 1.2]
    line = widget.plot.lines["loss"]
    assert list(line.get_xdata()) == [1.0, 2.0, 3.0, 4.0]
    assert widget.stop_btn.isEnabled() and not widget.resume_btn.isEnabled()

    run.console_path.write_text("Traceback (most recent call last):\nOSError: disk quota exceeded\n")
    run.update_status(state="failed", error="BadImageError: /data/x.tiff is truncated")
    qtbot.waitUntil(lambda: "is truncated" in widget.log_view.toPlainText(), timeout=5000)
    assert "disk quota exceeded" in widget.log_view.toPlainText()  # the job's raw output (console.log) too
    assert _cell(widget, 0, "State") == "failed"
    assert widget.resume_btn.isEnabled() and not widget.stop_btn.isEnabled()
    widget.watcher.timer.stop()
    qtbot.waitUntil(lambda: not widget.watcher.polling, timeout=5000)


def test_runs_widget_missing_folder_is_a_notification(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Runs")
    widget.set_folder(tmp_path / "nope")
    qtbot.waitUntil(lambda: widget._last_error is not None, timeout=5000)
    assert "does not exist" in widget._last_error
    assert widget.table.rowCount() == 0
    widget.watcher.timer.stop()
    qtbot.waitUntil(lambda: not widget.watcher.polling, timeout=5000)


FAKE_SBATCH = """#!/bin/sh
# a stand-in for Slurm's sbatch: keeps the submitted script, answers a job id
cp "$2" "$(dirname "$2")/submitted_$(date +%s%N).sbatch"
echo 4242
"""


def test_resume_from_runs_widget_keeps_slurm_and_gpu_count(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """A 4-GPU Slurm run resumes as a 4-GPU Slurm job with its partition and time limit, not one local process."""
    from dinocell_core.runs.launch import SlurmOptions, submit_slurm

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runs_dir = tmp_path / "runs"
    launched = submit_slurm("pretrain", runs_dir / "big", _Cfg(), gpus=4,
                            options=SlurmOptions(partition="gpu-a100", time="48:00:00"))
    run = RunDir(launched.run_dir)
    run.update_status(state="stopped", step=1000)  # the job ran, checkpointed and stopped
    (run.path / "job.sbatch").unlink()

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Runs")
    widget.watcher.timer.setInterval(50)
    widget.set_folder(runs_dir)
    qtbot.waitUntil(lambda: widget.table.rowCount() == 1, timeout=5000)
    widget.table.selectRow(0)
    qtbot.waitUntil(lambda: widget.resume_btn.isEnabled(), timeout=5000)
    widget.resume_btn.click()
    script = (run.path / "job.sbatch").read_text()
    assert "#SBATCH --gres=gpu:4" in script and "--nproc_per_node=4" in script
    assert "#SBATCH --partition=gpu-a100" in script and "#SBATCH --time=48:00:00" in script
    status = run.read_status()
    assert status["launcher"] == "slurm" and status["world_size"] == 4 and status["slurm"]["gpus"] == 4
    widget.watcher.timer.stop()
    qtbot.waitUntil(lambda: not widget.watcher.polling, timeout=5000)


def test_resume_keeps_the_torchrun_world_size(tmp_path):
    """A local 2-GPU (torchrun) run resumes under torchrun on the same GPUs: the relaunched command is recorded by
    a stand-in interpreter (a real subprocess)."""
    import time

    from dinocell_core.runs.launch import launch_local, resume_run

    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho "$CUDA_VISIBLE_DEVICES $*" >> "$(dirname "$0")/argv.txt"\n')
    fake_python.chmod(0o755)
    first = launch_local("pretrain", tmp_path / "run", _Cfg(), gpus=[0, 1], python=str(fake_python))
    first.process.wait()
    run = RunDir(first.run_dir)
    assert run.read_status()["world_size"] == 2
    deadline = time.time() + 10
    while run.read_status().get("state") == "running" and time.time() < deadline:
        time.sleep(0.05)  # the launcher's reaper records how the stand-in ended
    again = resume_run(run.path, python=str(fake_python))
    again.process.wait()
    lines = (tmp_path / "argv.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    assert lines[1].startswith("0,1 -m dinocell_core.runs.torchrun") and "--nproc_per_node=2" in lines[1]
    assert run.read_status()["launcher"] == "torchrun"


def test_decoder_metrics_on_their_own_axis_and_failure_notification(make_napari_viewer, qtbot, tmp_path,
                                                                      notifications):
    """Decoder records: losses per channel on the loss axis, summary validation metrics on a 0–1 axis (no counts
    such as val_n_gt on the loss scale, no 27-entry legend); a run turning failed raises a notification; the runs
    folder is remembered for the next session."""
    run = RunDir(tmp_path / "dec")
    run.write_config(_Cfg())
    run.update_status(state="running", kind="decoder", pid=os.getpid())
    val = {f"val_ap@{t:.2f}": 0.5 for t in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)}
    val.update({f"val_f1@{t:.2f}": 0.6 for t in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)})
    val.update(val_ap_mean=0.4, val_seg=0.7, val_det=0.8, val_op_csb=0.75, val_n_images=3, val_n_gt=89)
    for channel in ("DNA", "Mito"):
        run.append_metrics({"step": 1, "channel": channel, "loss": 1.0, "lr": 1e-3})
        run.append_metrics({"step": 2, "channel": channel, "loss": 0.8})
        run.append_metrics({"step": 2, "channel": channel, **val})

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Runs")
    widget.watcher.timer.setInterval(50)
    widget.set_folder(tmp_path)
    qtbot.waitUntil(lambda: widget.table.rowCount() == 1, timeout=5000)
    widget.table.selectRow(0)
    qtbot.waitUntil(lambda: "Mito val_seg" in widget.plot.series, timeout=5000)
    loss_lines = {line.get_label() for line in widget.plot.ax.get_lines()}
    val_lines = {line.get_label() for line in widget.plot.ax_val.get_lines()}
    assert loss_lines == {"DNA loss", "Mito loss"}
    assert val_lines == {f"{c} {m}" for c in ("DNA", "Mito") for m in ("ap@0.50", "ap_mean", "f1@0.50", "seg", "det")}
    assert not any("n_gt" in k or "n_images" in k for k in widget.plot.series)
    assert widget.plot.ax_val.get_ylim() == (0.0, 1.0)

    run.update_status(state="failed", error="CUDA out of memory")
    qtbot.waitUntil(lambda: any("dec failed: CUDA out of memory" in m for m in notifications), timeout=5000)
    widget.watcher.timer.stop()
    qtbot.waitUntil(lambda: not widget.watcher.polling, timeout=5000)

    from napari_dinocell.widgets.runs import RunsWidget

    second = RunsWidget(viewer)
    try:
        assert second.folder_edit.text() == str(tmp_path)
    finally:
        second.watcher.timer.stop()
        qtbot.waitUntil(lambda: not second.watcher.polling, timeout=5000)
        second.deleteLater()


def test_one_watcher_reads_each_status_once_per_poll(make_napari_viewer, tmp_path, monkeypatch):
    """The Runs table and a training form share one watcher; a poll of a runs folder and of one run inside it reads
    each status.json once, and the run's state is list_runs' effective state (a dead local process is "lost")."""
    from napari_dinocell.jobs.runs import poll_runs
    from napari_dinocell.widgets.runs import RunsWidget

    for name in ("a", "b"):
        run = RunDir(tmp_path / name)
        run.write_config(_Cfg())
        run.update_status(state="running", kind="decoder", pid=2**22 + 17)  # no such process
    reads: list[str] = []
    read_status = RunDir.read_status
    monkeypatch.setattr(RunDir, "read_status", lambda self: reads.append(self.path.name) or read_status(self))

    poll = poll_runs([tmp_path / "a", tmp_path], [])
    assert sorted(reads) == ["a", "b"]
    assert poll.runs[tmp_path / "a"] == [poll.run(tmp_path / "a")]
    assert {info.name: info.state for info in poll.runs[tmp_path]} == {"a": "lost", "b": "lost"}

    viewer = make_napari_viewer()
    _, form = viewer.window.add_plugin_dock_widget("dinocell", "Train decoder")
    runs = RunsWidget(viewer)
    try:
        assert runs.watcher is form.run_controls.watcher
    finally:
        runs.deleteLater()


def test_resume_just_after_stop_is_no_false_failure(make_napari_viewer, qtbot, tmp_path, notifications, monkeypatch):
    """Stop, then Resume in the Runs widget before the stopped process has exited: when it exits (code 143) the
    resumed run stays "running" and no "run … failed" notification appears. Stand-in job processes."""
    import stat
    import sys
    import threading
    import time

    from dinocell_core.runs.launch import launch_local, stop_run

    go = tmp_path / "go"
    scripts = {"old_job": f"trap '' TERM\nwhile [ ! -e {go} ]; do sleep 0.05; done\nexit 143\n",
               "new_job": "trap 'exit 143' TERM\nwhile true; do sleep 0.05; done\n"}
    for name, body in scripts.items():
        path = tmp_path / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    runs = tmp_path / "runs"
    old = launch_local("pretrain", runs / "r", _Cfg(), python=str(tmp_path / "old_job"))
    run = RunDir(runs / "r")

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Runs")
    widget.watcher.timer.setInterval(50)
    widget.set_folder(runs)
    qtbot.waitUntil(lambda: widget.table.rowCount() == 1 and _cell(widget, 0, "State") == "running", timeout=5000)
    widget.table.selectRow(0)
    widget.stop_btn.click()
    run.update_status(state="stopped")  # the trainer checkpointed and says so, its process still exiting
    qtbot.waitUntil(widget.resume_btn.isEnabled, timeout=5000)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "new_job"))  # what Resume relaunches
    widget.resume_btn.click()
    new_pid = run.read_status()["pid"]
    assert new_pid != old.pid
    go.touch()
    assert old.process.wait(timeout=30) == 143
    for thread in threading.enumerate():
        if thread.name == f"dinocell-reap-{old.pid}":
            thread.join(timeout=30)
    qtbot.wait(500)  # several polls
    assert _cell(widget, 0, "State") == "running"
    assert not any("failed" in m for m in notifications), notifications

    stop_run(run.path)
    deadline = time.time() + 10
    while run.read_status().get("state") == "running" and time.time() < deadline:
        time.sleep(0.05)
    widget.watcher.timer.stop()
    qtbot.waitUntil(lambda: not widget.watcher.polling, timeout=5000)


def test_a_run_with_one_logged_step_is_plotted(make_napari_viewer, qtbot, tmp_path):
    """One metrics record: each loss is drawn as a dot (a line through one point draws nothing)."""
    run = RunDir(tmp_path / "run_one")
    run.write_config(_Cfg())
    run.update_status(state="running", kind="pretrain", step=1, total_steps=10, pid=os.getpid())
    run.append_metrics({"step": 1, "loss": 4.0, "loss_dino": 2.0})
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Runs")
    widget.watcher.timer.setInterval(50)
    widget.set_folder(tmp_path)
    qtbot.waitUntil(lambda: widget.table.rowCount() == 1, timeout=5000)
    widget.table.selectRow(0)
    qtbot.waitUntil(lambda: "loss" in widget.plot.lines, timeout=5000)
    line = widget.plot.lines["loss"]
    assert line.get_marker() == "o" and line.get_markersize() > 0
    lo, hi = widget.plot.ax.get_ylim()
    assert lo < 4.0 < hi
    run.append_metrics({"step": 2, "loss": 3.0, "loss_dino": 1.5})  # from two steps on: a plain line
    qtbot.waitUntil(lambda: len(widget.plot.series["loss"].steps) == 2, timeout=5000)
    assert line.get_marker() in ("", "None", None)
    widget.watcher.timer.stop()
    qtbot.waitUntil(lambda: not widget.watcher.polling, timeout=5000)
