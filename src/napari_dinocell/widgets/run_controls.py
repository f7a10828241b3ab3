"""Launch / stop / resume controls of a training form: where the run goes, on how many GPUs, local or Slurm.

Launching, stopping and resuming are :mod:`dinocell_core.runs.launch` calls (the CLI's code): Resume is
:func:`~dinocell_core.runs.launch.resume_run`, which relaunches a run the way its status.json says it was launched.
A launched run is watched through the application's one
:class:`~napari_dinocell.jobs.run_watcher.RunWatcher` (off the GUI thread), so a failure raises a notification
here, not only in the Runs widget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

from pydantic import BaseModel
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from dinocell_core.config import ConfigError
from dinocell_core.runs.launch import (
    LaunchError,
    SlurmOptions,
    launch_local,
    resume_run,
    slurm_available,
    stop_run,
    submit_slurm,
)
from dinocell_core.runs.rundir import RunDir
from napari_dinocell.jobs.run_watcher import shared_watcher
from napari_dinocell.jobs.runs import RunPoll, run_ended
from napari_dinocell.notify import show_error, show_info
from napari_dinocell.widgets.value_editor import ValueEditor


class RunControls(QWidget):
    """Output folder, run name, GPUs/Slurm, the Validate/Launch/Stop/Resume buttons and the message line.

    ``build_config(overrides)`` comes from the form: it returns the validated config or raises ConfigError.
    """

    def __init__(self, kind: str, build_config: Callable[[Sequence[str]], BaseModel]) -> None:
        super().__init__()
        self.kind = kind
        self.build_config = build_config
        self.last_run: Path | None = None
        self.watcher = shared_watcher()
        self._reported: set[tuple[str, float]] = set()

        self.out_dir = ValueEditor(str, "dir")
        self.out_dir.remember_as(f"{kind}/output_folder")
        self.run_name = QLineEdit()
        self.run_name.setPlaceholderText("run name (default: <kind>_<date>_<time>)")
        self.gpus = QSpinBox()
        self.gpus.setRange(0, 64)
        self.gpus.setToolTip("0 = one process on the default device; 2+ = torchrun, one process per GPU")
        self.slurm = QCheckBox("submit to Slurm (sbatch)")
        self.slurm.setEnabled(slurm_available())
        if not slurm_available():
            self.slurm.setToolTip("no 'sbatch' on PATH")
        self.partition = QLineEdit()
        self.partition.setPlaceholderText("partition (optional)")
        self.time_limit = QLineEdit()
        self.time_limit.setPlaceholderText("time limit, e.g. 48:00:00")
        run_form = QFormLayout()
        run_form.addRow("Output folder", self.out_dir.container)
        run_form.addRow("Run name", self.run_name)
        run_form.addRow("GPUs", self.gpus)
        run_form.addRow(self.slurm)
        slurm_row = QHBoxLayout()
        slurm_row.addWidget(self.partition)
        slurm_row.addWidget(self.time_limit)
        run_form.addRow(slurm_row)

        self.validate_btn = QPushButton("Validate")
        self.validate_btn.clicked.connect(self.validate)
        self.launch_btn = QPushButton("Launch")
        self.launch_btn.clicked.connect(lambda: self.launch())  # not clicked(bool) → overrides
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.clicked.connect(self.stop)
        self.resume_btn = QPushButton("Resume")
        self.resume_btn.setToolTip("relaunch the run as it was launched (GPUs / Slurm from its status.json)")
        self.resume_btn.clicked.connect(self.resume)
        buttons = QHBoxLayout()
        for b in (self.validate_btn, self.launch_btn, self.stop_btn, self.resume_btn):
            buttons.addWidget(b)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        run_form.addRow(buttons)
        run_form.addRow(self.message)
        self.setLayout(run_form)
        run_form.setContentsMargins(0, 0, 0, 0)

    # ------------------------------------------------------------------ validate / launch
    def run_dir(self) -> Path:
        out = self.out_dir.get()
        if not out:
            raise LaunchError("choose an output folder for the run")
        name = self.run_name.text().strip() or f"{self.kind}_{time.strftime('%Y%m%d_%H%M%S')}"
        return Path(out).expanduser().resolve() / name

    def gpu_ids(self) -> list[int]:
        return list(range(self.gpus.value())) if self.gpus.value() > 1 else []

    def output_problems(self) -> list[str]:
        """The output folder's part of the preflight (asked by the form's build_config)."""
        try:
            run = RunDir(self.run_dir())
        except LaunchError as exc:
            return [str(exc)]
        if run.checkpoints_dir.is_dir() and any(run.checkpoints_dir.iterdir()):
            return [f"run folder {run.path} already has checkpoints: press Resume to continue it, "
                    f"or choose another run name"]
        return []

    def validate(self) -> BaseModel | None:
        try:
            cfg = self.build_config(())
        except ConfigError as exc:
            self.error(str(exc))
            return None
        self.info("configuration is valid")
        return cfg

    def launch(self, overrides: Sequence[str] = ()) -> Path | None:
        """Validate, then start the job detached (or submit it); returns the run directory."""
        try:
            cfg = self.build_config(overrides)
        except ConfigError as exc:
            self.error(str(exc))
            return None
        try:
            run_dir = self.run_dir()
            if self.slurm.isChecked():
                opts = SlurmOptions(partition=self.partition.text().strip(), time=self.time_limit.text().strip())
                launched = submit_slurm(self.kind, run_dir, cfg, gpus=self.gpus.value(), options=opts)
                msg = f"submitted Slurm job {launched.slurm_job_id} → {run_dir}"
            else:
                launched = launch_local(self.kind, run_dir, cfg, gpus=self.gpu_ids())
                msg = f"started pid {launched.pid} → {run_dir}"
        except (LaunchError, OSError) as exc:
            self.error(str(exc))
            return None
        self._started(launched.run_dir)
        self.info(msg)
        return launched.run_dir

    # ------------------------------------------------------------------ stop / resume
    def _target_run(self) -> Path | None:
        if self.last_run is not None:
            return self.last_run
        try:
            candidate = self.run_dir()
        except LaunchError as exc:
            self.error(str(exc))
            return None
        return candidate if RunDir(candidate).exists() else None

    def stop(self) -> None:
        run = self._target_run()
        if run is None:
            self.error("no run to stop: launch one, or enter the output folder and run name of an existing run")
            return
        try:
            self.info(f"{stop_run(run)} ({run.name} will checkpoint and stop)")
        except LaunchError as exc:
            self.error(str(exc))

    def resume(self) -> None:
        run = self._target_run()
        if run is None:
            self.error("no run to resume: enter the output folder and run name of an existing run")
            return
        try:
            launched = resume_run(run)
        except LaunchError as exc:
            self.error(str(exc))
            return
        self._started(launched.run_dir)
        how = f"Slurm job {launched.slurm_job_id}" if launched.slurm_job_id else f"pid {launched.pid}"
        self.info(f"resumed {run.name} from its last checkpoint ({how})")

    # ------------------------------------------------------------------ failure watch
    def _started(self, run_dir: Path) -> None:
        self.last_run = run_dir
        self.watcher.watch(self, run_dir)

    def runs_polled(self, poll: RunPoll) -> None:
        """Report the launched run's failure once; stop watching it once it has ended."""
        run = self.last_run
        info = poll.run(run) if run is not None else None
        if run is None or info is None:
            return
        if info.state in ("failed", "lost"):
            key = (str(run), float(info.updated_at or 0.0))
            if key not in self._reported:
                self._reported.add(key)
                self.error(f"run {run.name} {info.state}: {info.error or 'the job process is gone'}",
                           event=run_ended(info))
        if info.state not in ("running", "queued", "unknown"):
            self.watcher.unwatch(self)

    # ------------------------------------------------------------------ messages
    def error(self, text: str, event: Hashable | None = None) -> None:
        self.message.setStyleSheet("color: #ff6b6b;")
        self.message.setText(text)
        show_error(text, event=event)

    def info(self, text: str) -> None:
        self.message.setStyleSheet("")
        self.message.setText(text)
        show_info(text)
