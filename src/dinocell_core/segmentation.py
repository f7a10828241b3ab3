"""Stable import path for the distance-map pair (other tools import it from here); the code is in
:mod:`dinocell_core.seg.distance`."""

from dinocell_core.seg.distance import compact_labels, distance_map, labels_from_distance

__all__ = ["compact_labels", "distance_map", "labels_from_distance"]
