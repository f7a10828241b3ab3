"""CPJUMP1: the channel vocabulary and modes, the field index, per-channel preprocessing.

Main names are importable from here (loaded on first use, so light modules stay light)."""

from dinocell_core import lazy_exports

_EXPORTS = {
    "ChannelMode": "channels",
    "Field": "index",
    "Preprocessor": "preprocess",
    "channel_number": "channels",
    "file_name": "index",
    "index_fields": "index",
    "load_index": "index",
    "parse_file_name": "index",
    "read_field": "preprocess",
    "well_name": "index",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
