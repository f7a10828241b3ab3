"""Per-object measurements with CellProfiler's names: the ``minimal`` 17 (hand-written, no extra package) and the
``full`` set (CellProfiler's own measurements by cp-measure, the ``measure`` extra).

Main names are importable from here (loaded on first use, so light modules stay light)."""

from dinocell_core import lazy_exports

_EXPORTS = {
    "FEATURE_SETS": "names",
    "MeasureError": "cpmeasure",
    "check_features": "cells",
    "measure_cells": "cells",
    "measure_full": "cpmeasure",
    "measure_objects": "minimal",
    "table_columns": "cells",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
