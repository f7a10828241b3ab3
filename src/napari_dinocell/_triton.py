"""Load triton so that it cannot crash napari.

torch's CUDA wheels ship triton, and ``import timm`` reaches ``torch._dynamo``, which imports triton. Where napari
renders through Mesa (llvmpipe software GL: Xvfb, VMs, many laptops), Mesa has already loaded its own LLVM, and
triton's LLVM symbols bind to it: the import segfaults and takes the viewer down. Loading triton once with
``RTLD_DEEPBIND`` makes it use its own symbols; later ``import triton`` calls get the loaded module.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def isolate_triton() -> None:
    """Import triton with RTLD_DEEPBIND if it is installed and not loaded yet (no-op elsewhere)."""
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if deepbind is None or "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import triton  # noqa: F401
    except ImportError:
        pass  # a broken triton install is torch's concern: torch then treats triton as missing
    finally:
        sys.setdlopenflags(flags)
