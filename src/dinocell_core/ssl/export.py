"""Export the teacher backbone of a pretraining run in the official DINOv3 key layout.

Three files side by side: ``NAME.pth`` (a plain dict of tensors: ``torch.load(weights_only=True)`` and the
official model's ``load_state_dict`` accept it — build the official model with the same patch size),
``NAME.safetensors`` (same tensors + verified DINOCell metadata; what users should exchange) and ``NAME.json``
(the metadata, human-readable).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dinocell_core.backbone import EXPORT_FORMAT, PRETRAIN_FORMAT, DinoBackbone, WeightsError, load_backbone
from dinocell_core.io.checkpoint import load_state, resolve_checkpoint, save_tensors
from dinocell_core.io.fsutil import atomic_path, atomic_write_text


def teacher_backbone(source: str | os.PathLike[str]) -> tuple[DinoBackbone, dict[str, Any]]:
    ckpt = resolve_checkpoint(source)
    state = load_state(ckpt)
    if state.get("kind") != PRETRAIN_FORMAT:
        raise WeightsError(f"{ckpt}: not a DINOCell pretraining checkpoint")
    meta = state["backbone_meta"]
    backbone = load_backbone(meta["arch"], patch_size=int(meta["patch_size"]), **meta.get("kwargs", {}))
    backbone.load_state_dict(state["teacher"]["backbone"], strict=True)
    info = {"source_checkpoint": str(ckpt.resolve()), "step": int(state["step"]),
            "config_name": state.get("config", {}).get("name")}
    return backbone, info


def export_backbone(source: str | os.PathLike[str], output: str | os.PathLike[str]) -> list[Path]:
    """Write NAME.pth, NAME.safetensors and NAME.json for ``output`` (any of those suffixes, or none)."""
    out = Path(output)
    stem = out.with_suffix("") if out.suffix in (".pth", ".safetensors", ".json") else out
    backbone, info = teacher_backbone(source)
    tensors = backbone.to_official_state_dict()
    meta = {"format": EXPORT_FORMAT, "layout": "dinov3-official", **backbone.metadata(), **info,
            "note": "teacher backbone; weights derived from DINOv3 are under the DINOv3 License"}
    stem.parent.mkdir(parents=True, exist_ok=True)
    pth, st, js = stem.with_suffix(".pth"), stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    with atomic_path(pth) as tmp:
        torch.save(tensors, tmp)
    save_tensors(st, tensors, meta)
    atomic_write_text(js, json.dumps(meta, indent=2) + "\n")
    return [pth, st, js]
