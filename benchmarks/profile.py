"""Profiling benchmark: embedding throughput per backbone on CPU, and ``profile evaluate`` on a CPJUMP1-sized table.

    python benchmarks/profile.py                     # all figures (ViT-S/8 on CPU takes a while per field)
    python benchmarks/profile.py --skip-vit-s8       # without the slowest backbone
    python benchmarks/profile.py --device cuda       # embedding on a GPU
    python benchmarks/profile.py --skip-tiles --skip-evaluate   # per-cell figures only
    python benchmarks/profile.py --precision --skip-embed --skip-evaluate   # fp32 vs bf16 embedding only

Embedding: 1080×1080 fixture fields, Kim et al.'s 224-px tiles (16 per field), fluorescent mean, CLS; the figure is
fields/s through the whole ``profile embed`` path (TIFF decode, normalisation, tiling, network, aggregation) for
the hand-crafted baseline (``--channels each``: 5 channels × 15 statistics), a random-init ViT-S/16 (the official
release's geometry, as Kim et al.) and ViT-S/8 (the DINOCell backbone; random init has the same cost as trained
weights). Per-cell units (``--units cells``): the same fields with their ground-truth labels store, one 96-px
crop per nucleus (DeepProfiler's CPJUMP1 box; a 1080² fixture field holds several hundred cells), reported as
cells/s and fields/s. Evaluate: planted profiles of 40 plates × 384 wells (64 DMSO + 320 compounds per plate, 384 features, as
CPJUMP1's benchmark set), CPJUMP1 settings (negcon_mad, null size 100 000), wall time of each stage. Precision
(``--precision``): the backbone alone on one field's tiles in fp32 and under bf16 autocast — units/s of each and the
cosine of each unit's bf16 vector to its fp32 one, raw and after subtracting the mean unit.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named as the issue asks, which shadows the standard library's ``profile`` module (imported by
# cProfile, which torch imports): take the script's own folder off the import path first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dinocell_core.jump.index import load_index  # noqa: E402
from dinocell_core.labels.store import find_labels_root  # noqa: E402
from dinocell_core.profiling.embed import EmbedSettings, embed_profiles  # noqa: E402
from dinocell_core.synthetic.fixture import make_jump_fixture  # noqa: E402


def embed_rate(root: Path, fields: list, s: EmbedSettings, out: Path) -> tuple[float, int]:
    """fields/s through the whole embed path, and the number of units (tiles or cells) embedded."""
    t0 = time.perf_counter()
    embed_profiles(str(root), fields, out, s, metadata=None, progress=False)
    rate = len(fields) / (time.perf_counter() - t0)
    return rate, int(json.loads(Path(f"{out}.json").read_text())["n_units"])


def bench_embed(args: argparse.Namespace, work: Path) -> None:
    root = make_jump_fixture(work / "fx", plates=1, wells=3, sites=1, size=1080, seed=0, edge_cases=False).root
    fields = load_index(str(root))
    print(f"embedding, 1080² fields, device {args.device}, torch threads {torch.get_num_threads()}")
    if not args.skip_tiles:
        runs = [("baseline (5 channels × 15 stats)", EmbedSettings(channels="each"), fields),
                ("random ViT-S/16, CLS", EmbedSettings(backbone="random", arch="vit_small", patch_size=16,
                                                       device=args.device), fields)]
        if not args.skip_vit_s8:
            runs.append(("random ViT-S/8, CLS", EmbedSettings(backbone="random", arch="vit_small", patch_size=8,
                                                              device=args.device), fields[:1]))
        print("  224-px tiles (Kim et al.)")
        for i, (name, s, fs) in enumerate(runs):
            rate, _ = embed_rate(root, fs, s, work / f"emb{i}.csv")
            print(f"  {name:34s} {rate:7.3f} fields/s  ({1 / rate:6.2f} s/field, {len(fs)} field(s))")
    if not args.skip_cells:
        bench_cells(args, root, fields, work)


def bench_cells(args: argparse.Namespace, root: Path, fields: list, work: Path) -> None:
    labels = str(find_labels_root(root))
    cell = {"units": "cells", "labels": labels, "crop": args.crop}
    runs = [("baseline (5 channels × 15 stats)", EmbedSettings(channels="each", **cell), fields),
            ("random ViT-S/16, CLS", EmbedSettings(backbone="random", arch="vit_small", patch_size=16,
                                                   device=args.device, **cell), fields[:1])]
    if not args.skip_vit_s8:
        runs.append(("random ViT-S/8, CLS", EmbedSettings(backbone="random", arch="vit_small", patch_size=8,
                                                          device=args.device, **cell), fields[:1]))
    print(f"  {args.crop}-px cell crops (one per nucleus of the labels store)")
    for i, (name, s, fs) in enumerate(runs):
        rate, n_cells = embed_rate(root, fs, s, work / f"cells{i}.csv")
        per_field = n_cells / len(fs)
        print(f"  {name:34s} {rate * per_field:8.1f} cells/s  {rate:7.3f} fields/s  ({per_field:.0f} cells/field, "
              f"{len(fs)} field(s))")


def bench_precision(arch: str, patch: int, device: str, work: Path, size: int = 1080,
                    repeats: int = 2) -> dict[str, float]:
    """A random-init backbone (LayerScale 1, so its blocks shape the vectors as trained ones do) on one
    ``size``² fixture field's 224-px tiles, every fluorescent channel: units/s in fp32 and under bf16 autocast (after
    a warm-up call), and the least cosine of a unit's bf16 vector to its fp32 one, raw and centred."""
    from dinocell_core.profiling.embed import FieldReader, make_embedder

    root = make_jump_fixture(work / f"fx_precision_{size}", plates=1, wells=1, sites=1, size=size, seed=0,
                             edge_cases=False).root
    field = load_index(str(root))[0]

    def settings(precision: str) -> EmbedSettings:
        return EmbedSettings(backbone="random", arch=arch, patch_size=patch, model_kwargs={"init_values": 1.0},
                             tokens="cls+mean_patch", device=device, precision=precision)

    units = np.concatenate(list(FieldReader(str(root), settings("fp32"))(field).values()))
    out: dict[str, float] = {}
    vectors = {}
    for precision in ("fp32", "bf16"):
        embedder = make_embedder(settings(precision))
        embedder(units[:2])  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            vectors[precision] = embedder(units)
        out[f"{precision}_units_per_s"] = repeats * len(units) / (time.perf_counter() - t0)
    a, b = vectors["fp32"], vectors["bf16"]
    for key, (x, y) in (("min_cosine", (a, b)), ("min_centred_cosine", (a - a.mean(0), b - a.mean(0)))):
        out[key] = float(((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).min())
    out["bf16_speedup"] = out["bf16_units_per_s"] / out["fp32_units_per_s"]
    print(f"precision: random {arch}/{patch} (LayerScale 1), CLS + mean patch, {len(units)} 224-px units of one "
          f"{size}² field (5 channels), device {device}, torch threads {torch.get_num_threads()}")
    print(f"  fp32 {out['fp32_units_per_s']:8.2f} units/s · bf16 {out['bf16_units_per_s']:8.2f} units/s "
          f"({out['bf16_speedup']:.2f}×) · cosine bf16 to fp32 ≥ {out['min_cosine']:.5f} raw, "
          f"≥ {out['min_centred_cosine']:.5f} centred")
    return out


def bench_evaluate(args: argparse.Namespace) -> None:
    from dinocell_core.profiling.evaluate import (
        EvalSettings,
        prepare,
        replicate_retrieval,
    )
    from dinocell_core.profiling.normalize import normalize_profiles
    from dinocell_core.synthetic.profiles import planted_profiles

    t0 = time.perf_counter()
    df = planted_profiles(plates=40, perturbations=320, negcon_per_plate=64, features=384, seed=0)
    print(f"evaluate: {len(df)} wells × 384 features (planted table built in {time.perf_counter() - t0:.1f} s)")
    for method in args.normalize:
        s = EvalSettings(normalize=method, null_size=args.null_size, matching=False)
        t = [time.perf_counter()]
        kept, feats, notes = prepare(df, s)
        t.append(time.perf_counter())
        norm = normalize_profiles(kept, feats, s.plate_col, method)
        t.append(time.perf_counter())
        rr = replicate_retrieval(norm.table, norm.features, s, notes)
        t.append(time.perf_counter())
        summary = rr.summary
        print(f"  {method:12s} prepare {t[1] - t[0]:5.2f} s · normalise {t[2] - t[1]:5.2f} s · AP + mAP/null "
              f"{t[3] - t[2]:6.2f} s · total {t[3] - t[0]:6.2f} s  (fraction retrieved "
              f"{summary['fraction_retrieved']:.3f}, mean mAP {summary['mean_map']:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-vit-s8", action="store_true")
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--skip-tiles", action="store_true", help="no tile figures")
    ap.add_argument("--skip-cells", action="store_true", help="no per-cell figures")
    ap.add_argument("--skip-evaluate", action="store_true")
    ap.add_argument("--precision", action="store_true", help="also fp32 vs bf16 embedding (ViT-S at --precision-patch)")
    ap.add_argument("--precision-patch", type=int, default=16)
    ap.add_argument("--precision-size", type=int, default=1080, help="field size of the precision figures")
    ap.add_argument("--crop", type=int, default=96, help="per-cell crop size in px")
    ap.add_argument("--null-size", type=int, default=100_000)
    ap.add_argument("--normalize", nargs="+", default=["negcon_mad", "spherize_mad"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_embed:
            bench_embed(args, Path(tmp))
        if args.precision:
            bench_precision("vit_small", args.precision_patch, args.device, Path(tmp), args.precision_size)
        if not args.skip_evaluate:
            bench_evaluate(args)


if __name__ == "__main__":
    main()
