"""AdamW parameter groups of the official recipe, per-step LR/WD application and per-module gradient clipping.

- layer-wise LR decay: multiplier ``decay^(L+1-layer)``; patch embed and tokens are layer 0, block i is i+1,
  the final norm and the heads L+1; the patch embedding gets an extra ``patch_embed_lr_mult``;
- no weight decay on biases, norms and LayerScale gammas (tokens do get decay, as in DINOv3);
- the heads' ``last_layer`` follows its own schedule (frozen at the start);
- backbone groups are scaled by the warm-start factor (0 while only the heads train).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from dinocell_core.ssl.schedules import StepValues, scaled_lr

__all__ = ["apply_step_values", "clip_module_grads", "param_groups", "scaled_lr"]


def _layer_id(name: str, num_blocks: int) -> int:
    m = re.match(r"vit\.blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    if name.startswith(("vit.patch_embed", "vit.cls_token", "vit.reg_token", "mask_token", "vit.norm_pre")):
        return 0
    return num_blocks + 1


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "norm" in name or "gamma" in name


def param_groups(backbone: nn.Module, heads: dict[str, nn.Module], layer_decay: float,
                 patch_embed_lr_mult: float) -> list[dict]:
    """Groups keyed by (lr multiplier, wd multiplier, last layer?, backbone?); each group carries its keys."""
    num_blocks = len(backbone.vit.blocks)
    groups: dict[tuple, dict] = {}

    def add(name: str, p: nn.Parameter, is_backbone: bool, layer: int) -> None:
        lr_mult = layer_decay ** (num_blocks + 1 - layer)
        if is_backbone and name.startswith("vit.patch_embed"):
            lr_mult *= patch_embed_lr_mult
        wd_mult = 0.0 if _no_decay(name) else 1.0
        last = "last_layer" in name
        key = (round(lr_mult, 12), wd_mult, last, is_backbone)
        g = groups.setdefault(key, {"params": [], "names": [], "lr_mult": lr_mult, "wd_mult": wd_mult,
                                    "is_last_layer": last, "is_backbone": is_backbone, "lr": 0.0,
                                    "weight_decay": 0.0})
        g["params"].append(p)
        g["names"].append(name)

    for name, p in backbone.named_parameters():
        add(name, p, True, _layer_id(name, num_blocks))
    for head_name, head in heads.items():
        for name, p in head.named_parameters():
            add(f"{head_name}.{name}", p, False, num_blocks + 1)
    return list(groups.values())


def apply_step_values(optimizer: torch.optim.Optimizer, v: StepValues) -> None:
    for g in optimizer.param_groups:
        lr = v.last_layer_lr if g["is_last_layer"] else v.lr
        factor = v.backbone_factor if g["is_backbone"] else 1.0
        g["lr"] = lr * g["lr_mult"] * factor
        g["weight_decay"] = v.weight_decay * g["wd_mult"] * (1.0 if factor > 0 else 0.0)


def clip_module_grads(params: Iterable[torch.Tensor], max_norm: float, device: torch.device | None = None
                      ) -> torch.Tensor:
    """Clip one module's gradients to ``max_norm`` (0 = no clipping); the norm before clipping, as a device
    tensor (no host sync; 0 for a module without gradients, e.g. the frozen backbone)."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(grads, max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in grads])
