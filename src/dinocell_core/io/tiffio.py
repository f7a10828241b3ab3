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
            page = tif.pages[0]
            _check_declared(path, tuple(page.shape), shape)  # from the header, before anything is decoded
            arr = page.asarray()
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


def tiff_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a local TIFF cannot be decoded in full, from its header alone (None when it can): a file cut short by a
    kill or a full disk keeps its header, so its image data runs past the end of the file. Costs a header read."""
    try:
        size = os.path.getsize(path)
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                return "TIFF has no image pages"
            page = tif.pages[0]
            end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # tifffile raises many types for a cut or corrupt header
        return f"cannot read the TIFF header ({type(exc).__name__}: {str(exc).strip() or 'no detail'})"
    if end == 0 or end > size:
        return f"truncated ({size:,} of {end:,} bytes)"
    return None


#: the largest page read_tiff decodes (16384² pixels): an 800 KB compressed file can declare gigabytes
MAX_PIXELS = 2**28


def _check_declared(path: str, declared: tuple[int, ...], shape: tuple[int, ...] | None) -> None:
    squeezed = declared
    while len(squeezed) > 2 and squeezed[0] == 1:
        squeezed = squeezed[1:]
    if shape is not None and tuple(squeezed) != tuple(shape):
        raise BadImageError(path, f"shape {tuple(squeezed)}, expected {tuple(shape)}")
    n = int(np.prod(declared, dtype=np.float64))
    if n > MAX_PIXELS:
        raise BadImageError(path, f"declares {n:,} pixels (shape {declared}), more than the {MAX_PIXELS:,} DINOCell "
                                  "decodes (a decompression bomb or a mistake)")


def odd_shape(shapes: dict[str, tuple[int, ...]]) -> BadImageError | None:
    """The error for the file whose shape differs from the others of one field (majority wins), or None.

    The first channel read used to define the shape, so a wrong-size ch1 was blamed on the good ch2."""
    from collections import Counter

    counts = Counter(shapes.values())
    if len(counts) <= 1:
        return None
    (common, n_common), *_ = counts.most_common()
    odd = [p for p, s in shapes.items() if s != common]
    if n_common == 1:  # no majority (two files, two shapes): name both
        items = list(shapes.items())
        return BadImageError(items[0][0], f"shape {items[0][1]} differs from {items[1][1]} of {items[1][0]}")
    return BadImageError(odd[0], f"shape {shapes[odd[0]]}, but the field's other {n_common} channels are {common}")


def write_tiff(path: str | os.PathLike[str], image: np.ndarray, compression: str | None = "lzw") -> None:
    """Write a 2-D image as CPJUMP1 does: little-endian, one strip, LZW without predictor (by default)."""
    rows = image.shape[0]
    tifffile.imwrite(path, image, compression=compression, rowsperstrip=rows, photometric="minisblack",
                     metadata=None)
