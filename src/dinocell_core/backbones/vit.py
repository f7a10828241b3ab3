"""DINOv3 ViT backbone (timm ``Eva``, pinned timm 1.0.31) with the pieces SSL needs and timm lacks.

Why a wrapper: timm's ``vit_*_patch16_dinov3_qkvb`` reproduces the official forward exactly, but it has no iBOT
``mask_token``, its checkpoint filter throws away ``bias_mask`` (masked K bias) and the bf16-rounded RoPE
``periods``, and it cannot write the official key layout back. This module adds a masked forward, loads the
official release ``.pth`` (folding the bias mask first, PI-resizing the patch kernel 16 → 8), our training
checkpoints and safetensors exports, and converts back to the official layout (``to_official_state_dict``).
Which files hold a backbone, and how they load, is :mod:`dinocell_core.backbones.loading`.

Input planes (``in_chans``): 3 for gray (or RGB) images, 5 for the five fluorescent channels stacked
(``data.channel_mode: fluorescent_stack``). A 5-plane backbone grows from 3-plane weights so that it starts as the
fluorescent-mean model (:func:`expand_patch_embed`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import timm
import torch
from timm.layers.pos_embed_sincos import _apply_coord_augs, _build_grid
from timm.models.eva import checkpoint_filter_fn
from torch import nn
from torch.utils.checkpoint import checkpoint

from dinocell_core.backbones.archs import ARCH_SPECS, check_backbone
from dinocell_core.errors import DinocellError

log = logging.getLogger(__name__)

TIMM_VERSION = "1.0.31"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: one mean/std for every plane of a fluorescent stack (the ImageNet values' averages: the stains have no RGB order)
STACK_MEAN = sum(IMAGENET_MEAN) / 3
STACK_STD = sum(IMAGENET_STD) / 3
N_REGISTERS = 4
IN_CHANS = (3, 5)  # gray/RGB, the five fluorescent channels
EXPORT_FORMAT = "dinocell-backbone/1"
PRETRAIN_FORMAT = "dinocell-pretrain/1"

#: arch name → (timm model, overrides); the presets and their bounds live in :mod:`dinocell_core.backbones.archs`.
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {k: (s.timm_name, s.timm_overrides()) for k, s in ARCH_SPECS.items()}

if timm.__version__ != TIMM_VERSION:  # the masked forward uses timm's private _pos_embed
    raise ImportError(f"DINOCell needs timm=={TIMM_VERSION} (found {timm.__version__}); "
                      f"install it with: pip install timm=={TIMM_VERSION}")


@contextlib.contextmanager
def parameters_as(module: nn.Module, params: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Temporarily replace ``module``'s parameters (or buffers) by the tensors of ``params`` (name → tensor; None:
    no change), as ``torch.func.functional_call`` does, but around any method (the teacher calls the heads'
    ``embed`` and ``prototypes``), not only ``forward``."""
    if params is None:
        yield
        return
    saved = []
    for name, t in params.items():
        owner, _, leaf = name.rpartition(".")
        sub = module.get_submodule(owner)
        slots = sub._parameters if leaf in sub._parameters else sub._buffers
        saved.append((slots, leaf, slots[leaf]))
        slots[leaf] = t
    try:
        yield
    finally:
        for slots, leaf, p in saved:
            slots[leaf] = p


