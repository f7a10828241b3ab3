"""The feature-set names, in a module light enough for the torch- and numpy-free settings models."""

FEATURE_SETS = ("minimal", "full")  # minimal: the 17 hand-written per object; full: CellProfiler's, by cp-measure
