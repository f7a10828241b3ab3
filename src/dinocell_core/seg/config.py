"""Every segmentation key in one torch-free file: datasets, augmentation, decoder training and thresholds.

The napari forms and ``segment``'s argument checks import this module only (no torch, no timm). The thresholds'
defaults live here once; a bundle records the values its model was validated with, and every consumer (CLI,
evaluate, napari) starts from the bundle's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field as PField
from pydantic import field_validator, model_validator

from dinocell_core.config import StrictModel

#: most channels one model reads: the input planes of a fluorescent_stack backbone (an RGB backbone takes 3)
MAX_MODEL_CHANNELS = 5
#: label sources a decoder may train on, in the order a field's masks are preferred (the labels store's SOURCES)
LABEL_SOURCES = ("corrected", "imported", "auto")

DEFAULT_PEAK_THRESHOLD = 0.47
DEFAULT_FILL_THRESHOLD = 0.09
DEFAULT_MIN_SIZE = 0
DEFAULT_GROW_THRESHOLD = 0.01
#: growth stops below this fraction of a cell's ring value 1/R; 0.5 measured best on the demo network (with the
#: slope rule below 0.35–0.75 are within 0.005 mean AP there), tuned per model after training
DEFAULT_RING_FRACTION = 0.5
MARKER_CONNECTIVITY = 2
MIN_MARKER_SIZE = 3
#: growth takes a pixel only while the map still falls toward it at ≥ this fraction of the cell's own slope 1/R
#: per px (a perfect map falls at 1/R up to the border; a blurred map's tail beyond it falls at ~0.3–0.7/R).
#: 0.8 measured on perfect, blurred and noisy synthetic maps (docs/segmentation.md, "Growth back to the border");
#: the default of the ``slope`` threshold, tuned per model after training
GROWTH_SLOPE = 0.8


class SegDataConfig(StrictModel):
    """Where annotated images come from (one source per config section)."""

    format: Literal["pairs", "folders", "livecell", "jump"]
    path: str
    images_dir: str | None = None  # livecell: image folder; default: found next to the JSON or in images/...
    channel: str | int | None = None  # jump: channel name/number; others: index into a multichannel image
    channels: list[str] | None = None  # jump: several channels one model reads, in this order (e.g. [DNA, RNA])
    labels: str | None = None  # jump: labels store (default: the tree's ground_truth/ store, as the fixture writes)
    corrected_only: bool = False  # jump: train only on fields a person corrected (else corrected come first)
    label_sources: list[Literal["corrected", "imported", "auto"]] | None = None  # jump: only masks of these sources
    max_images: int | None = PField(None, ge=1)
    low: float = PField(1.0, ge=0, lt=100)
    high: float = PField(99.8, gt=0, le=100)

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else check_model_channels(v, "data.channels")

    @model_validator(mode="after")
    def _check(self) -> "SegDataConfig":
        if self.low >= self.high:
            raise ValueError("low percentile must be below high")
        if self.format == "jump" and (self.channel is None) == (self.channels is None):
            raise ValueError("format 'jump' needs channel (e.g. DNA, Mito, brightfield) or channels (e.g. [DNA, RNA]), "
                             "not both")
        if self.label_sources is not None and not self.label_sources:
            raise ValueError("data.label_sources must list at least one of corrected, imported, auto (or be omitted)")
        if self.label_sources is not None and self.corrected_only:
            raise ValueError("data.corrected_only and data.label_sources both choose label sources; keep one "
                             "(label_sources=[corrected] is corrected_only)")
        if self.format != "jump" and self.channel is not None:
            if not str(self.channel).strip().isdigit():
                raise ValueError(f"channel for format {self.format!r} is an image channel index (0, 1, ...), "
                                 f"not {self.channel!r}")
        if self.format != "jump" and (self.labels is not None or self.corrected_only or self.label_sources
                                      or self.channels is not None):
            raise ValueError("labels, corrected_only, label_sources and channels apply to format 'jump' only")
        return self

    def model_channels(self) -> list[str]:
        """The JUMP channel names the model reads (one for ``channel``, several for ``channels``)."""
        from dinocell_core.jump.channels import CHANNELS, channel_number

        if self.channels is not None:
            return list(self.channels)
        return [CHANNELS[channel_number(self.channel)]] if self.channel is not None else []


def check_model_channels(channels: list[str], key: str) -> list[str]:
    """Canonical JUMP names of the channels one model reads: 1 to ``MAX_MODEL_CHANNELS``, no repeats."""
    from dinocell_core.jump.channels import CHANNELS, channel_number

    if not channels:
        raise ValueError(f"{key} must list at least one channel")
    if len(channels) > MAX_MODEL_CHANNELS:
        raise ValueError(f"{key} lists {len(channels)} channels; a model reads at most {MAX_MODEL_CHANNELS} (the "
                         "input planes of a fluorescent_stack backbone; 3 for an RGB backbone)")
    names = [CHANNELS[channel_number(c)] for c in channels]
    if len(set(names)) != len(names):
        raise ValueError(f"{key} repeats a channel: {channels}")
    return names


def channels_label(channels: list[str]) -> str:
    """How a model's channels are shown and named: ``DNA``, ``DNA+RNA``."""
    return "+".join(channels)


