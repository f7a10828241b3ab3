"""DINOv3 ViT backbone (timm ``Eva``, pinned timm 1.0.31) with the pieces SSL needs and timm lacks.

Why a wrapper: timm's ``vit_*_patch16_dinov3_qkvb`` reproduces the official forward exactly, but it has no iBOT
``mask_token``, its checkpoint filter throws away ``bias_mask`` (masked K bias) and the bf16-rounded RoPE
``periods``, and it cannot write the official key layout back. This module adds a masked forward, loads the
official release ``.pth`` (folding the bias mask first, PI-resizing the patch kernel 16 → 8), our training
checkpoints and safetensors exports, and converts back to the official layout (``to_official_state_dict``).
Which files hold a backbone, and how they load, is :mod:`dinocell_core.backbones.loading`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from timm.models.eva import checkpoint_filter_fn
from torch import nn
from torch.utils.checkpoint import checkpoint

from dinocell_core.backbones.archs import ARCH_SPECS, check_backbone
from dinocell_core.errors import DinocellError

log = logging.getLogger(__name__)

TIMM_VERSION = "1.0.31"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
N_REGISTERS = 4
EXPORT_FORMAT = "dinocell-backbone/1"
PRETRAIN_FORMAT = "dinocell-pretrain/1"

#: arch name → (timm model, overrides); the presets and their bounds live in :mod:`dinocell_core.backbones.archs`.
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {k: (s.timm_name, s.timm_overrides()) for k, s in ARCH_SPECS.items()}

if timm.__version__ != TIMM_VERSION:  # the masked forward uses timm's private _pos_embed
    raise ImportError(f"DINOCell needs timm=={TIMM_VERSION} (found {timm.__version__}); "
                      f"install it with: pip install timm=={TIMM_VERSION}")


class WeightsError(DinocellError, ValueError):
    """Backbone weights cannot be used: missing file, unknown format, or an architecture mismatch."""


class DinoBackbone(nn.Module):
    """A DINOv3 ViT returning CLS, register and patch tokens (after the final norm) with optional iBOT masking."""

    def __init__(self, arch: str, patch_size: int, source: str = "backbone", **kwargs: Any) -> None:
        super().__init__()
        check_backbone(arch, patch_size, kwargs, source)  # before timm sees anything (no path-like arguments)
        name, overrides = ARCHS[arch]
        args = {**overrides, **kwargs}
        self.arch = arch
        self.build_kwargs = dict(kwargs)
        self.vit = timm.create_model(name, pretrained=False, patch_size=patch_size, num_classes=0,
                                     global_pool="token", **args)
        d = self.vit.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        # Persistent, so the exact (bf16-rounded) values of a release file travel with our checkpoints and bundles.
        periods = self.vit.rope.periods.detach().clone()
        del self.vit.rope.periods
        self.vit.rope.register_buffer("periods", periods, persistent=True)

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    @property
    def num_blocks(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vit.set_grad_checkpointing(enable)

    @staticmethod
    def normalize_input(x: torch.Tensor) -> torch.Tensor:
        """[B, 1|3, H, W] images in [0, 1] (our robust-normalised gray) → ImageNet-standardised 3-channel input."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 1 or 3, H, W], got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def _embed(self, x: torch.Tensor, masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 1 or 3, H, W], got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {p}")
        tokens = self.vit.patch_embed(x)  # [B, h, w, D]
        if masks is not None:
            b, h, w, _ = tokens.shape
            m = masks.reshape(b, h, w, 1).to(torch.bool)
            tokens = torch.where(m, self.mask_token.to(tokens.dtype).view(1, 1, 1, -1), tokens)
        tokens, rope = self.vit._pos_embed(tokens)
        return self.vit.norm_pre(tokens), rope

    def _block(self, blk: nn.Module, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        if self.vit.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, rope=rope, use_reentrant=False)
        return blk(x, rope=rope)

    def forward_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``masks`` (bool [B, h, w] or [B, h·w]) replaces those patch embeddings by ``mask_token`` (iBOT)."""
        x, rope = self._embed(x, masks)
        for blk in self.vit.blocks:
            x = self._block(blk, x, rope)
        x = self.vit.norm(x)
        return {"cls": x[:, 0], "registers": x[:, 1 : 1 + N_REGISTERS], "patches": x[:, 1 + N_REGISTERS :]}

    forward = forward_tokens

    def intermediate_layers(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """Patch tokens [B, N, D] after the given blocks, each through the final norm (official ``norm=True``)."""
        wanted = sorted({int(i) for i in indices})
        if not wanted or wanted[0] < 0 or wanted[-1] >= self.num_blocks:
            raise ValueError(f"block indices {list(indices)} out of range for {self.num_blocks} blocks")
        x, rope = self._embed(x, None)
        out: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.vit.blocks[: wanted[-1] + 1]):
            x = self._block(blk, x, rope)
            if i in wanted:
                out[i] = self.vit.norm(x)[:, self.num_prefix_tokens :]
        return [out[int(i)] for i in indices]

    # ------------------------------------------------------------------------------------------ weight layouts
    def load_official_state_dict(self, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
        """Load a state dict in the official DINOv3 key layout (any patch size: the kernel is PI-resized)."""
        sd = {k: v for k, v in state.items()}
        expected = self.embed_dim
        cls = sd.get("cls_token")
        if cls is None or "storage_tokens" not in sd:
            raise WeightsError(f"{source}: not a DINOv3 backbone state dict (no cls_token/storage_tokens keys)")
        if cls.shape[-1] != expected:
            raise WeightsError(f"{source}: weights have width {cls.shape[-1]}, but arch {self.arch!r} has "
                               f"{expected}; choose the matching arch (vit_small 384, vit_base 768, vit_large 1024)")
        n_blocks = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        if n_blocks != self.num_blocks:
            raise WeightsError(f"{source}: weights have {n_blocks} blocks, arch {self.arch!r} has {self.num_blocks}")
        for k in [k for k in sd if k.endswith("attn.qkv.bias")]:
            mask = sd.get(k[: -len("bias")] + "bias_mask")
            if mask is not None:  # the bias actually used is bias * bias_mask (K third is always masked)
                sd[k] = sd[k] * mask.to(sd[k].dtype)
        mask_token = sd.get("mask_token")
        periods = sd.get("rope_embed.periods")
        converted = checkpoint_filter_fn(sd, self.vit)
        missing, unexpected = self.vit.load_state_dict(converted, strict=False)
        missing = [m for m in missing if m != "rope.periods"]
        if missing or unexpected:
            raise WeightsError(f"{source}: weights do not fit arch {self.arch!r}: missing {missing[:6]}, "
                               f"unexpected {unexpected[:6]}")
        with torch.no_grad():
            if mask_token is not None:
                self.mask_token.copy_(mask_token.reshape(1, -1))
            else:
                log.warning("%s has no mask_token: the iBOT mask token starts at zero", source)
                self.mask_token.zero_()
            if periods is not None:
                self.vit.rope.periods.copy_(periods.float())

    def to_official_state_dict(self) -> dict[str, torch.Tensor]:
        """This backbone in the official DINOv3 key layout (the inverse of timm's filter, masked K bias included)."""
        v = self.vit
        d = self.embed_dim
        out: dict[str, torch.Tensor] = {
            "cls_token": v.cls_token,
            "storage_tokens": v.reg_token,
            "mask_token": self.mask_token,
            "patch_embed.proj.weight": v.patch_embed.proj.weight,
            "patch_embed.proj.bias": v.patch_embed.proj.bias,
            "rope_embed.periods": v.rope.periods,
        }
        for i, blk in enumerate(v.blocks):
            a = blk.attn
            p = f"blocks.{i}."
            zeros = torch.zeros(d, dtype=a.q_bias.dtype, device=a.q_bias.device)
            out.update({
                p + "norm1.weight": blk.norm1.weight, p + "norm1.bias": blk.norm1.bias,
                p + "attn.qkv.weight": a.qkv.weight,
                p + "attn.qkv.bias": torch.cat([a.q_bias, zeros, a.v_bias]),
                p + "attn.qkv.bias_mask": torch.cat([torch.ones_like(zeros), zeros, torch.ones_like(zeros)]),
                p + "attn.proj.weight": a.proj.weight, p + "attn.proj.bias": a.proj.bias,
                p + "ls1.gamma": blk.gamma_1, p + "ls2.gamma": blk.gamma_2,
                p + "norm2.weight": blk.norm2.weight, p + "norm2.bias": blk.norm2.bias,
                p + "mlp.fc1.weight": blk.mlp.fc1.weight, p + "mlp.fc1.bias": blk.mlp.fc1.bias,
                p + "mlp.fc2.weight": blk.mlp.fc2.weight, p + "mlp.fc2.bias": blk.mlp.fc2.bias,
            })
        out["norm.weight"] = v.norm.weight
        out["norm.bias"] = v.norm.bias
        return {k: t.detach().float().cpu().clone().contiguous() for k, t in out.items()}

    def metadata(self) -> dict[str, Any]:
        return {"arch": self.arch, "patch_size": self.patch_size, "embed_dim": self.embed_dim,
                "num_blocks": self.num_blocks, "kwargs": dict(self.build_kwargs)}


def patch_embed_flops(embed_dim: int, patch: int, n_patches: int, in_chans: int = 3) -> float:
    """Forward FLOPs of the patch embedding (2 per multiply-add)."""
    return 2.0 * n_patches * embed_dim * in_chans * patch * patch


def vit_forward_flops(embed_dim: int, depth: int, mlp_ratio: float, n_tokens: int) -> float:
    """Forward FLOPs of the transformer blocks: 2·(4D² + 2·ratio·D²)·N linear + 4·N²·D attention per block."""
    linear = 2.0 * (4 + 2 * mlp_ratio) * embed_dim**2 * n_tokens
    attn = 4.0 * n_tokens**2 * embed_dim
    return depth * (linear + attn)


def count_forward_flops(model: DinoBackbone, size: int) -> float:
    """Forward FLOPs of ``model`` on one ``size``×``size`` image, from its actual shapes."""
    n = (size // model.patch_size) ** 2
    mlp_ratio = model.vit.blocks[0].mlp.fc1.out_features / model.embed_dim
    return (vit_forward_flops(model.embed_dim, model.num_blocks, mlp_ratio, n + model.num_prefix_tokens)
            + patch_embed_flops(model.embed_dim, model.patch_size, n))