def _plain_block(blk: nn.Module, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
    return blk(x, rope=rope)


def _subset_block(blk: nn.Module, x: torch.Tensor, rope: torch.Tensor | None, rate: float) -> torch.Tensor:
    """One block with the official DINOv3 stochastic depth: each residual branch runs on a random subset of
    max(⌊B·(1 − rate)⌋, 1) samples and is added back scaled by B/subset, so dropped samples cost nothing (timm's
    DropPath computes the branch for every sample, then zeroes some: ~10 % of the backbone's FLOPs at rate 0.1)."""
    b = x.shape[0]
    keep = max(int(b * (1 - rate)), 1)
    scale = b / keep
    idx = torch.randperm(b, device=x.device)[:keep]
    branch = blk.gamma_1 * blk.attn(blk.norm1(x[idx]), rope=rope)
    x = torch.index_add(x, 0, idx, branch, alpha=scale)
    idx = torch.randperm(b, device=x.device)[:keep]
    branch = blk.gamma_2 * blk.mlp(blk.norm2(x[idx]))
    return torch.index_add(x, 0, idx, branch, alpha=scale)


def _block_with(blk: nn.Module, state: dict[str, torch.Tensor], run: Any, x: torch.Tensor,
                rope: torch.Tensor | None) -> torch.Tensor:
    with parameters_as(blk, state):
        return run(blk, x, rope)


class WeightsError(DinocellError, ValueError):
    """Backbone weights cannot be used: missing file, unknown format, or an architecture mismatch."""


class DinoBackbone(nn.Module):
    """A DINOv3 ViT returning CLS, register and patch tokens (after the final norm) with optional iBOT masking."""

    def __init__(self, arch: str, patch_size: int, source: str = "backbone", in_chans: int = 3,
                 **kwargs: Any) -> None:
        super().__init__()
        check_backbone(arch, patch_size, kwargs, source)  # before timm sees anything (no path-like arguments)
        if in_chans not in IN_CHANS:
            raise WeightsError(f"{source}: in_chans {in_chans!r} is not supported; expected one of {IN_CHANS}")
        name, overrides = ARCHS[arch]
        args = {**overrides, **kwargs}
        self.arch = arch
        self.build_kwargs = dict(kwargs)
        self.vit = timm.create_model(name, pretrained=False, patch_size=patch_size, num_classes=0,
                                     global_pool="token", **args)
        if in_chans != 3:  # grown from the 3-plane init, so a random stack model also starts as its mean model
            proj = self.vit.patch_embed.proj
            w, b = expand_patch_embed(proj.weight.detach(), proj.bias.detach(), in_chans)
            new = nn.Conv2d(in_chans, proj.out_channels, proj.kernel_size, proj.stride)
            with torch.no_grad():
                new.weight.copy_(w)
                new.bias.copy_(b)
            self.vit.patch_embed.proj = new
        d = self.vit.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        # Persistent, so the exact (bf16-rounded) values of a release file travel with our checkpoints and bundles.
        periods = self.vit.rope.periods.detach().clone()
        del self.vit.rope.periods
        self.vit.rope.register_buffer("periods", periods, persistent=True)
        if self.vit.pos_embed is not None or self.vit.patch_drop is not None:  # what _pos_embed below leaves out
            raise WeightsError(f"{source}: {name} has an absolute position embedding or patch dropout")
        # the input statistics live on the model's device: building them per call would copy host → device
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._rope_grids: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    @property
    def in_chans(self) -> int:
        return int(self.vit.patch_embed.proj.in_channels)

    @property
    def num_blocks(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vit.set_grad_checkpointing(enable)

    def _planes(self) -> tuple[int, ...]:
        return (1, 3) if self.in_chans == 3 else (self.in_chans,)

    def _check_planes(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] not in self._planes():
            what = " or ".join(map(str, self._planes()))
            hint = " (the five fluorescent channels, each normalised to [0, 1])" if self.in_chans == 5 else ""
            raise ValueError(f"expected images [B, {what}, H, W]{hint}, got {tuple(x.shape)}")

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (our robust-normalised views) → the network's standardised input.

        3-plane backbone: [B, 1|3, H, W] gray (copied to RGB) or RGB, ImageNet mean/std per plane. 5-plane backbone:
        [B, 5, H, W] fluorescent stack, one mean/std (``STACK_MEAN``/``STACK_STD``) for every plane; the 3-plane
        ImageNet statistics are folded into its patch embedding instead (:func:`expand_patch_embed`)."""
        self._check_planes(x)
        if self.in_chans == 5:
            return (x - STACK_MEAN) / STACK_STD
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)

    def _embed(self, x: torch.Tensor, masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_planes(x)
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
        tokens, rope = self._pos_embed(tokens)
        return self.vit.norm_pre(tokens), rope

    def _pos_embed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timm's ``Eva._pos_embed`` for these models ([CLS, registers, patches] and the RoPE sin/cos of the grid),
        with the grid kept on the model's device: timm builds it on the CPU in every forward, and the copy to the
        GPU synchronises the host with the device three times per training step."""
        b, h, w, d = tokens.shape
        v = self.vit
        x = torch.cat([v.cls_token.expand(b, -1, -1), v.reg_token.expand(b, -1, -1), tokens.reshape(b, h * w, d)],
                      dim=1)
        rope = v.rope
        coords = self._rope_grids.get((h, w))
        if coords is None or coords.device != rope.periods.device:
            coords = _build_grid([h, w], grid_type="centered", grid_offset=rope.grid_offset,
                                 grid_indexing=rope.grid_indexing, normalize_coords=rope.normalize_coords,
                                 ndim=2).flatten(0, -2).to(rope.periods.device)
            self._rope_grids[(h, w)] = coords
        if self.training and rope.aug_active:  # RoPE augmentation (rescale), drawn on the model's device
            coords = _apply_coord_augs(coords, rope.shift_coords, rope.jitter_coords, rope.rescale_coords)
        sin, cos = rope._get_pos_embed_from_coords(coords)  # fp32, from fp32 coordinates and periods
        # applied in the tokens' dtype: with bf16 parameter copies (pretraining) the rotation runs in bf16, as the
        # official trainer's RoPE (its default training dtype); fp32 tokens keep fp32
        return v.pos_drop(x), torch.cat([sin, cos], dim=-1).to(x.dtype)

    def _block(self, blk: nn.Module, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        rate = float(getattr(blk.drop_path1, "drop_prob", 0.0)) if self.training else 0.0
        run = partial(_subset_block, rate=rate) if rate > 0 else _plain_block
        if self.vit.grad_checkpointing and self.training and torch.is_grad_enabled():
            params = dict(blk.named_parameters())
            if all(isinstance(p, nn.Parameter) for p in params.values()):
                return checkpoint(run, blk, x, rope, use_reentrant=False)
            # compute-dtype copies are swapped in for this pass (parameters_as): the recomputation in backward
            # runs after the swap is undone and must see the same copies
            state = {**params, **dict(blk.named_buffers())}
            return checkpoint(_block_with, blk, state, run, x, rope, use_reentrant=False)
        return run(blk, x, rope)

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
        w, b = converted.get("patch_embed.proj.weight"), converted.get("patch_embed.proj.bias")
        if w is not None and b is not None:
            converted["patch_embed.proj.weight"], converted["patch_embed.proj.bias"] = self.fit_planes(w, b, source)
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

    def fit_planes(self, weight: torch.Tensor, bias: torch.Tensor, source: str = "weights"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """A patch embedding of some input planes made fit for this backbone's: equal → unchanged, 3 → 5 grown
        (:func:`expand_patch_embed`); anything else is refused (a 5-plane model cannot become a gray one)."""
        planes = int(weight.shape[1])
        if planes == self.in_chans:
            return weight, bias
        if planes == 3:
            return expand_patch_embed(weight, bias, self.in_chans)
        raise WeightsError(f"{source}: weights take {planes} input planes, this backbone {self.in_chans}; a "
                           f"{planes}-plane (fluorescent_stack) backbone needs in_chans={planes}")

    def load_backbone_state(self, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
        """Load this class's own state dict (training checkpoints), growing 3-plane weights for a stack model."""
        sd = dict(state)
        key = "vit.patch_embed.proj"
        if f"{key}.weight" in sd and f"{key}.bias" in sd:
            sd[f"{key}.weight"], sd[f"{key}.bias"] = self.fit_planes(sd[f"{key}.weight"], sd[f"{key}.bias"], source)
        try:
            self.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{source}: backbone does not fit arch {self.arch!r}: {exc}") from None

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
                "num_blocks": self.num_blocks, "in_chans": self.in_chans, "kwargs": dict(self.build_kwargs)}


def expand_patch_embed(weight: torch.Tensor, bias: torch.Tensor, in_chans: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow a 3-plane patch embedding (W [D, 3, p, p], b [D]) to ``in_chans`` planes so that the grown network, at
    these weights, *is* the fluorescent-mean model: for any stack x_1..x_n its output equals the 3-plane model's on
    the mean image x̄ = (1/n)·Σ_k x_k (copied to RGB) — in particular on a stack whose planes all equal x, exactly
    the 3-plane model's output on x.

    Why the ImageNet statistics are folded in: the 3-plane model sees z_c = (x̄ − m_c)/s_c, so its patch embedding
    of a gray image is

        y3 = Σ_c (W_c/s_c) ∗ x̄ − Σ_c (m_c/s_c)·ΣW_c + b            (ΣW_c: sum of the kernel taps of W_c)

    The stack model normalises every plane with one mean/std (μ, σ) = (STACK_MEAN, STACK_STD) and uses

        W'_k = (3/n) · mean_c(W_c · σ/s_c)   for every plane k,     b' = b + Σ_c ((μ − m_c)/s_c)·ΣW_c

    Then Σ_k W'_k ∗ (x_k − μ)/σ + b' = Σ_c (W_c/s_c) ∗ x̄ − μ·Σ_c ΣW_c/s_c + b' = y3 (the patch embedding has no
    padding, so a constant input gives ΣW exactly). With equal s_c this is FINO's W'_k = mean_rgb(W)·3/n; the
    ImageNet stds differ by < 2 %, so W' stays within 2 % of it. Everything after the patch embedding is shared."""
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise WeightsError(f"expected a 3-plane patch kernel [D, 3, p, p], got {tuple(weight.shape)}")
    w = weight.double()
    m = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    per_unit = (w / s).sum(dim=1, keepdim=True)  # Σ_c W_c/s_c: the filter a [0, 1] gray image meets
    grown = (per_unit * (STACK_STD / in_chans)).expand(-1, in_chans, -1, -1)
    shift = (((STACK_MEAN - m) / s) * w).sum(dim=(1, 2, 3))
    return grown.to(weight.dtype).contiguous(), (bias.double() + shift).to(bias.dtype)


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
            + patch_embed_flops(model.embed_dim, model.patch_size, n, model.in_chans))


