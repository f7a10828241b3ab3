"""Inference precision (issue 24 item 5): ``auto | fp32 | bf16`` resolved once, the segmentation network really
computing in bf16 under ``bf16`` (CPU autocast takes the path a GPU takes), and its labels equal to fp32's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dinocell_core.config import ConfigError
from dinocell_core.device import resolve_precision
from dinocell_core.seg.inference import CPU_BATCH, Segmenter, default_batch_size
from dinocell_core.seg.metrics import f1_score
from dinocell_core.synthetic.fixture import make_field
from tests.helpers.bundles import tiny_dna_bundle

CPU = torch.device("cpu")
#: max |Δ| of the distance map, bf16 against fp32: a quarter of the finest step of the thresholds' validation grid
#: (fill 0.05 → 0.09, seg.config.TUNE_FILL), so bf16 moves no pixel across a threshold by more than a fraction of what
#: the search distinguishes (measured: ≤ 0.009 on these fields)
MAX_DISTANCE_DELTA = 0.01
#: F1 at IoU 0.5 of the bf16 labels matched to the fp32 labels. The conftest models trained 6 steps: their maps are
#: flat (0.1–0.65) and every object sits within a few hundredths of the peak threshold, so a rounding of 0.005 may
#: split or merge one of its ~20 objects per field (measured 0.93–1.0; a decoder trained 40 steps, whose map is
#: sharp, agrees at 1.0). A trained model only agrees better.
MIN_LABEL_F1 = 0.9


def test_precision_names_resolve_and_bad_ones_are_errors() -> None:
    assert resolve_precision("auto", CPU).dtype is None and resolve_precision("auto", CPU).name == "fp32"
    assert resolve_precision("fp32", CPU).dtype is None
    assert resolve_precision(" BF16 ", CPU).dtype == torch.bfloat16 and resolve_precision("bf16", CPU).name == "bf16"
    for bad in ("fp16", "half", "", "bfloat16"):
        with pytest.raises(ConfigError, match="precision must be auto, fp32, bf16"):
            resolve_precision(bad, CPU)
    with pytest.raises(ConfigError, match="--precision"):
        resolve_precision("fp16", CPU, key="--precision")
    # a device without native bfloat16 (here the meta device) refuses bf16 instead of running fp32 silently
    with pytest.raises(ConfigError, match="precision is 'bf16' but meta has no native bfloat16"):
        resolve_precision("bf16", torch.device("meta"))
    assert resolve_precision("auto", torch.device("meta")).dtype is None


def test_default_batch_size_on_cpu_and_command_line_defaults(tmp_path: Path) -> None:
    from dinocell_core.commands import build_parser

    assert default_batch_size(CPU, 256) == default_batch_size(CPU, 64) == CPU_BATCH == 4
    bundle = tiny_dna_bundle(tmp_path, "t")
    assert Segmenter(bundle, device="cpu").batch_size == CPU_BATCH
    assert Segmenter(bundle, device="cpu", batch_size=7).batch_size == 7
    with pytest.raises(ConfigError, match="precision"):
        Segmenter(bundle, device="cpu", precision="fp16")
    parser = build_parser()
    for argv in (["segment", str(bundle), "x.tif", "-o", "out"], ["segment-plate", "models", "root", "-o", "out"]):
        args = parser.parse_args(argv)
        assert (args.precision, args.batch_size, args.device) == ("auto", None, "auto")
        assert parser.parse_args([*argv, "--precision", "bf16"]).precision == "bf16"
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--precision", "fp16"])


def _dtypes_seen(seg: Segmenter, image: np.ndarray) -> dict[str, set[torch.dtype]]:
    """The output dtypes of the backbone's Linear layers (those called as modules: timm's qkv with split biases is
    not) and of the decoder's head convolution during one pass."""
    assert seg.model is not None
    seen: dict[str, set[torch.dtype]] = {"linear": set(), "head": set()}
    linears = [m for m in seg.model.backbone.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [m.register_forward_hook(lambda m, i, o: seen["linear"].add(o.dtype)) for m in linears]
    hooks.append(seg.model.head.register_forward_hook(lambda m, i, o: seen["head"].add(o.dtype)))
    try:
        dist = seg.predict_distance(image)
    finally:
        for h in hooks:
            h.remove()
    assert dist.dtype == np.float32 and dist.shape == image.shape  # blending and watershed stay fp32
    return seen


def test_bf16_runs_the_network_in_bfloat16_and_fp32_does_not(tmp_path: Path) -> None:
    bundle = tiny_dna_bundle(tmp_path, "t")
    image = np.random.default_rng(0).integers(0, 4000, (48, 48)).astype(np.uint16)
    bf16 = _dtypes_seen(Segmenter(bundle, device="cpu", precision="bf16"), image)
    fp32 = _dtypes_seen(Segmenter(bundle, device="cpu", precision="fp32"), image)
    auto = _dtypes_seen(Segmenter(bundle, device="cpu"), image)  # auto on a CPU: fp32
    assert bf16 == {"linear": {torch.bfloat16}, "head": {torch.bfloat16}}
    assert fp32 == auto == {"linear": {torch.float32}, "head": {torch.float32}}
    # the parameters themselves stay fp32 (autocast casts per op), so one model serves both precisions
    assert all(p.dtype == torch.float32 for p in Segmenter(bundle, precision="bf16").model.parameters())


def test_bf16_distance_and_labels_equal_fp32(models_dir: Path) -> None:
    """Two 128² fixture fields, one 128-px tile each (bf16 convolutions are slow on a CPU without AVX512-BF16)."""
    path = models_dir / "demo-DNA.safetensors"
    segs = {p: Segmenter(path, device="cpu", tile_size=128, overlap=0, precision=p) for p in ("fp32", "bf16")}
    pairs, deltas, foreground = [], [], []
    for seed in (0, 2):
        dna = make_field(size=128, seed=seed)[0][4]
        d32, d16 = (segs[p].predict_distance(dna) for p in ("fp32", "bf16"))
        deltas.append(float(np.abs(d32 - d16).max()))
        l32, l16 = segs["fp32"].labels(d32), segs["bf16"].labels(d16)
        assert l32.max() >= 10  # enough objects for the F1 to mean something
        pairs.append((l32, l16))
        foreground.append(float(((l32 > 0) == (l16 > 0)).mean()))
    assert 0 < max(deltas) <= MAX_DISTANCE_DELTA, deltas  # > 0: bf16 really ran
    f1s = [f1_score(a, b)[0] for a, b in pairs]
    assert min(f1s) >= MIN_LABEL_F1, f1s
    assert min(foreground) >= 0.98, foreground