def bundle_channels(meta: dict[str, Any]) -> list[str]:
    """The channels a bundle reads: ``channels`` (multichannel bundles), else its one ``channel`` (every bundle
    written before multichannel models existed)."""
    chans = meta.get("channels")
    if isinstance(chans, list) and chans:
        return [str(c) for c in chans]
    return [str(meta.get("channel"))]


def objects_for(channels: list[str]) -> str:
    """What a JUMP model learns: nuclei when it reads DNA alone, cells when it reads any other channel."""
    from dinocell_core.jump.channels import channel_number

    return "nuclei" if [channel_number(c) for c in channels] == [5] else "cells"


class SegAugmentConfig(StrictModel):
    """Augmentation of training tiles (the ``augment`` section of a decoder config)."""

    flips: bool = True
    rot90: bool = True
    scale: tuple[float, float] = (0.8, 1.25)
    intensity: float = PField(0.1, ge=0, le=1)  # brightness shift and contrast gain jitter
    gamma: tuple[float, float] = (0.8, 1.25)
    invert_p: float = PField(0.0, ge=0, le=1)  # phase ↔ dark-field invariance (brightfield models)

    @model_validator(mode="after")
    def _ranges(self) -> "SegAugmentConfig":
        for key in ("scale", "gamma"):
            lo, hi = getattr(self, key)
            if not 0 < lo <= hi:
                raise ValueError(f"{key} must be a range [low, high] with 0 < low ≤ high")
        return self


class BackboneSection(StrictModel):
    arch: str = "vit_small"
    patch_size: int = PField(8, ge=1)
    weights: str | None = None  # official .pth, pretraining run dir/checkpoint, or safetensors export
    kwargs: dict[str, Any] = PField(default_factory=dict)  # extra load_backbone arguments (tiny test archs)
    finetune_blocks: int = PField(0, ge=0)  # 0 = frozen backbone

    @model_validator(mode="after")
    def _arch(self) -> "BackboneSection":
        from dinocell_core.backbones.archs import check_backbone

        check_backbone(self.arch, self.patch_size, self.kwargs, "backbone", key="backbone")
        return self


class DecoderSection(StrictModel):
    layers: list[int] | None = None  # backbone blocks to read; default 4 evenly spaced ending at the last
    width: int = PField(128, ge=8)
    stem_width: int = PField(16, ge=4)


class ModelSection(StrictModel):
    """Where a decoder run starts: a fresh decoder on ``backbone``, or a model bundle to fine-tune."""

    # a bundle to fine-tune (its backbone and decoder weights; backbone.weights is then not read). Its architecture
    # and channels must be the config's; the run writes before/after AP on the held-out fields (RUN/finetune.json)
    init_bundle: str | None = None


class DecoderTrainSection(StrictModel):
    """The ``train:`` section of a decoder config (pretraining's is ``ssl.config.TrainSection``)."""

    steps: int = PField(20000, ge=1)  # per channel
    batch_size: int = PField(8, ge=1)
    tile_size: int = PField(256, ge=16)
    lr: float = PField(1e-4, gt=0)
    backbone_lr: float = PField(1e-5, ge=0)
    weight_decay: float = PField(0.05, ge=0)
    warmup_steps: int = PField(250, ge=0)
    eval_every: int = PField(500, ge=1)
    checkpoint_every: int = PField(500, ge=1)
    log_every: int = PField(20, ge=1)
    keep_last: int = PField(3, ge=1)
    device: str = "auto"
    threads: int | None = PField(None, ge=1)  # CPU threads for torch (None: torch's default)


