"""Decoder training: distance-map regression (sigmoid + MSE) on a pretrained backbone, one model per channel.

One run directory covers the whole channel list (``channels``): steps count globally, every metrics record names
its channel, checkpoints carry the channel index, so a killed run resumes inside the channel it was training. The
best validation model of each channel (AP@0.5 on held-out images) is exported as a bundle into ``models_dir``;
its post-processing thresholds are then tuned on the same held-out images and written into the bundle.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinocell_core.config import check_resume_changes, config_to_dict
from dinocell_core.device import resolve_device
from dinocell_core.io.checkpoint import CheckpointManager, load_state
from dinocell_core.runs.records import validation_record
from dinocell_core.runs.rundir import RunDir
from dinocell_core.runs.stopping import StopRequest
from dinocell_core.schedules import warmup_cosine
from dinocell_core.backbones.archs import ArchitectureError
from dinocell_core.io.fsutil import atomic_write_json
from dinocell_core.seg.bundle import (
    BundleError,
    load_bundle,
    restore_aliases,
    save_bundle,
    unique_state,
)
from dinocell_core.seg.config import RESUMABLE_CHANGES, DecoderConfig, SegDataConfig, channels_label
from dinocell_core.seg.data import (
    SegSample,
    load_samples,
    prepare_samples,
    split_corrected,
    split_samples,
    tile_batch,
)
from dinocell_core.seg.decoder import DistanceDecoder, set_trainable
from dinocell_core.seg.distance import resolve_thresholds
from dinocell_core.seg.finetune import FINETUNE_JSON
from dinocell_core.seg.inference import run_tiled
from dinocell_core.seg.tune import score_thresholds, tune_thresholds

log = logging.getLogger(__name__)


Channel = str | list[str] | None  # one entry of DecoderConfig.channel_list(): a channel, channels read together, None


def _channel_data(cfg: SegDataConfig, channel: Channel) -> SegDataConfig:
    if channel is None:
        return cfg
    if isinstance(channel, list):
        return cfg.model_copy(update={"channel": None, "channels": list(channel)})
    return cfg.model_copy(update={"channel": channel, "channels": None})


def _label(channel: Channel) -> str | None:
    """A model's channel as shown and named (``DNA``, ``DNA+RNA``); None for a non-JUMP model."""
    return channels_label(channel) if isinstance(channel, list) else channel


def build_model(cfg: DecoderConfig, in_channels: int = 1) -> DistanceDecoder:
    """A fresh decoder on ``backbone.weights``; a model reading ``in_channels`` > 1 channels needs a backbone of at
    least that many input planes (the error names the weights file and data.channels)."""
    from dinocell_core.backbones.loading import load_backbone

    bb = load_backbone(cfg.backbone.arch, patch_size=cfg.backbone.patch_size, weights=cfg.backbone.weights,
                       **cfg.backbone.kwargs)
    try:
        return DistanceDecoder(bb, layers=cfg.decoder.layers, width=cfg.decoder.width,
                               stem_width=cfg.decoder.stem_width, in_channels=in_channels)
    except ArchitectureError as exc:
        raise ArchitectureError(f"backbone.weights {cfg.backbone.weights or '(random init)'}: {exc}") from None


def init_from_bundle(cfg: DecoderConfig, channel: Channel, device: torch.device) -> DistanceDecoder:
    """The model of ``model.init_bundle``, checked against the config: the same channels, backbone and decoder,
    so the fine-tuned bundle's metadata (written from the config) describes its weights."""
    path = Path(str(cfg.model.init_bundle))
    bundle = load_bundle(path)
    meta = bundle.metadata
    want = _channel_data(cfg.data, channel).model_channels() if cfg.data.format == "jump" else [str(meta["channel"])]
    if bundle.channels != want:
        raise BundleError(f"{path} (model.init_bundle) reads {channels_label(bundle.channels)}, the config's data "
                          f"reads {channels_label(want)}; set data.channel / data.channels to the bundle's")
    bb, dec = meta["backbone"], meta["decoder"]
    checks = {"backbone.arch": (bb.get("arch"), cfg.backbone.arch),
              "backbone.patch_size": (bb.get("patch_size"), cfg.backbone.patch_size),
              "backbone.kwargs": (bb.get("kwargs") or {}, cfg.backbone.kwargs),
              "decoder.width": (dec.get("width"), cfg.decoder.width),
              "decoder.stem_width": (dec.get("stem_width"), cfg.decoder.stem_width)}
    if cfg.decoder.layers is not None:
        checks["decoder.layers"] = (dec.get("layers"), cfg.decoder.layers)
    for key, (theirs, mine) in checks.items():
        if theirs != mine:
            raise BundleError(f"{path} (model.init_bundle) has {key} {theirs!r}, the config {mine!r}; fine-tuning "
                              "keeps the bundle's architecture: set the config's to match")
    return bundle.build_model(device)


