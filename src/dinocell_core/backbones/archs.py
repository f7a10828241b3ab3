"""The architectures DINOCell builds, and the checks a config, checkpoint or bundle must pass before one is built.

Torch-free (config validation imports it). A bundle is a file from someone else: its ``backbone.kwargs`` used to go
straight into ``timm.create_model``, so a ``checkpoint_path`` entry made timm ``torch.load`` any file it named and
a 2 KB bundle could declare a model needing hundreds of GB. Here only known archs, bounded sizes and a short list
of plain numeric keyword arguments pass, and the memory a model will need is compared with what is free first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dinocell_core.errors import DinocellError


class ArchitectureError(DinocellError, ValueError):
    """An architecture field is unknown, out of bounds, or would not fit in memory (the message names the source)."""


@dataclass(frozen=True)
class ArchSpec:
    timm_name: str
    embed_dim: int
    depth: int
    num_heads: int
    overrides: tuple[tuple[str, Any], ...] = ()  # timm arguments that make the preset (tiny test arch)

    def timm_overrides(self) -> dict[str, Any]:
        return dict(self.overrides)


_TEST = (("embed_dim", 192), ("depth", 4), ("num_heads", 3))
#: arch name → preset. ``vit_test`` is a tiny model for CPU tests (head dim 64 as the real ones).
ARCH_SPECS: dict[str, ArchSpec] = {
    "vit_test": ArchSpec("vit_small_patch16_dinov3_qkvb", 192, 4, 3, _TEST),
    "vit_small": ArchSpec("vit_small_patch16_dinov3_qkvb", 384, 12, 6),
    "vit_base": ArchSpec("vit_base_patch16_dinov3_qkvb", 768, 12, 12),
    "vit_large": ArchSpec("vit_large_patch16_dinov3_qkvb", 1024, 24, 16),
}
PATCH_SIZES = (8, 16)  # powers of two: the decoder upsamples ×2 per stage

#: the only backbone keyword arguments accepted (config ``model.kwargs`` / bundle ``backbone.kwargs``): plain
#: numbers with bounds. Anything else — a path (``checkpoint_path``, ``pretrained_cfg_overlay``), a size — is refused.
BACKBONE_KWARGS = ("depth", "drop_path_rate", "rope_rescale_coords", "init_values")
DECODER_MAX_WIDTH = 1024
DECODER_MAX_LAYERS = 8


def _number(value: Any, key: str, source: str, lo: float, hi: float, integer: bool = False) -> float:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ArchitectureError(f"{source}: {key} must be {kind} in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def check_backbone(arch: Any, patch_size: Any, kwargs: Any, source: str, key: str = "backbone") -> ArchSpec:
    """Refuse unknown archs, patch sizes and keyword arguments before anything is built; returns the preset."""
    if not isinstance(arch, str) or arch not in ARCH_SPECS:
        raise ArchitectureError(f"{source}: unknown backbone arch {arch!r} ({key}.arch); expected one of "
                                f"{sorted(ARCH_SPECS)}")
    if isinstance(patch_size, bool) or patch_size not in PATCH_SIZES:
        raise ArchitectureError(f"{source}: {key}.patch_size {patch_size!r} is not supported; expected one of "
                                f"{list(PATCH_SIZES)}")
    spec = ARCH_SPECS[arch]
    if kwargs is None:
        return spec
    if not isinstance(kwargs, Mapping):
        raise ArchitectureError(f"{source}: {key}.kwargs must be a mapping, got {type(kwargs).__name__}")
    for name, value in kwargs.items():
        where = f"{key}.kwargs.{name}"
        if name not in BACKBONE_KWARGS:
            raise ArchitectureError(f"{source}: {where} is not an accepted backbone argument (accepted: "
                                    f"{', '.join(BACKBONE_KWARGS)}); remove it")
        if name == "depth":
            _number(value, where, source, 1, spec.depth, integer=True)
        elif name == "drop_path_rate":
            _number(value, where, source, 0.0, 0.99)
        elif name == "init_values":  # LayerScale init
            _number(value, where, source, 0.0, 10.0)
        elif value is not None:
            _number(value, where, source, 1.0, 16.0)
    return spec


def backbone_params(spec: ArchSpec, patch_size: int, depth: int | None = None) -> int:
    """Parameter count of a DINOv3 ViT preset (blocks 12·D² + patch kernel), from its shape alone."""
    d = spec.embed_dim
    blocks = (depth or spec.depth) * (12 * d * d + 13 * d)
    return blocks + 3 * patch_size * patch_size * d + 8 * d


def check_decoder(decoder: Any, depth: int, source: str) -> None:
    """A bundle's decoder fields: block indices inside the backbone, widths bounded."""
    if not isinstance(decoder, Mapping):
        raise ArchitectureError(f"{source}: decoder must be a mapping, got {type(decoder).__name__}")
    layers = decoder.get("layers")
    if (not isinstance(layers, list) or not 1 <= len(layers) <= DECODER_MAX_LAYERS
            or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth for i in layers)):
        raise ArchitectureError(f"{source}: decoder.layers must list 1–{DECODER_MAX_LAYERS} block indices in "
                                f"[0, {depth - 1}], got {layers!r}")
    for k in ("width", "stem_width"):
        _number(decoder.get(k), f"decoder.{k}", source, 1, DECODER_MAX_WIDTH, integer=True)


def decoder_params(decoder: Mapping[str, Any], embed_dim: int) -> int:
    """An upper bound of the decoder's parameters (projections + 3×3 convs at its widths)."""
    w, s, n = int(decoder["width"]), int(decoder["stem_width"]), len(decoder["layers"])
    return n * (embed_dim * w + 9 * w * w) + 2 * 9 * (w + 2 * s) ** 2 + 64 * (w + s)


def available_memory_bytes() -> int | None:
    """Free RAM (``MemAvailable``) on Linux, physical free pages elsewhere; None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(n_params: int, source: str, available: int | None = None, bytes_per_param: int = 8) -> None:
    """Refuse a model whose float32 weights (+ a copy while loading) would not fit in free memory."""
    need = n_params * bytes_per_param
    free = available_memory_bytes() if available is None else available
    if free is not None and need > free:
        raise ArchitectureError(f"{source}: this model needs about {need / 1e9:.1f} GB to load but only "
                                f"{free / 1e9:.1f} GB of memory is free; close other programs or use a smaller model")
