"""AdamW parameter groups of the official recipe, per-step LR/WD application and per-module gradient clipping.

- layer-wise LR decay: multiplier ``decay^(L+1-layer)``; patch embed and tokens are layer 0, block i is i+1,
  the final norm and the heads L+1; the patch embedding gets an extra ``patch_embed_lr_mult``;
- no weight decay on biases, norms and LayerScale gammas (tokens do get decay, as in DINOv3);
- the heads' ``last_layer`` follows its own schedule (frozen at the start);
- backbone groups are scaled by the warm-start factor (0 while only the heads train).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn

from dinocell_core.ssl.config import SCALING_RULES
from dinocell_core.ssl.schedules import StepValues


def scaled_lr(base_lr: float, rule: str, global_batch: int) -> float:
    """DINOv3's rule: ``sqrt_wrt_1024`` = lr × 4·sqrt(B/1024) (note the 4; DINOv2 had none)."""
    if rule == "sqrt_wrt_1024":
        return base_lr * 4.0 * math.sqrt(global_batch / 1024.0)
    if rule == "linear_wrt_256":
        return base_lr * global_batch / 256.0
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown LR scaling rule {rule!r}; expected one of {SCALING_RULES}")


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


def clip_module_grads(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Clip one module's gradients to ``max_norm`` (0 = no clipping) and return the norm before clipping."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.nn.utils.get_total_norm([p.grad for p in grads]))