class ThresholdSection(StrictModel):
    """Post-processing of the distance map (see ``seg.distance.labels_from_distance``)."""

    peak: float = PField(DEFAULT_PEAK_THRESHOLD, gt=0, lt=1)  # markers: map > peak
    fill: float = PField(DEFAULT_FILL_THRESHOLD, ge=0, lt=1)  # cores: watershed inside map > fill
    grow: float = PField(DEFAULT_GROW_THRESHOLD, ge=0, lt=1)  # cores grow back into map > grow (= fill: off)
    ring: float = PField(DEFAULT_RING_FRACTION, gt=0, le=1)  # ... and above ring × their own ring value 1/R
    slope: float = PField(GROWTH_SLOPE, ge=0, le=1)  # ... while the map falls at ≥ slope × 1/R per px (0: any fall)
    min_size: int = PField(DEFAULT_MIN_SIZE, ge=0)  # objects below this many px are dropped

    @model_validator(mode="after")
    def _order(self) -> "ThresholdSection":
        if not self.grow <= self.fill < self.peak:
            raise ValueError(f"thresholds need grow ≤ fill < peak, got {self.grow} / {self.fill} / {self.peak}")
        return self


class InferenceSection(StrictModel):
    overlap: int = PField(32, ge=0)
    batch_size: int = PField(8, ge=1)
    thresholds: ThresholdSection = PField(default_factory=ThresholdSection)
    tune_thresholds: bool = True  # after training: search peak/fill/grow/ring/slope/min_size on the validation images


#: the validation search after decoder training (``seg.tune``): every (peak, fill, grow) combination, then ring,
#: then slope (for the best and, when that does not grow, for the best growing combination), then min_size
TUNE_PEAK = (0.3, 0.4, 0.47, 0.55, 0.65)
TUNE_FILL = (0.05, 0.09, 0.15, 0.25)
TUNE_GROW = (DEFAULT_GROW_THRESHOLD, 0.04, None)  # None: grow = fill (no growth)
TUNE_RING = (0.4, 0.5, 0.6, 0.75)  # searched for the best (peak, fill, grow)
TUNE_SLOPE = (0.5, 0.65, 0.8, 0.9, 1.0)  # then for the best ring (higher: stops earlier in a blurred map's tail)
TUNE_MIN_SIZE = (0, 5, 15, 40)


class DecoderConfig(StrictModel):
    """The ``train-decoder`` config (see configs/decoder_*.yaml)."""

    name: str = "dinocell"
    seed: int = PField(0, ge=0, le=2**32 - 1)
    backbone: BackboneSection = PField(default_factory=BackboneSection)
    decoder: DecoderSection = PField(default_factory=DecoderSection)
    model: ModelSection = PField(default_factory=ModelSection)
    data: SegDataConfig
    # loop: one model per entry (overrides data.channel / data.channels); an entry is a channel or a list of channels
    # one model reads together, e.g. [Mito, RNA, DNA, [DNA, RNA]]
    channels: list[str | list[str]] | None = None
    val_data: SegDataConfig | None = None  # held-out set; default: val_fraction of data
    val_fraction: float = PField(0.2, gt=0, lt=1)
    augment: SegAugmentConfig = PField(default_factory=SegAugmentConfig)
    train: DecoderTrainSection = PField(default_factory=DecoderTrainSection)
    inference: InferenceSection = PField(default_factory=InferenceSection)
    models_dir: str | None = None  # default: RUN/models
    modality: Literal["fluorescence", "brightfield", "phase", "other"] | None = None

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[str | list[str]] | None) -> list[str | list[str]] | None:
        if v is None:
            return None
        return [check_model_channels(c, f"channels[{i}]") if isinstance(c, list) else c for i, c in enumerate(v)]

    @model_validator(mode="after")
    def _check(self) -> "DecoderConfig":
        t = self.train.tile_size
        if t % self.backbone.patch_size:
            raise ValueError(f"train.tile_size {t} must be a multiple of backbone.patch_size "
                             f"{self.backbone.patch_size}")
        if t <= 2 * self.inference.overlap:
            raise ValueError(f"inference.overlap {self.inference.overlap} must be below half the tile size {t}")
        if self.channels is not None and not self.channels:
            raise ValueError("channels must list at least one channel (or be omitted)")
        if self.model.init_bundle is not None and len(self.channel_list()) != 1:
            raise ValueError("model.init_bundle fine-tunes one model: give one channel (or channels list), not a "
                             f"loop of {len(self.channel_list())}")
        return self

    def channel_list(self) -> list[str | list[str] | None]:
        """One entry per model the run trains: a channel, a list of channels read together, or None (not JUMP)."""
        if self.channels:
            return list(self.channels)
        if self.data.channels is not None:
            return [list(self.data.channels)]
        return [None if self.data.channel is None else str(self.data.channel)]


#: keys a resumed decoder run may change (everything else must match its config.yaml / checkpoint): logging,
#: checkpointing and where it runs, never what it learns or how it is scored
RESUMABLE_CHANGES = ("train.log_every", "train.checkpoint_every", "train.keep_last", "train.device", "train.threads",
                     "inference.batch_size")
