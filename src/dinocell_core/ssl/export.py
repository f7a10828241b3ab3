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

import torch

from dinocell_core.backbones.loading import teacher_backbone
from dinocell_core.backbones.vit import EXPORT_FORMAT
from dinocell_core.io.checkpoint import save_tensors
from dinocell_core.io.fsutil import atomic_path, atomic_write_text


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
