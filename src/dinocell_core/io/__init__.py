"""Files: atomic writes, folder locks, S3 storage, TIFF reading, safetensors checkpoints, image → model input.

Main names are importable from here (loaded on first use, so light modules stay light)."""

from dinocell_core import lazy_exports

_EXPORTS = {
    "BadImageError": "tiffio",
    "CheckpointError": "checkpoint",
    "CheckpointManager": "checkpoint",
    "FolderLock": "locks",
    "ImageError": "images",
    "atomic_path": "fsutil",
    "atomic_write_bytes": "fsutil",
    "atomic_write_json": "fsutil",
    "atomic_write_text": "fsutil",
    "get_storage": "storage",
    "load_state": "checkpoint",
    "load_tensors": "checkpoint",
    "prepare_image": "images",
    "read_image": "images",
    "read_tiff": "tiffio",
    "resolve_checkpoint": "checkpoint",
    "save_tensors": "checkpoint",
    "write_tiff": "tiffio",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
