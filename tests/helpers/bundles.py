"""Tiny decoder models and bundles built in a test (no training)."""

from __future__ import annotations

from pathlib import Path

import torch

from dinocell_core.backbones.loading import load_backbone
from dinocell_core.io.checkpoint import save_tensors
from dinocell_core.seg.bundle import (
    FORMAT,
    save_bundle,
    unique_state,
)
from dinocell_core.seg.decoder import DistanceDecoder


def tiny_dna_bundle(folder: Path, name: str) -> Path:
    """An untrained DNA bundle of the tiny test ViT, ``folder/<name>.safetensors`` (seed 0)."""
    torch.manual_seed(0)
    model = DistanceDecoder(load_backbone("vit_test", patch_size=8), width=32, stem_width=8).eval()
    meta = {"name": name, "channel": "DNA", "backbone": {"arch": "vit_test", "patch_size": 8, "kwargs": {}},
            "decoder": {"layers": model.layers, "width": 32, "stem_width": 8},
            "preprocessing": {"low": 1.0, "high": 99.8}, "thresholds": {"peak": 0.47, "fill": 0.09, "min_size": 0},
            "tile_size": 64, "overlap": 16}
    return save_bundle(folder / f"{name}.safetensors", model, meta)


def tiny_model(seed: int = 0) -> DistanceDecoder:
    torch.manual_seed(seed)
    return DistanceDecoder(load_backbone("vit_test", patch_size=8), width=32, stem_width=8).eval()


def meta(model: DistanceDecoder, channel: str = "DNA", name: str = "m") -> dict:
    return {"name": name, "channel": channel, "modality": "fluorescence",
            "backbone": {"arch": "vit_test", "patch_size": 8, "source": None, "kwargs": {}},
            "decoder": {"layers": model.layers, "width": 32, "stem_width": 8},
            "preprocessing": {"normalisation": "percentile", "low": 1.0, "high": 99.8, "channel_index": None},
            "thresholds": {"peak": 0.47, "fill": 0.09, "min_size": 0}, "tile_size": 64, "overlap": 16,
            "training_data": {"images": 3}, "validation_metrics": {"ap@0.50": 0.9}}


def crafted_bundle(path: Path, changes: dict | None = None, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A bundle of :func:`tiny_model` whose metadata (``changes``: dotted key → value) or tensors someone edited
    — with a valid digest, since anyone can recompute one."""
    model = tiny_model()
    state, aliases = unique_state(model.state_dict())
    m = {**meta(model), "format": FORMAT, "aliases": aliases}
    for dotted, value in (changes or {}).items():
        node = m
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node[k]
        node[leaf] = value
    save_tensors(path, tensors if tensors is not None else state, m)
    return path
