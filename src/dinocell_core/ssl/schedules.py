"""Per-step values of every schedule (official DINOv3 "v1" schedules + the two-stage warm start).

Computed on demand from the step (no precomputed arrays), so a resumed run at step s gets exactly the values an
uninterrupted run had at step s.
"""

from __future__ import annotations

from dataclasses import dataclass

from dinocell_core.schedules import cosine, linear_warmup, warmup_cosine


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
