"""The Segment dock's "Fine-tune this channel's model on my corrections": where the corrections are (the labels
store the JUMP browser saves into), where the run goes (the Runs widget's folder, so it is listed there), how long,
the held-out share, and whether the CellProfiler-recipe fields train too. The run and its follow-up are
:func:`napari_dinocell.jobs.finetune.finetune_job`; when it ends the models folder is listed again, the new bundle
beside the old one, its before/after AP in the model summary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QLabel, QPushButton, QSpinBox, QWidget

from dinocell_core.seg.finetune import FINETUNE_STEPS
from napari_dinocell.jobs.finetune import FinetuneResult, finetune_job
from napari_dinocell.jobs.runner import start_job
from napari_dinocell.notify import show_error, show_info
from napari_dinocell.status import JobStatus
from napari_dinocell.widgets.common import PathEdit

if TYPE_CHECKING:
    from dinocell_core.seg.bundle import BundleInfo


class FinetuneBox(QWidget):
    """``ended(FinetuneResult)`` once a fine-tuning run this box started has ended."""

    ended = Signal(object)

    def __init__(self, bundle: Callable[[], BundleInfo | None], root: Callable[[], str | None],
                 device: Callable[[], str]) -> None:
        super().__init__()
        self._bundle, self._root, self._device = bundle, root, device
        self.status = JobStatus()
        self.worker = None
        self.labels_store = PathEdit("labels store with your corrections (the JUMP browser's)", "dir",
                                     settings_key="browser/labels_store")
        self.runs_folder = PathEdit("runs folder (the Runs widget's)", "dir", settings_key="runs/folder")
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setValue(FINETUNE_STEPS)
        self.held_out = QDoubleSpinBox()
        self.held_out.setRange(0.05, 0.9)
        self.held_out.setSingleStep(0.05)
        self.held_out.setValue(0.3)
        self.held_out.setToolTip("share of the corrected fields kept out of training to compare before/after on")
        self.with_auto = QCheckBox("also train on the CellProfiler-recipe (auto) fields")
        self.button = QPushButton("Fine-tune this channel's model on my corrections")
        self.button.clicked.connect(self.start)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Corrections", self.labels_store)
        form.addRow("Runs folder", self.runs_folder)
        form.addRow("Steps", self.steps)
        form.addRow("Held out", self.held_out)
        form.addRow(self.with_auto)
        form.addRow(self.button)
        form.addRow(self.message)

    def start(self) -> None:
        info, root = self._bundle(), self._root()
        problem = ("choose a model first" if info is None else
                   "choose a JUMP browser layer (its field's tree is the one the corrections belong to)" if not root
                   else "set the labels store holding your corrections" if not self.labels_store.text() else
                   "set the runs folder (where the Runs widget looks)" if not self.runs_folder.text() else "")
        if problem or info is None or root is None:
            show_error(problem)
            return
        self.button.setEnabled(False)
        self.message.setText(f"starting a fine-tuning run of {info.name} …")
        self.worker = start_job(finetune_job, Path(info.path), root, self.labels_store.text(),
                                Path(self.runs_folder.text()), self.steps.value(), self.with_auto.isChecked(),
                                self.held_out.value(), self._device(), status=self.status, title="Fine-tuning",
                                on_returned=self._ended, on_finished=self._finished)

    def _finished(self) -> None:
        self.worker = None
        self.button.setEnabled(True)
        if self.status.message and not self.message.text().startswith(("fine-tuned", "the fine-tuning")):
            self.message.setText(str(self.status.message))

    def _ended(self, result: FinetuneResult) -> None:
        if not isinstance(result, FinetuneResult):
            return
        if result.scores is None:
            self.message.setText(f"the fine-tuning run {result.run_dir.name} ended {result.state}"
                                 + (f": {result.error}" if result.error else ""))
            show_error(self.message.text())
        else:
            b, a = result.scores["before"], result.scores["after"]
            self.message.setText(
                f"fine-tuned → {Path(result.scores['bundle']).stem}: on {len(result.scores['held_out'])} held-out "
                f"corrected fields AP@0.5 {b['ap@0.50']:.3f} → {a['ap@0.50']:.3f}, AP@0.75 {b['ap@0.75']:.3f} → "
                f"{a['ap@0.75']:.3f} (run {result.run_dir})")
            show_info(self.message.text())
        self.ended.emit(result)
