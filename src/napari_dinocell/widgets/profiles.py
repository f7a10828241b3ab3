"""Profiles widget: a 2-D map of well profiles coloured by perturbation, plate or retrieval result, the table of
each perturbation's mAP and q-value, and a click on a well to open one of its fields in the JUMP browser.

Reading, normalising, the copairs benchmark and the projection run in a worker
(:func:`napari_dinocell.jobs.profiles.well_map_job`); the widget only draws. Its heavy imports (pandas through the
projection module, matplotlib) are done in a worker too: the dock opens at once, and the projection choices and
the map appear when they are loaded (a "Load profiles" asked for meanwhile starts then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)
from superqt.utils import WorkerBase

from dinocell_core.profiling.normalize import NEGCON_FLAG, NORMALIZATIONS
from dinocell_core.profiling.settings import QUICK_NULL_SIZE, EvalSettings
from dinocell_core.profiling.table import readout_text
from napari_dinocell.jobs.gc_pauses import watch as watch_gc_pauses
from napari_dinocell.jobs.profiles import well_map_job
from napari_dinocell.jobs.runner import start_job
from napari_dinocell.notify import show_error, show_info
from napari_dinocell.status import JobStatus
from napari_dinocell.widgets.common import PathEdit, scroll_layout
from napari_dinocell.widgets.deferred_figure import DeferredFigure

if TYPE_CHECKING:
    from dinocell_core.profiling.projection import WellMap

#: imported in a worker with matplotlib when the dock opens (it brings pandas)
PROJECTION_MODULE = "dinocell_core.profiling.projection"
COLOR_BY = ("retrieval", "perturbation", "plate")
TABLE_COLUMNS = ("Perturbation", "mAP", "q-value", "Retrieved")
PICK_RADIUS_PX = 8.0
#: rows the table shows without scrolling (the dock scrolls as a whole when it is taller than the window)
TABLE_ROWS = 8


def umap_available() -> bool:
    from dinocell_core.profiling.projection import umap_available as available

    return available()


def point_colors(wm: WellMap, by: str, pert_col: str, plate_col: str) -> tuple[np.ndarray, dict[str, Any]]:
    """RGBA per well and the legend entries (label → colour)."""
    from matplotlib import colormaps

    neg = wm.meta[NEGCON_FLAG].to_numpy() == 1
    grey = np.array([0.6, 0.6, 0.6, 0.6])
    colors = np.tile(grey, (len(wm.meta), 1))
    legend: dict[str, Any] = {"negcon": grey}
    if by == "retrieval":
        hit = set(wm.results.loc[wm.results["below_corrected_p"].astype(bool), pert_col].astype(str))
        retrieved = wm.meta[pert_col].astype(str).isin(hit).to_numpy() & ~neg
        blue, orange = (0.12, 0.47, 0.71, 1.0), (1.0, 0.5, 0.05, 1.0)
        colors[retrieved] = blue
        colors[~retrieved & ~neg] = orange
        legend.update({"retrieved (q < 0.05)": blue, "not retrieved": orange})
        return colors, legend
    col = pert_col if by == "perturbation" else plate_col
    values = wm.meta[col].astype(str).to_numpy()
    cats = sorted(set(values[~neg] if by == "perturbation" else values))
    cmap = colormaps["tab20"]
    for i, c in enumerate(cats):
        m = (values == c) & (~neg if by == "perturbation" else True)
        colors[m] = cmap(i % 20)
        if i < 12:
            legend[c] = cmap(i % 20)
    if by == "plate":
        legend.pop("negcon")
    return colors, legend


class ProfilesWidget(QWidget):
    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        watch_gc_pauses(napari_viewer, self)
        self.status = JobStatus()
        self.worker: WorkerBase | None = None
        self.map: WellMap | None = None
        self.settings = EvalSettings()
        self.profiles = PathEdit("well profiles (.csv / .parquet from `profile embed`)", "file")
        self.evaluation = PathEdit("optional: a `profile evaluate` folder (else computed here)", "dir")
        self.images = PathEdit("optional: CPJUMP1 root, to open a clicked well in the JUMP browser", "dir")
        self.normalize = QComboBox()
        self.normalize.addItems(list(NORMALIZATIONS))
        self.method = QComboBox()  # filled once the projection module is loaded
        self.null_size = QSpinBox()
        self.null_size.setRange(100, 1_000_000)
        self.null_size.setSingleStep(1000)
        self.null_size.setValue(QUICK_NULL_SIZE)
        self.color_by = QComboBox()
        self.color_by.addItems(COLOR_BY)
        self.color_by.currentTextChanged.connect(lambda _: self.draw())
        self.run_btn = QPushButton("Load profiles")
        self.run_btn.clicked.connect(self.compute)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.clicked.connect(lambda: self.worker.quit() if self.worker is not None else None)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.status.events.message.connect(lambda text: self.message.setText(str(text)))

        self._ax: Any = None
        self._methods: tuple[str, ...] = ()
        self._compute_when_ready = False
        self.area = DeferredFigure((4, 3.2), 240, self._built, extra_modules=(PROJECTION_MODULE,),
                                   placeholder="loading the Profiles dock…")
        self._scatter: Any = None
        self._picked: int | None = None  # the well clicked last, ringed on the map
        self._ring: Any = None
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setMinimumHeight(self.table.horizontalHeader().sizeHint().height()
                                    + TABLE_ROWS * self.table.verticalHeader().defaultSectionSize() + 4)

        form = QFormLayout()
        form.addRow("Profiles", self.profiles)
        self.readout = QLabel("")  # which read-out the table holds (profile embed's OUT.json)
        form.addRow("Read-out", self.readout)
        form.addRow("Evaluation", self.evaluation)
        form.addRow("Images root", self.images)
        form.addRow("Normalisation", self.normalize)
        form.addRow("Projection", self.method)
        form.addRow("mAP null size", self.null_size)
        form.addRow("Colour by", self.color_by)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        layout = scroll_layout(self)  # map and table below the form: the dock scrolls instead of growing the window
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.message)
        layout.addWidget(self.area, 3)
        layout.addWidget(self.table, 2)
        self._update_enabled()

    # ------------------------------------------------------------------------------------------- set-up
    @property
    def ready(self) -> bool:
        """The projection choices and the map's canvas are there (their modules loaded)."""
        return self.area.ready

    # asked for before the worker has loaded their modules, the map's objects are built right away
    @property
    def figure(self) -> Any:
        return self.area.figure

    @property
    def canvas(self) -> Any:
        return self.area.canvas

    @property
    def ax(self) -> Any:
        self.area.build()
        return self._ax

    def _built(self) -> None:
        from dinocell_core.profiling.projection import METHODS, UMAP_MISSING

        try:
            self._methods = tuple(METHODS)
            self.method.addItems(list(METHODS))
            if not umap_available():  # listed but greyed out, saying what to install
                umap_item = self.method.model().item(1)
                umap_item.setEnabled(False)
                umap_item.setText("UMAP (needs umap-learn)")
                umap_item.setToolTip(UMAP_MISSING)
                self.method.setToolTip(UMAP_MISSING)
        except RuntimeError:  # the dock was closed before its modules were loaded
            return
        self._ax = self.area.figure.add_subplot(111)
        self.area.canvas.mpl_connect("button_press_event", self._on_click)
        self._update_enabled()
        if self._compute_when_ready:
            self._compute_when_ready = False
            self.compute()

    # ------------------------------------------------------------------------------------------- compute
    def compute(self) -> None:
        path = self.profiles.text()
        if not path:
            show_error("choose a well-profile table first")
            return
        if not self.ready:  # starts as soon as the dock has loaded its modules
            self._compute_when_ready = True
            self.message.setText("loading…")
            return
        self.readout.setText(readout_text(path))
        self.worker = start_job(well_map_job, path, self.evaluation.text() or None, self.normalize.currentText(),
                                self.null_size.value(), self._methods[self.method.currentIndex()],
                                status=self.status,
                                title="Profiles", on_returned=self._show, on_finished=self._finished)
        self._update_enabled()

    def _show(self, wm: WellMap | None) -> None:
        if wm is None:
            return
        self.map = wm
        self._picked = None
        self.draw()
        self._fill_table(wm)
        r = wm.results
        frac = float(r["below_corrected_p"].astype(bool).mean()) if len(r) else 0.0
        self.status.finish(f"{len(wm.meta)} wells, {len(r)} perturbations: fraction retrieved {frac:.3f}, "
                           f"mean mAP {float(r['mean_average_precision'].mean()):.3f}")

    def _finished(self) -> None:
        self.worker = None
        self._update_enabled()

    def _update_enabled(self) -> None:
        self.run_btn.setEnabled(self.worker is None and self.ready)
        self.cancel_btn.setEnabled(self.worker is not None)

    # ------------------------------------------------------------------------------------------- drawing
    def draw(self) -> None:
        if not self.ready:
            return
        self.ax.clear()
        wm = self.map
        if wm is None:
            self.canvas.draw_idle()
            return
        s = self.settings
        colors, legend = point_colors(wm, self.color_by.currentText(), s.pert_col, s.plate_col)
        self._scatter = self.ax.scatter(wm.coords[:, 0], wm.coords[:, 1], c=colors, s=18, linewidths=0)
        for label, color in legend.items():
            self.ax.scatter([], [], color=color, s=18, label=label)
        self.ax.legend(fontsize=6, loc="best")
        ev = "" if not wm.explained else " (" + ", ".join(f"{v:.0%}" for v in wm.explained) + ")"
        self.ax.set_title(f"{wm.method} of {len(wm.meta)} well profiles{ev}", fontsize=9)
        self.ax.set_xticks([])
        self.ax.set_yticks([])
        self._ring = None
        self._draw_pick()

    def _draw_pick(self) -> None:
        """Ring the clicked well (drawn over the points; replaces the previous ring)."""
        if self._ring is not None:
            self._ring.remove()
            self._ring = None
        if self.map is not None and self._picked is not None:
            x, y = self.map.coords[self._picked]
            self._ring = self.ax.scatter([x], [y], s=140, facecolors="none", edgecolors="black", linewidths=2.0,
                                         zorder=5)
        self.canvas.draw_idle()

    def _fill_table(self, wm: WellMap) -> None:
        s = self.settings
        r = wm.results.sort_values("mean_average_precision", ascending=False)
        self.table.setRowCount(len(r))
        for i, row in enumerate(r.itertuples(index=False)):
            d = row._asdict()
            cells = (str(d[s.pert_col]), f"{d['mean_average_precision']:.3f}", f"{d['corrected_p_value']:.3g}",
                     "yes" if bool(d["below_corrected_p"]) else "no")
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(text))

    # ------------------------------------------------------------------------------------------- clicking
    def nearest_well(self, x_px: float, y_px: float) -> int | None:
        """Index of the well drawn within :data:`PICK_RADIUS_PX` display pixels of (x_px, y_px), if any."""
        if self.map is None:
            return None
        pts = self.ax.transData.transform(self.map.coords)
        d = np.hypot(pts[:, 0] - x_px, pts[:, 1] - y_px)
        i = int(np.argmin(d))
        return i if d[i] <= PICK_RADIUS_PX else None

    def _on_click(self, event: Any) -> None:
        if event.inaxes is not self.ax:
            return
        i = self.nearest_well(event.x, event.y)
        if i is not None:
            self.open_well(i)

    def open_well(self, i: int) -> None:
        """Show one field of well ``i`` in the JUMP browser (loading the images root there if needed)."""
        assert self.map is not None
        s = self.settings
        plate = str(self.map.meta.loc[i, s.plate_col])
        well = str(self.map.meta.loc[i, "Metadata_Well"]) if "Metadata_Well" in self.map.meta else ""
        pert = self.map.meta.loc[i, s.pert_col]
        self.message.setText(f"{plate} {well}: {pert}")
        self._picked = i
        self._draw_pick()
        rows = [r for r in range(self.table.rowCount()) if self.table.item(r, 0).text() == str(pert)]
        if rows:  # its perturbation's row in the table
            self.table.selectRow(rows[0])
            self.table.scrollToItem(self.table.item(rows[0], 0))
        root = self.images.text()
        if not root:
            show_info(f"{plate} {well}: set the images root to open its fields in the JUMP browser")
            return
        _, browser = self.viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
        if browser.root.text() != root or not browser.fields:
            browser.load_root(root)
        self._select_when_indexed(browser, plate, well, tries=200)

    def _select_when_indexed(self, browser: Any, plate: str, well: str, tries: int) -> None:
        if not browser.fields:
            if tries > 0:
                QTimer.singleShot(50, lambda: self._select_when_indexed(browser, plate, well, tries - 1))
            return
        field = next((f for f in browser.fields if f.plate == plate and f.well == well), None)
        if field is None:
            show_error(f"no field of {plate} {well} under {browser.root.text()}")
            return
        browser.select(field)
