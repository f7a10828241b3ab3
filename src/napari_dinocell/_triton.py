"""Load triton's native library so that it cannot crash napari.

torch's CUDA wheels ship triton, and ``import timm`` reaches ``torch._dynamo``, which imports triton. Where napari
renders through Mesa (llvmpipe software GL: Xvfb, VMs, many laptops), Mesa has already loaded its own LLVM, and
triton's LLVM symbols bind to it: the import segfaults and takes the viewer down. Opening ``libtriton`` once with
``RTLD_DEEPBIND`` makes it use its own symbols; the later ``import triton`` gets that already-loaded library.

The library is opened with :mod:`ctypes` (a per-call flag) rather than by changing ``sys.setdlopenflags`` (a
process-wide flag that would leak into extension modules other threads import meanwhile), so this runs in the job
workers, which are the only places torch is imported, and opening a dock costs nothing (``import triton`` on the GUI
thread took 0.36 s of every first dock).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading
from pathlib import Path

_lock = threading.Lock()
_done = False


def isolate_triton() -> None:
    """Open triton's native library with RTLD_DEEPBIND if triton is installed and not loaded yet (no-op elsewhere;
    two workers starting at once wait for the first)."""
    global _done
    with _lock:
        if not _done:
            _open_deepbind()
            _done = True


def _open_deepbind() -> None:
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if deepbind is None or "triton" in sys.modules:
        return
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    for lib in sorted(Path(next(iter(spec.submodule_search_locations)), "_C").glob("libtriton*.so")):
        ctypes.CDLL(str(lib), mode=os.RTLD_NOW | deepbind)
