"""Which backbone is in a file, answered in one place.

``weights`` accepted by :func:`load_backbone`:
- the official raw backbone ``.pth`` (read with ``torch.load(weights_only=True)``; never unpickles code), or an
  official eval snapshot ``{"teacher": {"backbone.*": ...}}``;
- a DINOCell pretraining run directory or one of its ``checkpoints/step_*.safetensors`` (→ teacher backbone);
- a ``dinocell-core export-backbone`` ``.safetensors`` (official key layout + metadata).

:func:`backbone_from_weights` also reads the architecture from the file when the caller does not know it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dinocell_core.backbones.vit import (
    EXPORT_FORMAT,
    PRETRAIN_FORMAT,
    DinoBackbone,
    WeightsError,
)
from dinocell_core.io.checkpoint import (
    CheckpointError,
    load_state,
    load_tensors,
    resolve_checkpoint,
)

log = logging.getLogger(__name__)


def load_backbone(arch: str = "vit_small", patch_size: int = 8, weights: str | os.PathLike[str] | None = None,
                  **kwargs: Any) -> DinoBackbone:
    """Build a DINOv3 backbone (``arch``: vit_small | vit_base | vit_large | vit_test) and load ``weights``.

    ``kwargs`` go to timm (e.g. ``drop_path_rate=0.1``, ``rope_rescale_coords=2``, or ``depth=2`` for tests)."""
    model = DinoBackbone(arch, patch_size, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: DinoBackbone, weights: str | os.PathLike[str]) -> None:
    p = Path(weights).expanduser()
    if p.is_dir():
        try:
            p = resolve_checkpoint(p)
        except CheckpointError as exc:
            raise WeightsError(str(exc)) from None
    if not p.is_file():
        raise WeightsError(f"backbone weights {p} do not exist")
    if p.suffix == ".safetensors":
        _load_safetensors(model, p)
    elif p.suffix in (".pth", ".pt"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad/unsafe pickles
            raise WeightsError(f"{p}: cannot read as a tensors-only PyTorch file "
                               f"({type(exc).__name__}: {exc})") from None
        if isinstance(obj, Mapping) and "teacher" in obj:
            obj = {k[len("backbone."):]: v for k, v in obj["teacher"].items() if k.startswith("backbone.")}
        if not isinstance(obj, Mapping):
            raise WeightsError(f"{p}: expected a state dict, found {type(obj).__name__}")
        model.load_official_state_dict(obj, source=str(p))
    else:
        raise WeightsError(f"{p}: unknown weights file type (expected .pth, .safetensors or a run directory)")
    log.info("backbone %s/p%d weights loaded from %s", model.arch, model.patch_size, p)


def _load_safetensors(model: DinoBackbone, p: Path) -> None:
    try:
        tensors, meta = load_tensors(p)
    except CheckpointError as exc:
        raise WeightsError(str(exc)) from None
    fmt = meta.get("format")
    if fmt == EXPORT_FORMAT:
        _check_meta(model, meta, p)
        model.load_official_state_dict(tensors, source=str(p))
        return
    state = load_state(p)
    if state.get("kind") != PRETRAIN_FORMAT:
        raise WeightsError(f"{p}: not a DINOCell pretraining checkpoint or backbone export (format {fmt!r})")
    _check_meta(model, state["backbone_meta"], p)
    try:
        model.load_state_dict(state["teacher"]["backbone"], strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{p}: teacher backbone does not fit arch {model.arch!r}: {exc}") from None


def _check_meta(model: DinoBackbone, meta: Mapping[str, Any], p: Path) -> None:
    arch = meta.get("arch")
    if arch is not None and arch != model.arch:
        raise WeightsError(f"{p}: weights are for arch {arch!r}, requested {model.arch!r}")


def teacher_backbone(source: str | os.PathLike[str]) -> tuple[DinoBackbone, dict[str, Any]]:
    """The EMA teacher of a pretraining checkpoint (or run folder's newest one) and where it came from."""
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


def backbone_from_weights(weights: str | None, arch: str | None = None, patch_size: int = 8) -> DinoBackbone:
    """The backbone to look at. With ``arch`` None, architecture, patch size and build arguments come from the
    weights themselves (pretraining run folders, checkpoints and exports record them), so a user never has to
    know that a test run used ``depth=2``; official ``.pth`` files record nothing and need ``arch``."""
    if arch is not None:
        return load_backbone(arch, patch_size=patch_size, weights=weights)
    if not weights:
        raise WeightsError("random init needs an architecture: choose one, or choose a checkpoint")
    path = resolve_checkpoint(Path(weights).expanduser())
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: official .pth weights do not record their architecture; choose it")
    try:
        _, meta = load_tensors(path)
    except CheckpointError as exc:
        raise WeightsError(str(exc)) from None
    if meta.get("format") == EXPORT_FORMAT:
        return load_backbone(meta["arch"], patch_size=int(meta["patch_size"]), weights=path,
                             **meta.get("kwargs", {}))
    return teacher_backbone(path)[0]
