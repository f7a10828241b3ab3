"""Labels for JUMP fields: CellProfiler's nuclei/cells recipe, the labels store, QC, imports.

Main names are importable from here (loaded on first use, so light modules stay light)."""

from dinocell_core import lazy_exports

_EXPORTS = {
    "CellProfilerParams": "settings",
    "LabelSettings": "settings",
    "LabelStore": "store",
    "LabelsError": "store",
    "label_tree": "run",
    "segment_field": "cellprofiler",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
