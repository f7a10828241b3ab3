"""Segmentation: distance-map decoders, training, tiled inference, bundles, measurements, plate runs, reports.

Main names are importable from here (loaded on first use, so light modules stay light)."""

from dinocell_core import lazy_exports

_EXPORTS = {
    "DecoderConfig": "config",
    "PlateRun": "plate",
    "Segmenter": "inference",
    "average_precision": "metrics",
    "distance_map": "distance",
    "evaluate_pairs": "metrics",
    "labels_from_distance": "distance",
    "list_bundles": "bundle",
    "load_bundle": "bundle",
    "models_report": "report",
    "run_decoder_training": "train",
    "save_bundle": "bundle",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
