"""Every pretraining key in one torch-free file (like dinov3's ``ssl_default_config.yaml``).

The napari Pretrain form, ``--plan`` and config validation import this module only, so opening a form never imports
torch or timm. Defaults are the official recipe's where one exists; the packaged recipes override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field as PField
from pydantic import field_validator, model_validator

from dinocell_core.config import ConfigError, StrictModel, check_resume_changes
from dinocell_core.jump.channels import ALL_CHANNELS, FMEAN, ChannelMode, channel_number
from dinocell_core.profiling.settings import QUICK_NULL_SIZE, ReadoutSettings, ScoreSettings
from dinocell_core.ssl.schedules import SCALING_RULES

#: bounds that keep a typo (``batch_size=1e12``, ``global_size=1000000``) a one-line error instead of an allocation
#: of terabytes or a plan of 10¹² steps: 10× the longest DINOv3 schedule, and crops as large as a bundle's tiles
MAX_TOTAL_STEPS = 10**7
MAX_CROP = 4096


class AugmentConfig(StrictModel):
    """Augmentation strengths (the ``data.augment`` config section).

    Intensity jitter acts on each plane's raw counts *before* normalisation, with probability ``intensity_p``
    (:func:`dinocell_core.ssl.augment.intensity_curve`): ``gamma`` bends the signal above the dark level, ``gain``
    scales it and ``offset`` shifts it (in units of the field's dynamic range). Per-field percentile normalisation
    cancels gain and offset, as it cancels exposure differences in real data; gamma remains. The default gamma range
    spans the fixture's per-field detector gamma (0.6–1.6). Blur: ``blur_p`` (global 1, global 2, local) all 0 turns
    it off; ``blur_sigma`` ≤ 0.5 px keeps 1–2-px organelles."""

    flips: bool = True
    rot90: bool = True
    intensity_p: float = PField(0.8, ge=0, le=1)
    gamma: tuple[float, float] = (0.6, 1.6)
    gain: tuple[float, float] = (0.5, 2.0)
    offset: tuple[float, float] = (-0.05, 0.05)
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_p: float = PField(0.3, ge=0, le=1)
    noise_std: tuple[float, float] = (0.0, 0.05)

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentConfig":
        for name in ("blur_sigma", "noise_std"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"{name} must be a range [low, high] with 0 ≤ low ≤ high")
        for name in ("gamma", "gain"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range [low, high] with 0 < low ≤ high")
        lo, hi = self.offset
        if not -1 <= lo <= hi <= 1:
            raise ValueError("offset must be a range [low, high] with -1 ≤ low ≤ high ≤ 1 (fractions of the field's "
                             "dynamic range)")
        if any(not 0 <= p <= 1 for p in self.blur_p):
            raise ValueError("blur_p values (global 1, global 2, local) must lie in [0, 1]")
        return self


class DataConfig(StrictModel):
    """The ``data:`` section of a pretraining config (key reference: docs/data.md).

    ``root`` is a CPJUMP1 folder, an ``s3://`` prefix or a load_data CSV; ``index`` is where the index CSV is cached
    (or an existing contract CSV to use); ``prepared`` points at a ``jump prepare`` store. ``channel_mode`` is
    ``fluorescent_mean`` | ``fluorescent_single`` | ``fluorescent_stack`` | ``channel:N`` | ``brightfield`` |
    ``multiview`` (:class:`~dinocell_core.jump.channels.ChannelMode`). ``second_view``: ``same_field`` (every crop
    of a sample from one field) or ``same_well`` (the second global crop and half of the locals from another site
    of the same well, from the plate layout alone as WS-DINO, so the views do not share the field's nuisance).
    """

    root: str | None = None
    index: str | None = None
    load_data: list[str] = []
    refresh_index: bool = False
    prepared: str | None = None
    channel_mode: str = FMEAN
    second_view: Literal["same_field", "same_well"] = "same_field"
    multiview_channels: list[int] = list(ALL_CHANNELS)
    illumination: bool = False
    norm_percentiles: tuple[float, float] = (1.0, 99.8)
    # field: each field's own percentiles; plate: percentiles pooled over up to plate_norm_fields fields of the plate's
    # negcon wells (all wells without a plate map), computed once per plate (ssl.normalization)
    normalization: Literal["field", "plate"] = "field"
    plate_norm_fields: int = PField(16, ge=1)
    clahe: bool = False
    clahe_clip_limit: float = PField(2.0, gt=0)
    global_size: int = PField(224, ge=8, le=MAX_CROP)
    local_size: int = PField(96, ge=8, le=MAX_CROP)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    # Crop sides in native field pixels instead of area fractions (then *_scale is not used): a crop of side s is
    # resized to global_size/local_size, so [224, 224] at global_size 224 shows cells at the decoder's scale.
    global_crop_px: tuple[int, int] | None = None
    local_crop_px: tuple[int, int] | None = None
    n_global: int = PField(2, ge=1, le=2)
    n_local: int = PField(8, ge=0, le=64)
    augment: AugmentConfig = AugmentConfig()
    mask_probability: float = PField(0.5, ge=0, le=1)
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_min_patches: int = PField(4, ge=1)
    mask_min_aspect: float = PField(0.3, gt=0, le=1)
    crops_per_field: int = PField(1, ge=1, le=1024)
    max_retries: int = PField(20, ge=1)
    max_failure_fraction: float = PField(0.05, ge=0, le=1)
    failure_min_samples: int = PField(200, ge=1)
    num_workers: int = PField(4, ge=0, le=256)
    worker_start_method: Literal["spawn", "forkserver", "fork"] = "spawn"
    prefetch_factor: int = PField(2, ge=1, le=64)
    s3_endpoint_url: str | None = None
    s3_anon: bool = True
    s3_cache_dir: str | None = None
    s3_cache_gb: float = PField(0.0, ge=0)

    @field_validator("channel_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        ChannelMode.parse(v)
        return v

    @property
    def mode(self) -> ChannelMode:
        return ChannelMode.parse(self.channel_mode)

    @field_validator("multiview_channels", mode="before")
    @classmethod
    def _mv(cls, v: Any) -> list[int]:
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError("multiview_channels must list at least one channel (1–8 or names such as DNA)")
        return [channel_number(c) for c in v]

    @model_validator(mode="after")
    def _ranges(self) -> "DataConfig":
        for name in ("global_scale", "local_scale", "mask_ratio"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 1:
                raise ValueError(f"{name} must be [low, high] with 0 ≤ low ≤ high ≤ 1")
        for name in ("global_crop_px", "local_crop_px"):
            rng = getattr(self, name)
            if rng is not None and not 1 <= rng[0] <= rng[1]:
                raise ValueError(f"{name} must be [low, high] field pixels with 1 ≤ low ≤ high")
        lo, hi = self.norm_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError("norm_percentiles must be [low, high] with 0 ≤ low < high ≤ 100")
        if self.s3_cache_dir and self.s3_cache_gb <= 0:
            raise ValueError("s3_cache_dir is set but s3_cache_gb is 0: give the cache a size (GB) or drop the dir")
        return self

    def storage(self) -> Any:
        """An S3Storage when the data lives on S3 (settings only; the client is created in each process)."""
        targets = [self.root or "", self.index or "", *self.load_data]
        if not any(str(t).startswith("s3://") for t in targets) and not self.s3_endpoint_url:
            return None
        from dinocell_core.io.storage import S3Storage

        cache_dir = self.s3_cache_dir
        if cache_dir is None and self.s3_cache_gb > 0:
            cache_dir = str(Path.home() / ".cache" / "dinocell" / "s3")
        return S3Storage(endpoint_url=self.s3_endpoint_url, anon=self.s3_anon, cache_dir=cache_dir,
                         cache_bytes=int(self.s3_cache_gb * 1e9))



class ModelSection(StrictModel):
    arch: str = "vit_small"
    patch_size: int = PField(8, ge=1)
    weights: str | None = None  # official ViT-S/16 .pth, a pretraining run dir/checkpoint, or an export
    drop_path_rate: float = PField(0.1, ge=0, lt=1)
    drop_path_profile: Literal["uniform", "linear"] = "uniform"  # official: one rate for every block (timm: ramp)
    rope_rescale_coords: float | None = PField(2.0, ge=1)  # train-mode RoPE scale augmentation (release: 2)
    # LayerScale init of a random-init backbone (release 1e-5; weights, when given, overwrite it). At 1e-5 every
    # block is ~identity, so every image gets the same CLS and DINO/iBOT have no signal (docs/pretraining.md)
    layerscale_init: float = PField(1e-5, gt=0)
    kwargs: dict[str, Any] = PField(default_factory=dict)  # extra load_backbone arguments (tiny test archs)

    @model_validator(mode="after")
    def _arch(self) -> "ModelSection":
        from dinocell_core.backbones.archs import check_backbone

        for own in ("drop_path_rate", "rope_rescale_coords"):
            if own in self.kwargs:
                raise ValueError(f"kwargs.{own}: set model.{own} instead")
        check_backbone(self.arch, self.patch_size, self.kwargs, "model", key="model")
        return self


class HeadsSection(StrictModel):
    out_dim: int = PField(65536, ge=2, le=2**18)
    ibot_out_dim: int = PField(65536, ge=2, le=2**18)
    hidden_dim: int = PField(2048, ge=1, le=16384)
    bottleneck_dim: int = PField(256, ge=1, le=4096)
    nlayers: int = PField(3, ge=1, le=8)
    # unit-norm prototypes (DINOv1/v2 weight norm; DINOv3: off). Small random-init runs need it (docs/pretraining.md)
    normalize_prototypes: bool = False


class LossSection(StrictModel):
    dino_weight: float = PField(1.0, ge=0)
    ibot_weight: float = PField(1.0, ge=0)
    koleo_weight: float = PField(0.1, ge=0)
    student_temp: float = PField(0.1, gt=0)
    teacher_temp: float = PField(0.07, gt=0)
    warmup_teacher_temp: float = PField(0.04, gt=0)
    warmup_teacher_temp_epochs: float = PField(10, ge=0)
    sinkhorn_iterations: int = PField(3, ge=1)
    # teacher DINO rows of recent steps that join each batch's Sinkhorn-Knopp (per rank; 0 = the batch alone, as the
    # official multi-GPU recipe). Needed when a rank has fewer rows than heads.out_dim (ssl.losses.TeacherQueue).
    sinkhorn_queue: int = PField(0, ge=0, le=2**20)


class OptimSection(StrictModel):
    lr: float = PField(5e-5, gt=0)  # base LR before the scaling rule
    min_lr: float = PField(1e-6, ge=0)
    scaling_rule: str = "sqrt_wrt_1024"
    warmup_epochs: float = PField(10, ge=0)
    weight_decay: float = PField(0.04, ge=0)
    weight_decay_end: float = PField(0.2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = PField(0.9, gt=0, le=1)
    patch_embed_lr_mult: float = PField(0.2, ge=0)
    clip_grad: float = PField(3.0, ge=0)  # per module (backbone, DINO head, iBOT head); 0 = off
    freeze_last_layer_epochs: float = PField(1, ge=0)

    @model_validator(mode="after")
    def _rule(self) -> "OptimSection":
        if self.scaling_rule not in SCALING_RULES:
            raise ValueError(f"scaling_rule must be one of {SCALING_RULES}")
        return self


class TeacherSection(StrictModel):
    momentum: float = PField(0.996, ge=0, le=1)
    momentum_end: float = PField(1.0, ge=0, le=1)


class WarmStartSection(StrictModel):
    """Public weights carry no heads: train the heads on a frozen backbone, then ramp the backbone LR in."""

    freeze_backbone_steps: int = PField(0, ge=0)
    backbone_ramp_steps: int = PField(0, ge=0)


class TrainSection(StrictModel):
    epochs: float = PField(80, gt=0)
    # an "epoch" is a fixed number of iterations, as in DINOv3
    steps_per_epoch: int = PField(1000, ge=1, le=MAX_TOTAL_STEPS)
    batch_size: int = PField(48, ge=1, le=4096)  # per process (GPU)
    device: str = "auto"  # auto | cpu | cuda
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 compute on CUDA, fp32 on CPU; never fp16
    compile: bool = False
    activation_checkpointing: bool = False
    max_nonfinite: int = PField(3, ge=1)  # consecutive skipped steps that stop the run
    log_every: int = PField(10, ge=1)
    checkpoint_every: int = PField(2500, ge=1)
    keep_last: int = PField(3, ge=1)
    keep_every: int | None = PField(None, ge=1)
    tensorboard: bool = False
    progress: bool = True

    @property
    def total_steps(self) -> int:
        return max(1, round(self.epochs * self.steps_per_epoch))

    @model_validator(mode="after")
    def _length(self) -> "TrainSection":
        if self.epochs * self.steps_per_epoch > MAX_TOTAL_STEPS:
            raise ValueError(f"epochs × steps_per_epoch = {self.epochs * self.steps_per_epoch:.3g} steps, more than the "
                             f"{MAX_TOTAL_STEPS:,} a run may have")
        return self


class EvalSection(ReadoutSettings, ScoreSettings):
    """The ``eval:`` section: every ``every`` steps (0 = off) the teacher embeds held-out plates into well profiles
    and the CPJUMP1 copairs benchmark scores them; ``eval_fraction_retrieved`` and ``eval_mean_map`` go to
    metrics.jsonl (see :mod:`dinocell_core.ssl.evaluation`). The read-out keys (``channels``, ``tokens``, ``tile``,
    ``batch_size``) and the scoring keys (``normalize``, ``null_size``) are ``profile embed``'s and ``profile
    evaluate``'s own fields and defaults (:mod:`dinocell_core.profiling.settings`); ``channels`` left out is the
    teacher's ViT read-out, each fluorescent channel on its own."""

    error = ConfigError

    every: int = PField(0, ge=0)
    root: str | None = None  # CPJUMP1 tree of the held-out plates (default: data.root)
    plates: list[str] = []  # held-out plate barcodes (empty: every plate of root)
    metadata: str | None = None  # folder with barcode_platemap.csv etc. (default: root's workspace/metadata)
    # smaller than the benchmark's null: rank 0 scores while the other ranks wait in a collective, so a score must
    # come back in seconds (QUICK_NULL_SIZE says why 10,000 suffices)
    null_size: int = PField(QUICK_NULL_SIZE, ge=1)


class PretrainConfig(StrictModel):
    name: str = "pretrain"
    seed: int = PField(0, ge=0, le=2**32 - 1)
    model: ModelSection = ModelSection()
    heads: HeadsSection = HeadsSection()
    loss: LossSection = LossSection()
    optim: OptimSection = OptimSection()
    teacher: TeacherSection = TeacherSection()
    warm_start: WarmStartSection = WarmStartSection()
    train: TrainSection = TrainSection()
    data: DataConfig = DataConfig()
    eval: EvalSection = EvalSection()

    @model_validator(mode="after")
    def _checks(self) -> "PretrainConfig":
        if self.eval.every and not (self.eval.root or self.data.root):
            raise ValueError("eval.every is set but neither eval.root nor data.root names the held-out plates")
        if self.eval.every and self.eval.tile % self.model.patch_size:
            raise ValueError(f"eval.tile must be a multiple of model.patch_size ({self.model.patch_size})")
        if self.loss.koleo_weight > 0 and self.train.batch_size < 2:
            raise ValueError("train.batch_size must be >= 2 when loss.koleo_weight > 0 (KoLeo needs a nearest "
                             "neighbour in the batch)")
        if self.loss.koleo_weight > 0 and self.train.batch_size <= self.data.crops_per_field:
            raise ValueError("train.batch_size must exceed data.crops_per_field when loss.koleo_weight > 0 (KoLeo "
                             "never takes a crop of the same field as neighbour, so a batch needs ≥ 2 fields)")
        spe, ws = self.train.steps_per_epoch, self.warm_start
        if ws.freeze_backbone_steps > 0:
            warm, last = round(self.optim.warmup_epochs * spe), round(self.optim.freeze_last_layer_epochs * spe)
            if warm >= ws.freeze_backbone_steps:
                raise ValueError(f"optim.warmup_epochs ({warm} steps) must end before the backbone unfreezes "
                                 f"(warm_start.freeze_backbone_steps {ws.freeze_backbone_steps}): the heads must "
                                 "train at full LR on the frozen backbone")
            if last >= ws.freeze_backbone_steps:
                raise ValueError(f"optim.freeze_last_layer_epochs ({last} steps) must end well before the backbone "
                                 f"unfreezes (warm_start.freeze_backbone_steps {ws.freeze_backbone_steps}): random "
                                 "prototypes and the backbone must not start training together (dinov2#204)")
        if self.data.global_size % self.model.patch_size or self.data.local_size % self.model.patch_size:
            raise ValueError(f"data.global_size and data.local_size must be multiples of model.patch_size "
                             f"({self.model.patch_size})")
        return self


#: keys that may change when a run is resumed (everything else must match the run's config.yaml)
RESUMABLE_CHANGES = ("train.epochs", "train.log_every", "train.checkpoint_every", "train.keep_last",
                     "train.keep_every", "train.tensorboard", "train.progress", "train.compile",
                     "train.activation_checkpointing", "train.max_nonfinite", "train.device", "data.num_workers",
                     "data.prefetch_factor", "data.worker_start_method", "data.s3_cache_dir", "data.s3_cache_gb",
                     *(f"eval.{k}" for k in EvalSection.model_fields))


def check_resume_config(old: dict[str, Any], new: PretrainConfig, config_path: str | Path,
                        allow_all: bool = False) -> dict[str, list[Any]]:
    return check_resume_changes(old, new, config_path, RESUMABLE_CHANGES, allow_all)
