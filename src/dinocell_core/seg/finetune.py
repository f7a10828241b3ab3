"""Correct → retrain: the decoder config that fine-tunes a model bundle on a labels store's corrected fields.

The napari "Fine-tune this channel's model on my corrections" button and the CLI
(``train-decoder CONFIG data.labels=STORE data.label_sources=[corrected] model.init_bundle=MODEL``) run the same
trainer; this module builds the config from the bundle itself (its architecture, channels, normalisation, tiling
and thresholds), so a user needs no YAML. The run holds out a share of the corrected fields and writes before/after
AP on them into ``RUN/finetune.json`` and the new bundle (``seg.train.record_finetune``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dinocell_core.errors import DinocellError
from dinocell_core.seg.config import DecoderConfig, bundle_channels

#: fine-tuning steps by default: a few passes over tens of corrected fields
FINETUNE_STEPS = 500
#: a fine-tuning run's before/after scores on its held-out fields (also in the bundle's ``finetune`` metadata)
FINETUNE_JSON = "finetune.json"


class FinetuneError(DinocellError, ValueError):
    """A fine-tuning run cannot start (the message names the store, tree or bundle and why)."""


def corrected_fields(labels: str | os.PathLike[str], root: str | os.PathLike[str], channels: list[str]) -> int:
    """Fields of ``root`` with every channel in ``channels`` that a person corrected in the store ``labels``."""
    from dinocell_core.jump.channels import channel_number
    from dinocell_core.jump.index import load_index
    from dinocell_core.labels.store import LabelStore, field_key

    store = LabelStore.open(labels)
    chans = [channel_number(c) for c in channels]
    return sum(1 for f in load_index(str(root)) if all(c in f.paths for c in chans)
               and store.get(field_key(f), "corrected") is not None)


def finetune_config(bundle: str | os.PathLike[str], root: str | os.PathLike[str], labels: str | os.PathLike[str],
                    steps: int = FINETUNE_STEPS, with_auto: bool = False, val_fraction: float = 0.3,
                    device: str = "auto") -> DecoderConfig:
    """The decoder config that fine-tunes ``bundle`` on the corrected fields of ``labels`` (plus the store's
    CellProfiler-recipe ``auto`` fields when ``with_auto``), holding out ``val_fraction`` of the corrected ones; the
    new bundle is written beside ``bundle`` under a name no other bundle there has. Refused (FinetuneError) when
    the store has fewer than two corrected fields for the bundle's channels: one to train, one to compare on."""
    from dinocell_core.seg.bundle import read_bundle_metadata
    from dinocell_core.seg.distance import resolve_thresholds

    path = Path(bundle)
    meta = read_bundle_metadata(path)
    channels = bundle_channels(meta)
    n = corrected_fields(labels, root, channels)
    if n < 2:
        raise FinetuneError(f"labels store {labels} has {n} corrected field(s) of {root} with "
                            f"{' + '.join(channels)}; correct and save at least 2 (the JUMP browser's Save "
                            "corrections): some train, the others measure before/after")
    bb, dec, pre = meta["backbone"], meta["decoder"], meta["preprocessing"]
    label = "+".join(channels)
    base = str(meta["name"]).removesuffix(f"-{label}").removesuffix("-finetuned").removesuffix(f"-{label}")
    name, k = base, 1
    while (path.parent / f"{name}-{label}-finetuned.safetensors").exists():
        k += 1
        name = f"{base}-v{k}"
    data: dict[str, Any] = {"format": "jump", "path": str(root), "labels": str(labels),
                            "label_sources": ["corrected", "auto"] if with_auto else ["corrected"],
                            "low": pre["low"], "high": pre["high"]}
    data.update({"channels": channels} if len(channels) > 1 else {"channel": channels[0]})
    cfg = {"name": name, "backbone": {"arch": bb["arch"], "patch_size": bb["patch_size"],
                                      "kwargs": bb.get("kwargs") or {},
                                      "finetune_blocks": int(bb.get("finetuned_blocks") or 0)},
           "decoder": {"layers": dec["layers"], "width": dec["width"], "stem_width": dec["stem_width"]},
           "model": {"init_bundle": str(path.resolve())}, "data": data, "val_fraction": val_fraction,
           "train": {"steps": steps, "tile_size": meta["tile_size"], "warmup_steps": min(50, steps // 10),
                     "eval_every": max(1, steps // 5), "checkpoint_every": max(1, steps // 5), "device": device},
           "inference": {"overlap": meta.get("overlap", 0), "thresholds": resolve_thresholds(meta["thresholds"])},
           "models_dir": str(path.parent.resolve())}
    return DecoderConfig.model_validate(json.loads(json.dumps(cfg)))


def read_finetune(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A finished fine-tuning run's before/after scores (``RUN/finetune.json``), or None before it ends."""
    p = Path(run_dir) / FINETUNE_JSON
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
