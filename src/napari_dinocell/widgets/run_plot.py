"""The Runs widget's live plot of one run: loss terms on the loss axis, validation and eval scores on a 0–1 axis.

Series are chosen by the metric families of :mod:`dinocell_core.runs.records` (``loss_keys``: every loss term;
``score_keys``: the shown validation metrics and the eval scores), so a new loss term or metric a trainer writes
appears without a change here, and summaries only keep the legend readable. Records are appended as they arrive;
existing lines are updated in place, not redrawn from scratch. matplotlib is imported in a worker (:class:`DeferredFigure`):
the plot is built once it is loaded (the Runs dock opens at once), with every record that arrived meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from qtpy.QtWidgets import QVBoxLayout, QWidget

from dinocell_core.runs.records import VALIDATION_PREFIX, loss_keys, score_keys
from napari_dinocell.widgets.deferred_figure import DeferredFigure

if TYPE_CHECKING:
    from matplotlib.lines import Line2D

Axis = Literal["loss", "score"]


@dataclass
class Series:
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def _label(name: str) -> str:
    """Legend text: ``Mito val_seg`` → ``Mito seg``; only a key's own ``val_`` prefix goes (``eval_mean_map`` stays)."""
    return " ".join(part.removeprefix(VALIDATION_PREFIX) for part in name.split(" "))


def series_name(record: Mapping[str, Any], key: str) -> str:
    """A decoder run trains one model per channel: its series are told apart by the record's channel."""
    channel = record.get("channel")
    return f"{channel} {key}" if isinstance(channel, str) and channel else key


class RunPlot(QWidget):
    """Loss and score axes sharing the step axis; :meth:`append` adds records, :meth:`clear` starts over."""

    def __init__(self) -> None:
        super().__init__()
        self.series: dict[str, Series] = {}
        self._lines: dict[str, Line2D] = {}
        self._axis_of: dict[str, Axis] = {}
        self._ax: Any = None
        self._ax_val: Any = None
        self.area = DeferredFigure((4, 2.6), 200, self._built, placeholder="loading the plot…")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.area)

    @property
    def ready(self) -> bool:
        """The canvas is built (matplotlib loaded)."""
        return self.area.ready

    # the matplotlib objects: asked for before the worker has loaded matplotlib, they are built right away
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

    @property
    def ax_val(self) -> Any:
        self.area.build()
        return self._ax_val

    @property
    def lines(self) -> dict[str, Line2D]:
        self.area.build()
        return self._lines

    def _built(self) -> None:
        self._ax = self.area.figure.add_subplot(111)
        self._ax_val = self._ax.twinx()  # scores (0–1) on their own axis, never on the loss scale
        self._style_axes()
        self._draw()

    def clear(self) -> None:
        self.series.clear()
        self._lines.clear()
        self._axis_of.clear()
        if not self.ready:
            return
        self.ax.clear()
        self.ax_val.clear()
        self._style_axes()
        self.canvas.draw_idle()

    def append(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            step = rec.get("step")
            if not isinstance(step, (int, float)):
                continue
            scores = score_keys(rec)
            for key in loss_keys(rec) + scores:
                value = float(rec[key])
                if math.isfinite(value):
                    name = series_name(rec, key)
                    s = self.series.setdefault(name, Series())
                    s.steps.append(float(step))
                    s.values.append(value)
                    self._axis_of.setdefault(name, "score" if key in scores else "loss")
        self._draw()

    def _draw(self) -> None:
        if not self.ready:
            return  # drawn with every series once the canvas is built
        new_on: set[Axis] = set()
        for name, s in self.series.items():
            line = self._lines.get(name)
            axis = self._axis_of.get(name, "loss")
            if line is not None:
                line.set_data(s.steps, s.values)
            else:
                ax = self.ax_val if axis == "score" else self.ax
                style = {"marker": "o", "markersize": 3, "linestyle": "--"} if axis == "score" else {}
                (line,) = ax.plot(s.steps, s.values, label=_label(name), linewidth=1.2, **style)
                self._lines[name] = line
                new_on.add(axis)
            if axis == "loss":  # a line through one point draws nothing: one logged step is shown as a dot
                line.set_marker("o" if len(s.steps) == 1 else "")
                line.set_markersize(4)
        for axis in new_on:
            ax = self.ax_val if axis == "score" else self.ax
            n = len(ax.get_lines())
            ax.legend(loc="center right" if axis == "score" else "upper right", fontsize=6, ncol=1 if n <= 4 else 2,
                      framealpha=0.6, facecolor="#262930", labelcolor="white",
                      title="validation" if axis == "score" else None, title_fontsize=6)
        self.ax_val.set_visible(bool(self.ax_val.get_lines()))
        self.ax.relim()
        self.ax.autoscale_view()
        self.canvas.draw_idle()

    def _style_axes(self) -> None:
        self.ax.set_xlabel("step")
        self.ax.set_ylabel("loss")
        self.ax.grid(alpha=0.3)
        self.ax_val.yaxis.tick_right()  # clear() puts a twin axis's ticks and label back on the left
        self.ax_val.yaxis.set_label_position("right")
        self.ax_val.patch.set_visible(False)
        self.ax_val.set_ylabel("validation (0–1)")
        self.ax_val.set_ylim(0.0, 1.0)
        self.ax_val.set_visible(False)
