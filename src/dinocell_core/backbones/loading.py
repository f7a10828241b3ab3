"""Which backbone is in a file, answered in one place.

``weights`` accepted by :func:`load_backbone`:
- the official raw backbone ``.pth`` (read with ``torch.load(weights_only=True)``; never unpickles code), or an
  official eval snapshot ``{"teacher": {"backbone.*": ...}}``;
- a DINOCell pretraining run directory or one of its ``checkpoints/step_*.safetensors`` (→ teacher backbone);
- a ``dinocell-core export-backbone`` ``.safetensors`` (official key layout + metadata).

Every loader here builds the backbone with the input planes its weights take (``in_chans`` 3, or 5 for a
``fluorescent_stack`` backbone; exports record it too), so decoders, features and profiles never build the wrong one.

:func:`backbone_from_weights` also reads the architecture from the file when the caller does not know it.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
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
                  in_chans: int | None = None, **kwargs: Any) -> DinoBackbone:
    """Build a DINOv3 backbone (``arch``: vit_small | vit_base | vit_large | vit_test) and load ``weights``.

    ``in_chans``: input planes, 3 (gray/RGB) or 5 (fluorescent stack); None = as many as the weights take (3
    without weights). 3-plane weights grow into a 5-plane backbone that starts as their fluorescent-mean model
    (:func:`dinocell_core.backbones.vit.expand_patch_embed`). ``kwargs`` go to timm (e.g. ``drop_path_rate=0.1``,
    ``rope_rescale_coords=2``, or ``depth=2`` for tests)."""
    found = read_weights(weights) if weights is not None else None
    planes = in_chans if in_chans is not None else (found.in_chans if found is not None else 3)
    model = DinoBackbone(arch, patch_size, in_chans=planes, **kwargs)
    if found is not None:
        found.load_into(model)
        log.info("backbone %s/p%d (%d planes) weights loaded from %s", model.arch, model.patch_size, planes,
                 found.path)
    return model


@dataclass
class BackboneWeights:
    """The tensors of a weights file, read once: ``official`` key layout (release .pth, eval snapshot, export) or
    this project's own backbone state dict (training checkpoints); ``meta`` is what the file records about them."""

    path: Path
    tensors: Mapping[str, torch.Tensor]
    official: bool
    meta: Mapping[str, Any]

    @property
    def in_chans(self) -> int:
        """Input planes of the stored patch embedding (exports also record it; the tensor is the ground truth)."""
        key = "patch_embed.proj.weight" if self.official else "vit.patch_embed.proj.weight"
        w = self.tensors.get(key)
        if w is None or w.ndim != 4:
            raise WeightsError(f"{self.path}: no patch embedding ({key}) in the backbone weights")
        return int(w.shape[1])

    def load_into(self, model: DinoBackbone) -> None:
        arch = self.meta.get("arch")
        if arch is not None and arch != model.arch:
            raise WeightsError(f"{self.path}: weights are for arch {arch!r}, requested {model.arch!r}")
        if self.official:
            model.load_official_state_dict(self.tensors, source=str(self.path))
        else:
            model.load_backbone_state(self.tensors, source=str(self.path))


def read_weights(weights: str | os.PathLike[str]) -> BackboneWeights:
    """Read a backbone from any accepted file (module docstring); a run directory means its newest checkpoint."""
    p = Path(weights).expanduser()
    if p.is_dir():
        try:
            p = resolve_checkpoint(p)
        except CheckpointError as exc:
            raise WeightsError(str(exc)) from None
    if not p.is_file():
        raise WeightsError(f"backbone weights {p} do not exist")
    if p.suffix == ".safetensors":
        return _read_safetensors(p)
    if p.suffix in (".pth", ".pt"):
        check_torch_archive(p)
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad/unsafe pickles
            raise WeightsError(f"{p}: cannot read as a tensors-only PyTorch file "
                               f"({type(exc).__name__}: {exc})") from None
        if isinstance(obj, Mapping) and "teacher" in obj:
            obj = {k[len("backbone."):]: v for k, v in obj["teacher"].items() if k.startswith("backbone.")}
        if not isinstance(obj, Mapping):
            raise WeightsError(f"{p}: expected a state dict, found {type(obj).__name__}")
        return BackboneWeights(p, obj, official=True, meta={})
    raise WeightsError(f"{p}: unknown weights file type (expected .pth, .safetensors or a run directory)")


def check_torch_archive(p: Path) -> None:
    """Refuse a ``.pth`` that would make ``torch.load`` allocate more than the file holds, before it runs: torch
    reads each record of the zip in full, so a 4 MB file with one deflated record of zeros declaring a 2³⁰-element
    tensor took 4 GiB. ``torch.save`` stores records uncompressed, so their sizes add up to less than the file;
    legacy (pre-1.6, non-zip) files allocate what their pickle declares and are not read."""
    size = p.stat().st_size
    try:
        with zipfile.ZipFile(p) as zf:
            records = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise WeightsError(f"{p}: not a PyTorch zip archive ({exc}); legacy torch.save files (PyTorch < 1.6) are not "
                           "read — save the weights again with a current PyTorch") from None
    declared = sum(r.file_size for r in records)
    packed = sum(r.compress_type != zipfile.ZIP_STORED for r in records)
    if packed or declared > size:
        raise WeightsError(f"{p}: its records declare {declared:,} bytes in a {size:,}-byte file ({packed} "
                           "compressed; torch.save compresses none): refused before reading")


def _read_safetensors(p: Path) -> BackboneWeights:
    try:
        tensors, meta = load_tensors(p)
    except CheckpointError as exc:
        raise WeightsError(str(exc)) from None
    fmt = meta.get("format")
    if fmt == EXPORT_FORMAT:
        return BackboneWeights(p, tensors, official=True, meta=meta)
    state = load_state(p)
    if state.get("kind") != PRETRAIN_FORMAT:
        raise WeightsError(f"{p}: not a DINOCell pretraining checkpoint or backbone export (format {fmt!r})")
    return BackboneWeights(p, state["teacher"]["backbone"], official=False, meta=state["backbone_meta"])


def teacher_backbone(source: str | os.PathLike[str]) -> tuple[DinoBackbone, dict[str, Any]]:
    """The EMA teacher of a pretraining checkpoint (or run folder's newest one) and where it came from."""
    ckpt = resolve_checkpoint(source)
    state = load_state(ckpt)
    if state.get("kind") != PRETRAIN_FORMAT:
        raise WeightsError(f"{ckpt}: not a DINOCell pretraining checkpoint")
    meta = state["backbone_meta"]
    found = BackboneWeights(ckpt, state["teacher"]["backbone"], official=False, meta=meta)
    backbone = load_backbone(meta["arch"], patch_size=int(meta["patch_size"]), in_chans=found.in_chans,
                             **meta.get("kwargs", {}))
    found.load_into(backbone)
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
