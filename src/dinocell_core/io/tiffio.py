"""TIFF reading that keeps 16-bit precision and turns every failure into one clear, catchable error.

An earlier loader read 16-bit TIFFs with OpenCV defaults (8-bit, high byte only) and turned missing files into
black images; here a file is decoded by tifffile (+ imagecodecs for LZW) exactly as stored, and anything wrong —
missing, truncated, corrupt, wrong dtype or shape — raises :class:`BadImageError` naming the path and reason.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import tifffile

from dinocell_core.errors import DinocellError


class BadImageError(DinocellError):
    """An image that cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_tiff(path_or_url: str | os.PathLike[str], storage: Any = None, dtype: Any = None,
              shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Decode the first page of a TIFF as stored (uint16 stays uint16).

    ``storage`` (an :class:`~dinocell_core.io.storage.S3Storage`) serves ``s3://`` URLs; ``dtype`` / ``shape``, when
    given, are required and a mismatch is a :class:`BadImageError`. Singleton leading axes are squeezed.
    """
    path = os.fspath(path_or_url)
    source: Any = path
    if "://" in path:
        if storage is None:
            from dinocell_core.io.storage import get_storage

            storage = get_storage(path)
        try:
            source = io.BytesIO(storage.read_bytes(path))
        except FileNotFoundError:
            raise BadImageError(path, "file not found") from None
        except PermissionError:
            raise BadImageError(path, "permission denied") from None
        except Exception as exc:  # network/service errors from s3fs/aiobotocore
            raise BadImageError(path, f"cannot fetch ({type(exc).__name__}: {exc})") from None
    try:
        with tifffile.TiffFile(source) as tif:
            if not tif.pages:
                raise BadImageError(path, "TIFF has no image pages")
            arr = tif.pages[0].asarray()
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "file not found") from None
    except PermissionError:
        raise BadImageError(path, "permission denied") from None
    except NotADirectoryError:
        raise BadImageError(path, "a folder on the path is missing or is a file (unreadable folder)") from None
    except IsADirectoryError:
        raise BadImageError(path, "is a folder, not a TIFF") from None
    except Exception as exc:  # tifffile/imagecodecs raise many types for corrupt or truncated data
        reason = str(exc).strip() or type(exc).__name__
        raise BadImageError(path, f"cannot decode TIFF ({type(exc).__name__}: {reason})") from None
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise BadImageError(path, f"dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise BadImageError(path, f"shape {tuple(arr.shape)}, expected {tuple(shape)}")
    if arr.ndim != 2:
        raise BadImageError(path, f"expected a 2-D single-channel image, got shape {tuple(arr.shape)}")
    return arr


def write_tiff(path: str | os.PathLike[str], image: np.ndarray, compression: str | None = "lzw") -> None:
    """Write a 2-D image as CPJUMP1 does: little-endian, one strip, LZW without predictor (by default)."""
    rows = image.shape[0]
    tifffile.imwrite(path, image, compression=compression, rowsperstrip=rows, photometric="minisblack",
                     metadata=None)
