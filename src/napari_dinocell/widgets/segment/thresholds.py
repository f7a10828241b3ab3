"""The Segment dock's thresholds: the distance map's peak and fill thresholds and the smallest object kept.

They are the thresholding step's settings only: a change re-thresholds the cached distance map, never runs the
network. They start from the chosen model's recorded values, so the dock gives the CLI's labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFormLayout, QSpinBox, QWidget
from superqt import QLabeledDoubleSlider

#: before a model is chosen (a model's own values replace them)
DEFAULTS = {"peak": 0.47, "fill": 0.09, "min_size": 0}


class ThresholdValues(NamedTuple):
    peak: float
    fill: float
    min_size: int


class Thresholds(QWidget):
    """Peak / fill sliders and a min-size box; ``changed`` fires on each user change, once per :meth:`set_values`."""

    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.peak = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.fill = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        for slider, low in ((self.peak, 0.01), (self.fill, 0.0)):
            slider.setRange(low, 1.0)
            slider.setDecimals(2)
            slider.valueChanged.connect(lambda _: self.changed.emit())
        self.peak.valueChanged.connect(lambda _: self._keep_fill_below_peak(moved="peak"))
        self.fill.valueChanged.connect(lambda _: self._keep_fill_below_peak(moved="fill"))
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 1_000_000)
        self.min_size.setSuffix(" px")
        self.min_size.setToolTip("objects smaller than this are dropped (the bundle's min_size by default)")
        self.min_size.valueChanged.connect(lambda _: self.changed.emit())
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Peak threshold", self.peak)
        form.addRow("Fill threshold", self.fill)
        form.addRow("Min size", self.min_size)
        self.set_values(DEFAULTS)

    def values(self) -> ThresholdValues:
        return ThresholdValues(self.peak.value(), self.fill.value(), self.min_size.value())

    def set_values(self, th: Mapping[str, Any]) -> None:
        """Set all three (a model's recorded ``thresholds``; missing keys keep peak/fill, min size 0) with one
        ``changed`` at the end, not one re-threshold per control."""
        controls = (self.peak, self.fill, self.min_size)
        for w in controls:
            w.blockSignals(True)
        self.peak.setValue(float(th.get("peak", self.peak.value())))
        self.fill.setValue(float(th.get("fill", self.fill.value())))
        self.min_size.setValue(int(th.get("min_size", 0)))
        for w in controls:
            w.blockSignals(False)
        self.changed.emit()

    def _keep_fill_below_peak(self, moved: str) -> None:
        """The fill threshold must stay below the peak threshold (labels_from_distance's rule): the slider not
        being moved gives way."""
        if self.fill.value() >= self.peak.value():
            if moved == "peak":
                self.fill.setValue(max(0.0, round(self.peak.value() - 0.01, 2)))
            else:
                self.peak.setValue(min(1.0, round(self.fill.value() + 0.01, 2)))
