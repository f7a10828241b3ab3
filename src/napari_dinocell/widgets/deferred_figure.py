"""A matplotlib figure for a dock, built once its modules are loaded in a worker.

Importing matplotlib (and what a dock draws with, e.g. pandas) takes seconds on a busy machine; done on the GUI
thread it would freeze napari while the dock opens. The dock shows a placeholder until a worker has imported the
modules, then the figure replaces it. Code that asks for the figure earlier gets it built at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from napari_dinocell.jobs.imports import import_modules
from napari_dinocell.jobs.runner import start_job
from napari_dinocell.status import JobStatus

#: what every figure needs
FIGURE_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_qtagg")


class DeferredFigure(QWidget):
    """A placeholder, then a ``FigureCanvasQTAgg`` of ``figsize`` inches; ``on_built`` runs once it exists (the
    owner adds its axes there)."""

    def __init__(self, figsize: tuple[float, float], min_height: int, on_built: Callable[[], None],
                 extra_modules: Sequence[str] = (), placeholder: str = "loading…") -> None:
        super().__init__()
        self._figsize = figsize
        self._min_height = min_height
        self._on_built = on_built
        self._figure: Any = None
        self._canvas: Any = None
        self._placeholder = QLabel(placeholder)
        self._placeholder.setMinimumHeight(min_height)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.addWidget(self._placeholder)
        start_job(import_modules, (*FIGURE_MODULES, *extra_modules), status=JobStatus(), title=placeholder,
                  on_returned=lambda _: self.build(), show_progress=False)

    @property
    def ready(self) -> bool:
        """The canvas is built (its modules loaded)."""
        return self._canvas is not None

    @property
    def figure(self) -> Any:
        self.build()
        return self._figure

    @property
    def canvas(self) -> Any:
        self.build()
        return self._canvas

    def build(self) -> None:
        """Build the figure now (a no-op once built)."""
        if self._canvas is not None:
            return
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        try:
            figure = Figure(figsize=self._figsize, tight_layout=True)
            canvas = FigureCanvasQTAgg(figure)
            canvas.setMinimumHeight(self._min_height)
            self._layout.replaceWidget(self._placeholder, canvas)
            self._placeholder.deleteLater()
        except RuntimeError:  # the dock was closed before the modules were loaded
            return
        self._figure, self._canvas = figure, canvas
        self._on_built()
