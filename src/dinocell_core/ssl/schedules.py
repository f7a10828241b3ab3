"""Per-step values of every schedule (official DINOv3 "v1" schedules + the two-stage warm start).

Computed on demand from the step (no precomputed arrays), so a resumed run at step s gets exactly the values an
uninterrupted run had at step s. Torch-free, so ``pretrain --plan`` and the napari form can show a run's schedule
without importing torch.

Heads-first warm start (public weights carry no heads): while ``step < freeze_backbone_steps`` only the heads train,
at the full LR after their own warm-up (``warmup_steps``, which must end before the unfreeze) and with the last layer
frozen only for ``freeze_last_layer_steps``; then the backbone's LR factor ramps 0 → 1 over ``backbone_ramp_steps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dinocell_core.schedules import cosine, linear_warmup, warmup_cosine

SCALING_RULES = ("sqrt_wrt_1024", "linear_wrt_256", "none")


def scaled_lr(base_lr: float, rule: str, global_batch: int) -> float:
    """DINOv3's rule: ``sqrt_wrt_1024`` = lr × 4·sqrt(B/1024) (note the 4; DINOv2 had none)."""
    if rule == "sqrt_wrt_1024":
        return base_lr * 4.0 * math.sqrt(global_batch / 1024.0)
    if rule == "linear_wrt_256":
        return base_lr * global_batch / 256.0
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown LR scaling rule {rule!r}; expected one of {SCALING_RULES}")


@dataclass(frozen=True)
class ScheduleSpec:
    total_steps: int
    lr: float  # peak, already scaled for the global batch
    min_lr: float
    warmup_steps: int
    weight_decay: float
    weight_decay_end: float
    momentum: float
    momentum_end: float
    teacher_temp_start: float
    teacher_temp: float
    teacher_temp_warmup_steps: int
    freeze_last_layer_steps: int
    freeze_backbone_steps: int = 0
    backbone_ramp_steps: int = 0


@dataclass(frozen=True)
class StepValues:
    lr: float
    last_layer_lr: float
    backbone_factor: float  # 0 while the backbone is frozen (heads-only warm start), ramps to 1
    weight_decay: float
    momentum: float
    teacher_temp: float

    @property
    def backbone_frozen(self) -> bool:
        return self.backbone_factor == 0.0


def values_at(spec: ScheduleSpec, step: int) -> StepValues:
    lr = warmup_cosine(step, spec.total_steps, spec.lr, spec.min_lr, spec.warmup_steps)
    if step < spec.freeze_backbone_steps:
        factor = 0.0
    elif spec.backbone_ramp_steps > 0:
        factor = min(1.0, (step - spec.freeze_backbone_steps + 1) / spec.backbone_ramp_steps)
    else:
        factor = 1.0
    return StepValues(
        lr=lr,
        last_layer_lr=0.0 if step < spec.freeze_last_layer_steps else lr,
        backbone_factor=factor,
        weight_decay=cosine(step, spec.total_steps, spec.weight_decay, spec.weight_decay_end),
        momentum=cosine(step, spec.total_steps, spec.momentum, spec.momentum_end),
        teacher_temp=linear_warmup(step, spec.teacher_temp_warmup_steps, spec.teacher_temp_start, spec.teacher_temp),
    )


def schedule_spec(cfg: Any, world_size: int) -> ScheduleSpec:
    """The schedule of a ``PretrainConfig`` run on ``world_size`` processes (the LR rule sees the global batch)."""
    spe = cfg.train.steps_per_epoch
    return ScheduleSpec(
        total_steps=cfg.train.total_steps,
        lr=scaled_lr(cfg.optim.lr, cfg.optim.scaling_rule, cfg.train.batch_size * world_size),
        min_lr=cfg.optim.min_lr,
        warmup_steps=round(cfg.optim.warmup_epochs * spe),
        weight_decay=cfg.optim.weight_decay,
        weight_decay_end=cfg.optim.weight_decay_end,
        momentum=cfg.teacher.momentum,
        momentum_end=cfg.teacher.momentum_end,
        teacher_temp_start=cfg.loss.warmup_teacher_temp,
        teacher_temp=cfg.loss.teacher_temp,
        teacher_temp_warmup_steps=round(cfg.loss.warmup_teacher_temp_epochs * spe),
        freeze_last_layer_steps=round(cfg.optim.freeze_last_layer_epochs * spe),
        freeze_backbone_steps=cfg.warm_start.freeze_backbone_steps,
        backbone_ramp_steps=cfg.warm_start.backbone_ramp_steps,
    )
