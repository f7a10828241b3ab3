"""What a pretraining config will do, without data, weights or torch: schedule milestones, cost, and the per-step
values every 10th step (``dinocell-core pretrain CONFIG --plan OUT.json``). A user checks a 48-hour run here."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from dinocell_core.ssl.config import PretrainConfig
from dinocell_core.ssl.schedules import (
    ScheduleSpec,
    StepValues,
    schedule_spec,
    values_at,
)

#: the OUT.json keys after "step" (StepValues field → JSON key)
PLAN_KEYS = {"lr": "lr", "last_layer_lr": "last_layer_lr", "backbone_factor": "backbone_lr_factor",
             "weight_decay": "wd", "momentum": "momentum", "teacher_temp": "teacher_temp"}


def plan_steps(total_steps: int, every: int = 10) -> list[int]:
    """Every ``every``-th step from 0, plus the last step (total − 1) when it is not on the grid."""
    steps = list(range(0, total_steps, every))
    if steps[-1] != total_steps - 1:
        steps.append(total_steps - 1)
    return steps


def plan_table(spec: ScheduleSpec, every: int = 10) -> dict[str, list[float]]:
    """``{"step": [...], "lr": [...], ...}``: ``lr`` is the heads' LR; the backbone's is lr × backbone_lr_factor
    (× the layer decay of each block)."""
    steps = plan_steps(spec.total_steps, every)
    values = [asdict(values_at(spec, s)) for s in steps]
    out: dict[str, list[Any]] = {"step": steps}
    for field, key in PLAN_KEYS.items():
        out[key] = [v[field] for v in values]
    return out


def milestones(spec: ScheduleSpec) -> list[tuple[int, str]]:
    """(step, what happens) in step order; the step is the first one with the new behaviour."""
    ms: list[tuple[int, str]] = [(0, "start")]
    if spec.warmup_steps:
        ms.append((spec.warmup_steps, "LR warm-up ends (peak LR)"))
    if spec.freeze_last_layer_steps:
        ms.append((spec.freeze_last_layer_steps, "prototypes (last layer) start training"))
    if spec.freeze_backbone_steps:
        ms.append((spec.freeze_backbone_steps, "backbone unfreezes (LR ramp starts)"))
        if spec.backbone_ramp_steps:
            ms.append((spec.freeze_backbone_steps + spec.backbone_ramp_steps - 1, "backbone LR ramp ends (factor 1)"))
    if spec.teacher_temp_warmup_steps:
        ms.append((spec.teacher_temp_warmup_steps, "teacher temperature reaches its final value"))
    ms.append((spec.total_steps - 1, "last step"))
    return sorted(ms, key=lambda m: m[0])


def _fmt(v: StepValues) -> str:
    return (f"lr {v.lr:.3g}  last_layer_lr {v.last_layer_lr:.3g}  backbone×{v.backbone_factor:.3g}  "
            f"wd {v.weight_decay:.3g}  momentum {v.momentum:.5g}  teacher_temp {v.teacher_temp:.3g}")


def describe(cfg: PretrainConfig, world_size: int = 1, n_fields: int | None = None) -> list[str]:
    """Human-readable lines: milestones with their values, then the cost of the run."""
    spec = schedule_spec(cfg, world_size)
    t = cfg.train
    head = (f"{cfg.name}: {cfg.model.arch}/p{cfg.model.patch_size}, {spec.total_steps:,} steps "
            f"({t.epochs:g} epochs × {t.steps_per_epoch:,}), batch {t.batch_size} × {world_size} process(es), "
            f"peak LR {spec.lr:.3g} ({cfg.optim.scaling_rule} of base {cfg.optim.lr:g})")
    lines = [head]
    if spec.freeze_backbone_steps and spec.warmup_steps >= spec.freeze_backbone_steps:
        lines.append("WARNING: the LR warm-up does not end before the backbone unfreezes: the heads never train "
                     "at full LR on the frozen backbone")
    if spec.freeze_backbone_steps and spec.freeze_last_layer_steps >= spec.freeze_backbone_steps:
        lines.append("WARNING: the prototypes stay frozen for the whole frozen-backbone phase: random prototypes "
                     "and the backbone would unfreeze together (dinov2#204)")
    lines.append("milestones:")
    for step, what in milestones(spec):
        lines.append(f"  step {step:>9,}  {what:<46} {_fmt(values_at(spec, step))}")
    global_batch = t.batch_size * world_size
    samples = spec.total_steps * global_batch
    decodes = samples / max(1, cfg.data.crops_per_field)
    crops = cfg.data.n_global + cfg.data.n_local
    lines.append(f"cost: {spec.total_steps:,} steps × {global_batch} = {samples:,} samples "
                 f"({samples * crops:,} crops, {decodes:,.0f} field decodes at crops_per_field "
                 f"{cfg.data.crops_per_field})")
    if n_fields:
        lines.append(f"  = {samples / n_fields:,.1f} passes over {n_fields:,} fields "
                     f"(each field decoded {decodes / n_fields:,.1f} times)")
    else:
        lines.append("  (passes over the data: give --fields N; the plan reads no data)")
    return lines
