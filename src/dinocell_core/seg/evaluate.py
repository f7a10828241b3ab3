"""Score a model bundle on an annotated dataset: AP@0.50…0.95, F1, SEG, DET, OP_CSB (pooled over images)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dinocell_core.seg.bundle import Bundle, load_bundle
from dinocell_core.seg.config import SegDataConfig
from dinocell_core.seg.data import detect_format, load_samples
from dinocell_core.seg.metrics import AP_THRESHOLDS, evaluate_pairs


def dataset_config(path: str | os.PathLike[str], bundle: Bundle, channel: str | int | None = None,
                   max_images: int | None = None) -> SegDataConfig:
    """A dataset config for ``path``; the channel defaults to the bundle's (JUMP) or its preprocessing index."""
    fmt = detect_format(path)
    pre = bundle.metadata["preprocessing"]
    if channel is None:
        channel = bundle.channel if fmt == "jump" else pre.get("channel_index")
    extra: dict[str, Any] = {}
    if fmt == "livecell":
        extra["images_dir"] = str(Path(path).parent)
    return SegDataConfig(format=fmt, path=str(path), channel=channel, max_images=max_images, low=float(pre["low"]),
                         high=float(pre["high"]), **extra)


def evaluate_bundle(bundle_path: str | os.PathLike[str], dataset: str | os.PathLike[str] | SegDataConfig,
                    device: str = "cpu", tile_size: int | None = None, batch_size: int = 8,
                    channel: str | int | None = None, max_images: int | None = None,
                    progress: Callable[[int, int], None] | None = None, **thresholds: Any) -> dict[str, Any]:
    """Segment every image of ``dataset`` with the bundle (the inference path users run) and pool the scores."""
    from dinocell_core.seg.inference import Segmenter

    bundle = load_bundle(bundle_path)
    cfg = dataset if isinstance(dataset, SegDataConfig) else dataset_config(dataset, bundle, channel, max_images)
    samples = load_samples(cfg)
    seg = Segmenter(bundle, device=device, tile_size=tile_size, batch_size=batch_size)
    try:
        pairs = []
        for i, s in enumerate(samples):
            # samples were normalised by load_samples with the bundle's percentiles (the same prepare_image)
            dist = seg.predict_prepared(s.image)
            pairs.append((s.labels, seg.labels(dist, **thresholds)))
            if progress is not None:
                progress(i + 1, len(samples))
    finally:
        seg.release()
    scores = evaluate_pairs(pairs, AP_THRESHOLDS).as_dict()
    return {"model": str(bundle_path), "model_name": bundle.name, "channel": bundle.channel,
            "dataset": cfg.path, "format": cfg.format, "thresholds": {**seg.thresholds, **thresholds},
            "metrics": scores}


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table of a result from :func:`evaluate_bundle`."""
    m = result["metrics"]
    lines = [f"model {result['model_name']} ({result['channel']}) on {result['dataset']}: "
             f"{m['n_images']} images, {m['n_gt']} cells",
             f"{'IoU':>6} {'AP':>7} {'F1':>7}"]
    for t in AP_THRESHOLDS:
        lines.append(f"{t:>6.2f} {m[f'ap@{t:.2f}']:>7.3f} {m[f'f1@{t:.2f}']:>7.3f}")
    lines.append(f"mean AP {m['ap_mean']:.3f}   SEG {m['seg']:.3f}   DET {m['det']:.3f}   OP_CSB {m['op_csb']:.3f}")
    return "\n".join(lines)
