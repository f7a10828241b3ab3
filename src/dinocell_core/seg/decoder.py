"""Distance-map decoder on a DINO ViT: multi-level patch features → progressive upsampling → sigmoid map.

All ViT blocks share one stride, so "skip connections" from several blocks are fused at the token grid (DPT-style
reassembly by 1×1 projections) and the resolution is recovered by ×2 upsampling stages. A light convolutional
stem on the input image feeds the last two stages: the token grid (8 px) cannot place a cell border to the pixel.
The output always has the input's size (inputs that are not a multiple of the patch size are padded and cropped).

A decoder reads ``in_channels`` image channels (1, or several for a multichannel model such as DNA + RNA → cells),
up to the backbone's input planes (3 for an RGB backbone, 5 for a ``fluorescent_stack`` one). The channels fill the
first planes and the planes left over get their mean, so a model whose channels were all one image would show the
backbone exactly the gray image it pretrained on. A one-channel decoder on a ``fluorescent_stack`` backbone is
refused rather than fed one channel copied to five planes, an input it never saw in training: single-channel
decoders belong on a ``fluorescent_single`` backbone, which saw each channel on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dinocell_core.backbones.archs import ArchitectureError


def _conv(cin: int, cout: int) -> nn.Sequential:
    groups = math.gcd(8, cout)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.GELU())


class UpStage(nn.Module):
    """×2 bilinear upsampling, optional skip concatenation, two 3×3 convs."""

    def __init__(self, cin: int, cout: int, skip: int = 0) -> None:
        super().__init__()
        self.block = nn.Sequential(_conv(cin + skip, cout), _conv(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.block(x)


def default_layers(num_blocks: int, n: int = 4) -> list[int]:
    """``n`` evenly spaced block indices ending at the last block (e.g. 12 blocks → 2, 5, 8, 11)."""
    n = min(n, num_blocks)
    return sorted({round(num_blocks - 1 - i * num_blocks / n) for i in range(n)})


class DistanceDecoder(nn.Module):
    """Backbone + decoder; ``forward`` maps [B, C, H, W] images in [0, 1] (C = ``in_channels``) to [B, 1, H, W]
    distance maps."""

    def __init__(self, backbone: nn.Module, layers: Sequence[int] | None = None, width: int = 128,
                 stem_width: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        planes = int(getattr(backbone, "in_chans", 3))
        if in_channels == 1 and planes != 3:
            raise ArchitectureError(
                f"a one-channel decoder cannot use a backbone of {planes} input planes (trained with "
                "data.channel_mode fluorescent_stack); train single-channel decoders on a fluorescent_single, "
                "fluorescent_mean or channel:N backbone, or give data.channels several channels")
        if not 1 <= in_channels <= planes:
            raise ArchitectureError(f"the model reads {in_channels} channels (data.channels) but the backbone takes "
                                    f"{planes} input planes; list at most {planes} channels or use a "
                                    "fluorescent_stack (5-plane) backbone")
        self.in_channels = int(in_channels)
        self.planes = planes
        self.backbone = backbone
        self.patch_size = int(backbone.patch_size)
        if self.patch_size & (self.patch_size - 1):
            raise ValueError(f"patch size must be a power of two for ×2 upsampling, got {self.patch_size}")
        self.layers = list(layers) if layers is not None else default_layers(int(backbone.num_blocks))
        if not self.layers or max(self.layers) >= backbone.num_blocks or min(self.layers) < 0:
            raise ValueError(f"decoder layers {self.layers} out of range for {backbone.num_blocks} blocks")
        dim = int(backbone.embed_dim)
        self.proj = nn.ModuleList([nn.Conv2d(dim, width, 1) for _ in self.layers])
        self.fuse = _conv(width * len(self.layers), width)
        self.stem1 = nn.Sequential(_conv(self.in_channels, stem_width), _conv(stem_width, stem_width))  # full resolution
        self.stem2 = _conv(stem_width, stem_width)  # half resolution
        n_up = int(math.log2(self.patch_size))
        stages, c = [], width
        for i in range(n_up):
            cout = max(stem_width * 2, c // 2)
            skip = stem_width if i >= n_up - 2 else 0
            stages.append(UpStage(c, cout, skip))
            c = cout
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(c, 1, 1)

    def backbone_input(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] channels → the backbone's planes: C = 1 and C = planes pass as they are, otherwise the
        planes after the C channels hold their mean (see the module docstring)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"this model reads {self.in_channels} channel(s), got images {tuple(x.shape)}")
        if self.in_channels == 1 or self.in_channels == self.planes:
            return x
        fill = x.mean(dim=1, keepdim=True).expand(-1, self.planes - self.in_channels, -1, -1)
        return torch.cat([x, fill], dim=1)

    def token_grid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens of the chosen blocks as [B, D, h, w] maps (prefix tokens, if any, dropped)."""
        b, _, h, w = x.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        feats = self.backbone.intermediate_layers(self.backbone.normalize_input(self.backbone_input(x)), self.layers)
        out = []
        for f in feats:
            f = f[:, -gh * gw :]
            out.append(f.transpose(1, 2).reshape(b, -1, gh, gw))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = self.patch_size
        ph, pw = (-h) % p, (-w) % p
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        feats = self.token_grid(x)
        y = self.fuse(torch.cat([proj(f) for proj, f in zip(self.proj, feats)], dim=1))
        s1 = self.stem1(x)
        s2 = self.stem2(F.avg_pool2d(s1, 2))
        skips = {len(self.stages) - 2: s2, len(self.stages) - 1: s1}
        for i, stage in enumerate(self.stages):
            y = stage(y, skips.get(i))
        return torch.sigmoid(self.head(y))[..., :h, :w]


def set_trainable(model: DistanceDecoder, finetune_blocks: int) -> list[str]:
    """Freeze the backbone except its last ``finetune_blocks`` blocks (and the final norm when any are tuned);
    returns the names of trainable backbone parameters."""
    bb = model.backbone
    for p in bb.parameters():
        p.requires_grad_(False)
    if finetune_blocks <= 0:
        return []
    blocks = backbone_blocks(bb)
    if finetune_blocks > len(blocks):
        raise ValueError(f"finetune_blocks={finetune_blocks} but the backbone has {len(blocks)} blocks")
    for blk in list(blocks)[-finetune_blocks:]:
        for p in blk.parameters():
            p.requires_grad_(True)
    names = [n for n, p in bb.named_parameters() if p.requires_grad]
    return names


def backbone_blocks(bb: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a backbone (``.blocks`` on the module or on its wrapped ViT)."""
    for owner in (bb, getattr(bb, "vit", None), getattr(bb, "model", None)):
        blocks = getattr(owner, "blocks", None) if owner is not None else None
        if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            return blocks
    raise ValueError(f"cannot find the transformer blocks of {type(bb).__name__} to fine-tune")
