"""The Segment dock's result layers, tied to the data they came from.

Each source layer has a data generation that its ``data`` event bumps (the JUMP browser switching site, a user
edit); a result computed from an older generation is dropped, and the result layers of a source whose data changed
are marked stale (renamed, hidden) and lose their cached distance map, so the sliders never re-threshold the
previous field onto the new one. New layers are placed one per event-loop turn (:class:`UiSteps`), and a hand edit
of a labels layer is recorded so a re-threshold does not silently replace it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import QObject, Signal

from napari_dinocell.jobs.segment import SegmentResult
from napari_dinocell.layer_meta import SOURCE_LAYER
from napari_dinocell.layers import STALE
from napari_dinocell.ui_steps import UiSteps

if TYPE_CHECKING:
    import napari

    from dinocell_core.seg.inference import Segmenter


@dataclass
class Output:
    """The results of one source layer."""

    source: weakref.ref[Image]
    generation: int
    segmenter: Segmenter
    distance: np.ndarray | None
    channel: int | None
    layers: dict[str, Layer] = field(default_factory=dict)  # "labels" / "distance" → layer
    edited: bool = False

    @property
    def stale(self) -> bool:
        return self.distance is None


class ResultLayers(QObject):
    """Outputs by source layer; ``went_stale(message)`` when a source's data changes under its results."""

    went_stale = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer, parent: QObject) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.outlines = False  # labels drawn as outlines (read when a layer is placed)
        self.with_distance = False  # distance maps shown next to the labels
        self._outputs: dict[int, Output] = {}  # id(source layer) → its results
        # id(source layer) → (the layer, its data generation); the weakref tells a recycled id from the layer
        self._generation: dict[int, tuple[weakref.ref[Image], int]] = {}
        self._ui = UiSteps(self)

    @property
    def pending(self) -> bool:
        """Result layers still being placed in the viewer (one per event-loop turn)."""
        return self._ui.pending

    def get(self, source: Image | None) -> Output | None:
        out = self._outputs.get(id(source)) if source is not None else None
        return out if out is not None and out.source() is source else None

    # ------------------------------------------------------------------------- data generations
    def generation(self, layer: Image) -> int:
        """The layer's data generation; starts watching its ``data`` event on first use."""
        key = id(layer)
        entry = self._generation.get(key)
        if entry is None or entry[0]() is not layer:
            entry = self._generation[key] = (weakref.ref(layer), 0)
            layer.events.data.connect(self._source_data_changed)
        return entry[1]

    def _source_data_changed(self, event: Any) -> None:
        layer = event.source
        self._generation[id(layer)] = (weakref.ref(layer), self.generation(layer) + 1)
        out = self.get(layer)
        if out is not None and not out.stale:
            out.distance = None
            for result in out.layers.values():
                if result in self.viewer.layers:
                    if not result.name.endswith(STALE):
                        result.name = result.name + STALE
                    result.visible = False
            self.went_stale.emit(f"results of {layer.name!r} are stale (its image changed): press Segment")

    # ------------------------------------------------------------------------- placing results
    def add_results(self, results: list[SegmentResult]) -> tuple[list[SegmentResult], list[str]]:
        """Queue the results whose source still shows the data they came from; returns them and the names of the
        sources whose result was dropped (their image changed while segmenting)."""
        kept: list[SegmentResult] = []
        dropped: list[str] = []
        for res in results:
            source = res.task.layer_ref()
            if source is None or source not in self.viewer.layers:
                continue  # the source layer was deleted meanwhile: its result has nowhere to go
            if self.generation(source) != res.task.generation:
                dropped.append(source.name)
                continue
            out = self.get(source)
            if out is None:
                out = self._outputs[id(source)] = Output(res.task.layer_ref, res.task.generation, res.segmenter,
                                                         res.distance, res.task.channel)
            out.generation, out.segmenter, out.distance, out.channel = (
                res.task.generation, res.segmenter, res.distance, res.task.channel)
            out.edited = False
            self._ui.push(partial(self._place, out, "labels", res.labels, res.labels_layer))
            if self.with_distance:
                self._ui.push(partial(self._place, out, "distance", res.distance))
            kept.append(res)
        return kept, dropped

    def _place(self, out: Output, key: str, data: np.ndarray, prebuilt: Labels | None = None) -> None:
        """Update a previous result layer in place (re-run), or add one aligned with its source.

        A new layer is added hidden and shown on a later event-loop turn (a Labels layer's editing overlays attached
        in between, :meth:`UiSteps.add_layer`), so napari's layer set-up and the first
        texture upload are short freezes instead of one long one. A layer built in the worker is only named and
        placed here. (Adding the layer when Segment is pressed, to overlap napari's set-up with the network, was
        measured slower: the two contend for the GIL, 0.4 s freezes at the click and no shorter wall time.)
        """
        source = out.source()
        if source is None or source not in self.viewer.layers:
            return
        name = f"{source.name} {'labels' if key == 'labels' else 'distance'}"
        layer = out.layers.get(key)
        if layer is not None and layer in self.viewer.layers:
            layer.data = data
            layer.name = name  # drops a stale mark
            layer.visible = True
            return
        kwargs = {"name": name, "scale": source.scale[-2:], "translate": source.translate[-2:],
                  "metadata": {SOURCE_LAYER: source.name}, "visible": False}
        if prebuilt is not None:
            layer = prebuilt
            for attr, value in kwargs.items():
                setattr(layer, attr, value)
            if self.outlines:  # the setter refreshes the layer: not for nothing on the GUI thread
                layer.contour = 2
            self._ui.add_layer(self.viewer, layer)
            layer.events.paint.connect(self._labels_edited)
        else:
            layer = self.viewer.add_image(data, colormap="viridis", blending="additive", **kwargs)
            self._ui.show_next(layer)
        out.layers[key] = layer

    def _labels_edited(self, event: Any) -> None:
        """A hand edit (paint, fill, erase) of a result: a re-threshold must not silently replace it."""
        for out in self._outputs.values():
            if out.layers.get("labels") is event.source:
                out.edited = True

    def set_labels(self, source: Image | None, generation: int, labels: np.ndarray) -> None:
        """New labels (a re-threshold) for ``source``'s result, unless its image changed since ``generation``."""
        out = self.get(source)
        if out is None or out.stale or out.generation != generation:
            return
        layer = out.layers.get("labels")
        if layer is not None and layer in self.viewer.layers:
            layer.data = labels
            out.edited = False

    # ------------------------------------------------------------------------- display options
    def show_distance(self, checked: bool) -> None:
        """Show the cached distance maps (no re-run) or hide them."""
        self.with_distance = checked
        for out in self._outputs.values():
            layer = out.layers.get("distance")
            if checked and out.distance is not None:
                if layer is not None and layer in self.viewer.layers:
                    layer.visible = True
                else:
                    self._ui.push(partial(self._place, out, "distance", out.distance))
            elif layer is not None and layer in self.viewer.layers:
                layer.visible = False

    def set_outlines(self, checked: bool) -> None:
        self.outlines = checked
        for out in self._outputs.values():
            layer = out.layers.get("labels")
            if layer is not None and layer in self.viewer.layers:
                layer.contour = 2 if checked else 0