def finetune_scores(before: Path, after: Path, samples: list[SegSample], cfg: DecoderConfig,
                    device: torch.device) -> dict[str, Any]:
    """AP@0.5/0.75 of the starting bundle and the fine-tuned one on the held-out fields (each with its own
    thresholds), plus the starting model with thresholds tuned on those fields, as the new one's were: the gain
    the weights brought, apart from what a threshold search alone would give."""
    truths, crowds = [s.labels for s in samples], [s.ignore for s in samples]
    out: dict[str, Any] = {"init_bundle": str(before), "bundle": str(after), "held_out": [s.name for s in samples]}
    for key, path in (("before", before), ("after", after)):
        bundle = load_bundle(path)
        maps = validation_maps(bundle.build_model(device), samples, cfg, device)
        own = score_thresholds(maps, truths, bundle.thresholds, crowds)
        out[key] = {"ap@0.50": own["ap@0.50"], "ap@0.75": own["ap@0.75"], "ap_mean": own["ap_mean"]}
        if key == "before":
            tuned = tune_thresholds(maps, truths, crowds=crowds, start=resolve_thresholds(bundle.thresholds))["metrics"]
            out["before_tuned"] = {"ap@0.50": tuned["ap@0.50"], "ap@0.75": tuned["ap@0.75"],
                                   "ap_mean": tuned["ap_mean"]}
    return out


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup (the first step already learns), then cosine decay towards 0 at the last step."""
    return warmup_cosine(step + 1, total + 1, 1.0, 0.0, warmup)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """MSE over the pixels with weight > 0 (crowd regions carry weight 0); plain MSE when all weights are 1."""
    return (weight * (pred - target) ** 2).sum() / weight.sum().clamp_min(1.0)


def make_optimizer(model: DistanceDecoder, cfg: DecoderConfig) -> torch.optim.Optimizer:
    set_trainable(model, cfg.backbone.finetune_blocks)
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    bb = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": cfg.train.lr, "base_lr": cfg.train.lr}]
    if bb:
        groups.append({"params": bb, "lr": cfg.train.backbone_lr, "base_lr": cfg.train.backbone_lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)


def train_mode(model: DistanceDecoder, finetune_blocks: int) -> None:
    """Decoder in train mode; a frozen backbone stays in eval mode (no dropout/drop-path noise on its features)."""
    model.train()
    if finetune_blocks == 0:
        model.backbone.eval()


@torch.no_grad()
def validation_maps(model: torch.nn.Module, samples: list[SegSample], cfg: DecoderConfig,
                    device: torch.device) -> list[np.ndarray]:
    """Distance maps of the held-out images, tiled exactly as inference tiles them."""
    model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    return [run_tiled(predict, s.image, cfg.train.tile_size, cfg.inference.overlap, cfg.inference.batch_size,
                      model.patch_size) for s in samples]


def validate(model: DistanceDecoder, samples: list[SegSample], cfg: DecoderConfig,
             device: torch.device) -> dict[str, float]:
    """Segment the held-out images exactly as inference will (tiling, thresholds) and score them, pooled."""
    maps = validation_maps(model, samples, cfg, device)
    return score_thresholds(maps, [s.labels for s in samples], cfg.inference.thresholds.model_dump(),
                            [s.ignore for s in samples])


def tune_bundle(bundle_path: Path, samples: list[SegSample], cfg: DecoderConfig, device: torch.device) -> dict:
    """Search the thresholds for the exported (best) model on the validation images; rewrite its bundle with
    them, their scores and the search record. Idempotent, so a run killed here redoes it on resume."""
    bundle = load_bundle(bundle_path)
    model = bundle.build_model(device)
    maps = validation_maps(model, samples, cfg, device)
    truths, crowds = [s.labels for s in samples], [s.ignore for s in samples]
    configured = cfg.inference.thresholds.model_dump()
    before = score_thresholds(maps, truths, configured, crowds)
    result = tune_thresholds(maps, truths, crowds=crowds, start=configured)
    meta = {k: v for k, v in bundle.metadata.items() if k not in ("format", "aliases")}
    meta["thresholds"] = result["thresholds"]
    meta["validation_metrics"] = result["metrics"]
    meta["threshold_search"] = {"objective": "ap_mean, then seg", "images": len(samples),
                                "configured": configured, "configured_metrics": before, "tried": result["tried"]}
    save_bundle(bundle_path, model, meta)
    log.info("thresholds tuned on %d validation images: %s (mean AP %.3f → %.3f, SEG %.3f → %.3f)",
             len(samples), result["thresholds"], before["ap_mean"], result["metrics"]["ap_mean"], before["seg"],
             result["metrics"]["seg"])
    return result


def _summary(samples: list[SegSample]) -> dict[str, Any]:
    return {"images": len(samples), "cells": int(sum(int(len(np.unique(s.labels))) - 1 for s in samples)),
            "pixels": int(sum(s.labels.size for s in samples))}


def bundle_metadata(cfg: DecoderConfig, channel: Channel, train: list[SegSample], val: list[SegSample],
                    val_metrics: dict[str, Any], step: int, layers: list[int], planes: int = 3) -> dict[str, Any]:
    """What a bundle says about itself. ``channels`` (the JUMP channels read, in input order) is written for JUMP
    models; ``channel`` stays one text (``DNA+RNA`` for several) so bundles stay readable by older code."""
    label = _label(channel)
    ch = label if label is not None else "any"
    init = cfg.model.init_bundle
    name = f"{cfg.name}-{ch}" if channel is not None else cfg.name
    meta: dict[str, Any] = {
        "name": f"{name}-finetuned" if init else name,
        "channel": ch,
        "modality": cfg.modality or _modality(channel),
        "backbone": {"arch": cfg.backbone.arch, "patch_size": cfg.backbone.patch_size,
                     "source": init or cfg.backbone.weights, "kwargs": cfg.backbone.kwargs,
                     "finetuned_blocks": cfg.backbone.finetune_blocks, "in_chans": planes},
        "decoder": {"layers": list(layers),
                    "width": cfg.decoder.width, "stem_width": cfg.decoder.stem_width},
        "preprocessing": {"normalisation": "percentile", "low": cfg.data.low, "high": cfg.data.high,
                          "channel_index": None if cfg.data.format == "jump" else cfg.data.channel},
        "thresholds": cfg.inference.thresholds.model_dump(),
        "tile_size": cfg.train.tile_size,
        "overlap": cfg.inference.overlap,
        "training_data": {"format": cfg.data.format, "path": cfg.data.path, "train": _summary(train),
                          "val": _summary(val), "labels": cfg.data.labels,
                          "fields": _field_names(cfg, train)},
        "validation_metrics": val_metrics,
        "step": step,
        "created_at": time.time(),
    }
    if cfg.data.format == "jump" and channel is not None:
        meta["channels"] = _channel_data(cfg.data, channel).model_channels()
    if init:
        meta["training_data"]["label_sources"] = cfg.data.label_sources
        meta["init_bundle"] = init
    return meta


def _field_names(cfg: DecoderConfig, train: list[SegSample]) -> list[str] | None:
    """The JUMP fields trained on (``models report`` scores the others); None past 20,000, to keep bundles small."""
    if cfg.data.format != "jump" or len(train) > 20000:
        return None
    return [s.name for s in train]


def _modality(channel: Channel) -> str:
    if channel is None:
        return "other"
    from dinocell_core.jump.channels import BRIGHTFIELD, channel_number

    try:
        chans = channel if isinstance(channel, list) else [channel]
        return "brightfield" if all(channel_number(c) in BRIGHTFIELD for c in chans) else "fluorescence"
    except ValueError:
        return "other"


def run_decoder_training(cfg: DecoderConfig, run_dir: str | Path, allow_config_change: bool = False) -> list[Path]:
    """Train (or resume) every channel of ``cfg`` in ``run_dir``; returns the exported bundle paths. A resume must
    keep the checkpoint's config unless ``allow_config_change`` (recorded in the run's config_history.jsonl).

    The run's writer lock is held throughout; a refused start (run busy, resume with a changed config) raises
    before anything in the run directory is written."""
    run = RunDir(run_dir)
    with run.lock():
        run.remove_orphan_temp_files()
        ckpts = CheckpointManager(run.checkpoints_dir, keep_last=cfg.train.keep_last)
        latest = ckpts.resume_point()
        if latest is not None:  # the same check as pretraining: the checkpoint was trained with the old values
            old, source = run.resume_config(latest)
            changes = check_resume_changes(old, cfg, source, RESUMABLE_CHANGES, allow_config_change)
            if changes:
                run.record_config_changes(changes, latest)
        run.write_config(cfg)
        return _run(cfg, run, ckpts, None if latest is None else load_state(latest))


def _run(cfg: DecoderConfig, run: RunDir, ckpts: CheckpointManager, state: dict | None) -> list[Path]:
    channels = cfg.channel_list()
    total = cfg.train.steps * len(channels)
    models_dir = Path(cfg.models_dir) if cfg.models_dir else run.path / "models"
    status = run.read_status()
    run.update_status(state="running", kind="decoder", total_steps=total, error=None,
                      started_at=status.get("started_at", time.time()), step=status.get("step", 0))
    device = resolve_device(cfg.train.device, key="train.device")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        with StopRequest() as stop:
            exported = _train_channels(cfg, run, ckpts, state, channels, total, models_dir, device, stop)
        if stop.requested:
            run.update_status(state="stopped")
        else:
            run.update_status(state="finished", step=total, eta_s=0)
        return exported
    except BaseException as exc:
        run.update_status(state="failed", error=f"{type(exc).__name__}: {exc}")
        raise


def _train_channels(cfg: DecoderConfig, run: RunDir, ckpts: CheckpointManager, state: dict | None,
                    channels: list[Channel], total: int, models_dir: Path, device: torch.device,
                    stop: StopRequest) -> list[Path]:
    start_ci = int(state["channel_index"]) if state else 0
    exported: list[Path] = [Path(p) for p in (state or {}).get("exported", [])]
    run.truncate_metrics_after(int(state["step"]) if state else 0)  # a run killed before its first checkpoint too
    if state:
        log.info("resuming at step %d (channel %s)", state["step"], channels[start_ci])
    for ci in range(start_ci, len(channels)):
        channel = channels[ci]
        resume = state if (state and ci == start_ci) else None
        path = _train_one(cfg, run, ckpts, resume, ci, channel, total, models_dir, device, stop, exported)
        if stop.requested:
            return exported
        exported.append(path)
    return exported


def _train_one(cfg: DecoderConfig, run: RunDir, ckpts: CheckpointManager, resume: dict | None, ci: int,
               channel: Channel, total: int, models_dir: Path, device: torch.device, stop: StopRequest,
               exported: list[Path]) -> Path:
    tc = cfg.train
    data_cfg = _channel_data(cfg.data, channel)
    samples = load_samples(data_cfg)
    if cfg.val_data is not None:
        train_s, val_s = samples, load_samples(_channel_data(cfg.val_data, channel))
    elif data_cfg.label_sources is not None and "corrected" in data_cfg.label_sources:
        train_s, val_s = split_corrected(samples, cfg.val_fraction, cfg.seed)
    else:
        train_s, val_s = split_samples(samples, cfg.val_fraction, cfg.seed)
    prepared = prepare_samples(train_s)
    log.info("channel %s: %d training / %d validation images", _label(channel), len(train_s), len(val_s))

    torch.manual_seed(cfg.seed + ci)
    n_in = len(data_cfg.model_channels()) if data_cfg.format == "jump" else 1
    model = (init_from_bundle(cfg, channel, device) if cfg.model.init_bundle
             else build_model(cfg, n_in).to(device))
    opt = make_optimizer(model, cfg)
    base = ci * tc.steps
    local = 0
    best = {"ap": -1.0, "step": -1, "metrics": {}}
    rng = np.random.default_rng([cfg.seed, ci])
    if resume is not None:
        aliases = unique_state(model.state_dict())[1]  # modules registered twice were saved once
        model.load_state_dict(restore_aliases(resume["model"], aliases), strict=True)
        opt.load_state_dict(resume["optimizer"])
        local = int(resume["step"]) - base
        best = resume["best"]
        rng.bit_generator.state = _rng_state_from(resume["rng"])
    name = bundle_metadata(cfg, channel, train_s, val_s, {}, 0, model.layers)["name"]
    label = _label(channel)
    bundle_path = models_dir / f"{name}.safetensors"
    t_last, n_last = time.perf_counter(), 0

    def checkpoint(step_local: int) -> None:
        p = ckpts.save(base + step_local, {
            "step": base + step_local, "channel_index": ci, "model": unique_state(model.state_dict())[0],
            "optimizer": opt.state_dict(), "best": best, "rng": _rng_state_to(rng),
            "exported": [str(x) for x in exported], "config": config_to_dict(cfg)})
        run.update_status(last_checkpoint=str(p))

    while local < tc.steps:
        if stop.requested:
            checkpoint(local)
            return bundle_path
        train_mode(model, cfg.backbone.finetune_blocks)
        f = lr_factor(local, tc.steps, tc.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
        x, y, w = tile_batch(prepared, tc.batch_size, tc.tile_size, rng, cfg.augment)
        xt, yt, wt = (torch.from_numpy(a).to(device) for a in (x, y, w))
        loss = weighted_mse(model(xt), yt, wt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        local += 1
        n_last += tc.batch_size
        step = base + local
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"step {step}: loss is {loss.item()} (lower train.lr?)")
        if local % tc.log_every == 0 or local == tc.steps:
            now = time.perf_counter()
            sps = n_last / max(now - t_last, 1e-9)
            t_last, n_last = now, 0
            eta = (total - step) * tc.batch_size / max(sps, 1e-9)
            run.append_metrics({"step": step, "channel": label, "loss": loss.item(), "lr": opt.param_groups[0]["lr"],
                                "samples_per_s": sps})
            run.update_status(step=step, samples_per_s=sps, eta_s=eta)
        if local % tc.eval_every == 0 or local == tc.steps:
            metrics = validate(model, val_s, cfg, device)
            run.append_metrics({"step": step, "channel": label, **validation_record(metrics)})
            log.info("step %d channel %s: val AP@0.5 %.3f SEG %.3f DET %.3f", step, label, metrics["ap@0.50"],
                     metrics["seg"], metrics["det"])
            if metrics["ap@0.50"] > best["ap"]:
                best = {"ap": metrics["ap@0.50"], "step": step, "metrics": metrics}
                meta = bundle_metadata(cfg, channel, train_s, val_s, metrics, step, model.layers, model.planes)
                save_bundle(bundle_path, model, meta)
        if local % tc.checkpoint_every == 0 or local == tc.steps:
            checkpoint(local)
    if cfg.inference.tune_thresholds:
        result = tune_bundle(bundle_path, val_s, cfg, device)
        run.append_metrics({"step": base + local, "channel": label, "tuned_thresholds": result["thresholds"],
                            **validation_record(result["metrics"], tuned=True)})
    if cfg.model.init_bundle:
        record_finetune(run, bundle_path, finetune_scores(Path(cfg.model.init_bundle), bundle_path, val_s, cfg,
                                                          device))
    return bundle_path


def record_finetune(run: RunDir, bundle_path: Path, scores: dict[str, Any]) -> None:
    """Before/after AP into RUN/finetune.json and into the new bundle's metadata (``finetune``), so the CLI and the
    napari model list read the same figures."""
    atomic_write_json(run.path / FINETUNE_JSON, scores)
    bundle = load_bundle(bundle_path)
    meta = {k: v for k, v in bundle.metadata.items() if k not in ("format", "aliases")}
    meta["finetune"] = {k: v for k, v in scores.items() if k != "bundle"}
    save_bundle(bundle_path, bundle.build_model(), meta)
    b, a = scores["before"], scores["after"]
    log.info("fine-tuned on %d held-out fields: AP@0.5 %.3f → %.3f, AP@0.75 %.3f → %.3f", len(scores["held_out"]),
             b["ap@0.50"], a["ap@0.50"], b["ap@0.75"], a["ap@0.75"])


def _rng_state_to(rng: np.random.Generator) -> dict[str, Any]:
    st = rng.bit_generator.state
    return {"bit_generator": st["bit_generator"], "state": str(st["state"]["state"]),
            "inc": str(st["state"]["inc"]), "has_uint32": st["has_uint32"], "uinteger": st["uinteger"]}


def _rng_state_from(d: dict[str, Any]) -> dict[str, Any]:
    return {"bit_generator": d["bit_generator"], "state": {"state": int(d["state"]), "inc": int(d["inc"])},
            "has_uint32": int(d["has_uint32"]), "uinteger": int(d["uinteger"])}

