"""Segmentation pipeline benchmark: where the time goes per 1080×1080 field, post-processing per 1080² field
(markers, watershed, growth back to the border) against growth without its slope rule and the old fill-only
version, the threshold search with the growth slope fixed or searched, ``segment-plate`` fields/s per channel
for the tiny and the real ViT-S/8 architecture (random weights), and peak memory on 8000×8000.

    python benchmarks/segment.py                   # ViT-S/8 (the real model size), 256-px tiles
    python benchmarks/segment.py --arch vit_test   # tiny backbone: a quick run
    python benchmarks/segment.py --device cuda     # every part on the GPU (also run by benchmarks/gpu_check.py)
    python benchmarks/segment.py --only postprocessing
    python benchmarks/segment.py --only search     # threshold search: growth slope fixed vs searched
    python benchmarks/segment.py --only plate --plate-archs vit_test,vit_small --plate-fields 2
    python benchmarks/segment.py --only precision [--bundle TRAINED.safetensors]   # fp32 vs bf16 network

Per field: preprocessing (channel + percentile normalisation), network (tile batches through backbone +
decoder), blending (tiling, weighting, accumulation) and post-processing (watershed on a realistic distance map —
the per-cell target of a fixture field, since an untrained network's map is noise). Goals: post-processing ≤
150 ms on one core; everything but the network ≤ 20 % of network time. The 8000² memory figure runs the whole
tiling/blending path with a pass-through network (network memory is bounded by one batch of tiles whatever the
image size; measured separately as the network's own peak). ``precision`` (not in the default parts: bf16 on a CPU
without AVX512-BF16 runs reference kernels, ~5–10× slower than fp32) times the network in fp32 and under bf16 autocast
on one field and compares the distance maps, and with ``--bundle`` (a trained model) their labels.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

# run as a script, benchmarks/ heads the path and its profile.py would shadow the standard library's (torch imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dinocell_core.backbones.loading import load_backbone  # noqa: E402
from dinocell_core.seg.bundle import save_bundle  # noqa: E402
from dinocell_core.seg.decoder import DistanceDecoder  # noqa: E402
from dinocell_core.seg.distance import (  # noqa: E402
    distance_map,
    labels_from_distance,
    resolve_thresholds,
)
from dinocell_core.seg.inference import Segmenter, run_tiled  # noqa: E402
from dinocell_core.synthetic.fixture import make_field  # noqa: E402


def make_bundle(folder: Path, arch: str, patch: int, tile: int, overlap: int, channel: str = "DNA") -> Path:
    """A random-weight bundle of the real decoder on ``arch`` (the network's cost does not depend on its weights)."""
    model = DistanceDecoder(load_backbone(arch, patch_size=patch), width=128, stem_width=16).eval()
    meta = {"name": f"bench-{arch}-{channel}", "channel": channel,
            "backbone": {"arch": arch, "patch_size": patch, "kwargs": {}, "source": None},
            "decoder": {"layers": model.layers, "width": 128, "stem_width": 16},
            "preprocessing": {"low": 1.0, "high": 99.8}, "thresholds": resolve_thresholds({}),  # the defaults
            "tile_size": tile, "overlap": overlap}
    return save_bundle(folder / f"bench-{channel}.safetensors", model, meta)


def bench_postprocessing(repeats: int = 5) -> None:
    """labels_from_distance on one core, per 1080² field: the per-cell target of fixture nuclei and cells (what a
    perfect network predicts) and a blurred, noisy version of it (closer to a real network's map)."""
    from scipy import ndimage as ndi

    from dinocell_core.seg.metrics import evaluate_pairs

    _, nuclei, cells = make_field(1080, seed=0, phenotype="punctate")
    rng = np.random.default_rng(0)
    print(f"post-processing per 1080×1080 field, one core (torch threads {torch.get_num_threads()}, "
          f"{repeats} runs, median; CPU time is the figure on a shared machine, wall time includes waiting):")
    for name, lab in (("nuclei", nuclei), ("cells", cells)):
        d = distance_map(lab)
        noisy = np.clip(ndi.gaussian_filter(d, 1.0) + ndi.gaussian_filter(rng.normal(0, 0.08, d.shape), 1.0),
                        0, 1).astype(np.float32)
        for kind, m in (("perfect map", d), ("blurred+noisy", noisy)):
            for label, kw in (("defaults", {}), ("no slope rule", {"growth_slope": 0.0}),
                              ("old fill-only", {"grow_threshold": 0.09, "connectivity": 1, "min_marker_size": 1})):
                times, cpu = [], []
                for _ in range(repeats):
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = labels_from_distance(m, **kw)
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                sc = evaluate_pairs([(lab, out)]).as_dict()
                print(f"  {name:<6} {kind:<14} {label:<14} {np.median(cpu) * 1000:7.1f} ms CPU "
                      f"({np.median(times) * 1000:6.1f} ms wall)  "
                      f"{int(out.max()):5d} objects (truth {int(lab.max())})  AP@0.9 {sc['ap@0.90']:.3f}  "
                      f"SEG {sc['seg']:.3f}")
    print("  goal: ≤ 150 ms per field on one core")


def bench_threshold_search(size: int = 512) -> None:
    """The validation search (``seg.tune``) with the growth slope fixed at its default against the slope searched
    too, on blurred + noisy per-cell maps of a fixture field (the docs' "slope" table)."""
    from scipy import ndimage as ndi

    from dinocell_core.seg.config import GROWTH_SLOPE, ThresholdSection
    from dinocell_core.seg.tune import tune_thresholds

    _, nuclei, cells = make_field(size, seed=0, phenotype="punctate")
    start = ThresholdSection().model_dump()
    print(f"threshold search on one {size}² fixture field, slope fixed at {GROWTH_SLOPE} → searched "
          f"(AP@0.9 / mean AP, the thresholds picked):")
    for name, lab in (("nuclei", nuclei), ("cells", cells)):
        for sigma, noise in ((1.0, 0.08), (2.0, 0.1)):
            rng = np.random.default_rng(0)
            d = np.clip(ndi.gaussian_filter(distance_map(lab), sigma)
                        + ndi.gaussian_filter(rng.normal(0, noise, lab.shape), 1.0), 0, 1).astype(np.float32)
            row = []
            for slopes in ((GROWTH_SLOPE,), None):
                c0 = time.process_time()
                res = (tune_thresholds([d], [lab], start=start) if slopes is None
                       else tune_thresholds([d], [lab], slopes=slopes, start=start))
                m, th = res["metrics"], res["thresholds"]
                row.append(f"{m['ap@0.90']:.3f} / {m['ap_mean']:.3f} (grow {th['grow']}, ring {th['ring']}, "
                           f"slope {th['slope']}; {len(res['tried'])} tried, {time.process_time() - c0:.1f} CPU-s)")
            print(f"  {name:<6} blur {sigma} + noise {noise}: {row[0]}  →  {row[1]}")


def bench_plate(archs: list[str], patch: int, tile: int, overlap: int, batch: int, device: str, size: int,
                fields: int) -> None:
    """``segment-plate`` on a synthetic plate, per architecture: fields/s with the nuclei model only (DNA), the
    cells model only (AGP), both + measurements; on CUDA also the peak GPU memory of each run."""
    from dinocell_core.seg.plate import PlateRun
    from dinocell_core.synthetic.fixture import make_jump_fixture

    sites = min(2, fields)
    wells = -(-fields // sites)
    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jump_fixture(Path(tmp) / "data", plates=1, wells=wells, sites=sites, size=size, seed=1,
                                 edge_cases=False).root
        for arch in archs:
            models = {}
            for ch in ("DNA", "AGP"):
                models[ch] = Path(tmp) / arch / f"models_{ch}"
                models[ch].mkdir(parents=True)
                make_bundle(models[ch], arch, patch, tile, overlap, ch)
            both = Path(tmp) / arch / "models_both"
            both.mkdir()
            for ch, d in models.items():
                (both / f"bench-{ch}.safetensors").write_bytes((d / f"bench-{ch}.safetensors").read_bytes())
            print(f"segment-plate on {device}, {arch}/{patch} (random weights), tile {tile}, overlap {overlap}, "
                  f"batch {batch}, {size}×{size} fields, torch threads {torch.get_num_threads()}:", flush=True)
            for label, d in (("DNA → nuclei", models["DNA"]), ("AGP → cells", models["AGP"]),
                             ("both + measurements", both)):
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                run = PlateRun(d, root, Path(tmp) / arch / f"out_{d.name}", device=device, batch_size=batch)
                c0 = time.process_time()
                res = run.run()
                cpu = time.process_time() - c0  # all threads of this process: the figure on a shared machine
                n = res.done - res.done_before
                mem = f", GPU peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else ""
                print(f"  {label:<20} {n} fields in {res.seconds:6.1f} s wall = {n / res.seconds:6.3f} fields/s, "
                      f"{cpu:6.1f} CPU-s = {n / cpu:6.3f} fields per CPU-s (network {res.network_s:6.1f} s wall; "
                      f"the rest overlaps it or is reading/writing{mem})", flush=True)


def bench_precision(arch: str, patch: int, tile: int, overlap: int, batch: int | None, device: str, size: int,
                    fields: int, bundle: Path | None = None) -> dict[str, float]:
    """The network in fp32 and under bf16 autocast on one ``size``² fixture DNA field: tiles/s of each (after a
    warm-up pass), the bf16 map's max and mean |Δ| against fp32's, and with a trained ``bundle`` the F1 of its
    labels matched to fp32's (IoU 0.5 and 0.9). Random weights give maps of noise: their labels are not compared."""
    from dinocell_core.seg.metrics import f1_score

    dna = make_field(size, seed=0, phenotype="punctate")[0][4]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = bundle if bundle is not None else make_bundle(Path(tmp), arch, patch, tile, overlap)
        maps, segs = {}, {}
        for precision in ("fp32", "bf16"):
            seg = Segmenter(path, device=device, tile_size=tile, overlap=overlap, batch_size=batch,
                            precision=precision)
            seg.predict_distance(dna)  # warm-up (kernel selection, allocator)
            seg.timings.clear()
            for _ in range(fields):
                maps[precision] = seg.predict_distance(dna)  # ends in a host copy: the GPU work is done
            tiles = seg.n_tiles(dna.shape) * fields
            out[f"{precision}_tiles_per_s"] = tiles / seg.timings["network"]
            segs[precision] = seg
        name = bundle.name if bundle is not None else f"{arch}/{patch}, random weights"
        print(f"precision on {device} ({torch.get_num_threads()} torch threads), {name}, tile {tile}, overlap "
              f"{overlap}, batch {segs['fp32'].batch_size}, one {size}² field × {fields}:")
        for precision in ("fp32", "bf16"):
            print(f"  {precision}: {out[f'{precision}_tiles_per_s']:8.2f} tiles/s")
        delta = np.abs(maps["bf16"] - maps["fp32"])
        out |= {"bf16_speedup": out["bf16_tiles_per_s"] / out["fp32_tiles_per_s"],
                "max_abs_delta": float(delta.max()), "mean_abs_delta": float(delta.mean())}
        print(f"  bf16 / fp32 speed {out['bf16_speedup']:.2f}×; distance map |Δ| max {out['max_abs_delta']:.4f}, "
              f"mean {out['mean_abs_delta']:.5f}")
        if bundle is not None:
            lab = {p: segs[p].labels(maps[p]) for p in ("fp32", "bf16")}
            out["label_f1_iou50"], out["label_f1_iou90"] = f1_score(lab["fp32"], lab["bf16"], (0.5, 0.9))
            print(f"  labels: {int(lab['fp32'].max())} objects fp32, {int(lab['bf16'].max())} bf16; F1 of bf16 "
                  f"matched to fp32 {out['label_f1_iou50']:.3f} at IoU 0.5, {out['label_f1_iou90']:.3f} at IoU 0.9")
        for seg in segs.values():
            seg.release()
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vit_small")
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision-batch", type=int, default=None,
                    help="tiles per call of the precision part (default: the Segmenter's, 4 on CPU, more on CUDA)")
    ap.add_argument("--precision-size", type=int, default=512, help="field size of the precision part")
    ap.add_argument("--bundle", type=Path, default=None,
                    help="a trained bundle for the precision part (labels compared); default: random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fields", type=int, default=2, help="timed fields (after one warm-up)")
    ap.add_argument("--big", type=int, default=8000, help="side of the memory-test image")
    ap.add_argument("--plate-size", type=int, default=1080, help="field size of the segment-plate benchmark")
    ap.add_argument("--plate-fields", type=int, default=2, help="fields of the segment-plate benchmark")
    ap.add_argument("--plate-archs", default="vit_test,vit_small",
                    help="comma-separated backbones of the segment-plate benchmark (patch --patch)")
    ap.add_argument("--only", default="pipeline,postprocessing,search,plate,memory",
                    help="comma-separated parts to run: pipeline, postprocessing, search, plate, memory, "
                         "precision")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if "postprocessing" in parts:
        bench_postprocessing()
    if "search" in parts:
        bench_threshold_search()
    if "plate" in parts:
        bench_plate(args.plate_archs.split(","), args.patch, args.tile, args.overlap, args.batch, args.device,
                    args.plate_size, args.plate_fields)
    if "pipeline" in parts:
        bench_pipeline(args)
    if "memory" in parts:
        bench_memory(args)
    if "precision" in parts:
        bench_precision(args.arch, args.patch, args.tile, args.overlap, args.precision_batch, args.device,
                        args.precision_size, args.fields, args.bundle)


def bench_pipeline(args: argparse.Namespace) -> None:
    channels, nuclei, _ = make_field(1080, seed=0, phenotype="punctate")
    dna = channels[4]
    with tempfile.TemporaryDirectory() as tmp:
        seg = Segmenter(make_bundle(Path(tmp), args.arch, args.patch, args.tile, args.overlap), device=args.device,
                        batch_size=args.batch)
        print(f"model {args.arch}/{args.patch}, tile {args.tile}, overlap {args.overlap}, batch {args.batch}, "
              f"device {seg.device}, torch threads {torch.get_num_threads()}; "
              f"{seg.n_tiles(dna.shape)} tiles per 1080² field")
        seg.predict_distance(dna)  # warm-up
        seg.timings.clear()
        target = distance_map(nuclei)  # realistic map for the watershed
        t0 = time.perf_counter()
        for _ in range(args.fields):
            seg.predict_distance(dna)
            seg.labels(target)
        wall = (time.perf_counter() - t0) / args.fields
        t = {k: v / args.fields for k, v in seg.timings.items()}
        net = t["network"]
        overhead = t["preprocessing"] + t["blending"] + t["postprocessing"]
        print(f"per 1080×1080 field ({args.fields} fields, {int(nuclei.max())} nuclei):")
        for k in ("preprocessing", "network", "blending", "postprocessing"):
            print(f"  {k:<15} {t[k] * 1000:9.1f} ms")
        print(f"  {'total':<15} {wall * 1000:9.1f} ms   overhead (all but network) = {overhead / net:.1%} "
              "of network time (goal ≤ 20%)")
        n_lab = int(labels_from_distance(target).max())
        print(f"  post-processing on one core: {t['postprocessing'] * 1000:.0f} ms (goal ≤ 150 ms); "
              f"{n_lab} objects recovered")

        # network peak memory for one batch (bounded by batch size, independent of image size)
        x = torch.rand(args.batch, 1, args.tile, args.tile, device=seg.device)
        if seg.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                seg.model(x)
            print(f"network peak (one batch of {args.batch} tiles): "
                  f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB GPU")
        seg.release()
    del seg
    gc.collect()


def bench_memory(args: argparse.Namespace) -> None:
    big = np.random.default_rng(0).integers(0, 4000, (args.big, args.big), dtype=np.uint16)
    rss0 = rss_mb()
    tracemalloc.start()
    t0 = time.perf_counter()
    from dinocell_core.io.images import prepare_image

    img = prepare_image(big)
    out = run_tiled(lambda b: b, img, args.tile, args.overlap, args.batch, args.patch)
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{args.big}×{args.big} uint16 image ({big.nbytes / 2**20:.0f} MiB): tiling + blending path "
          f"{dt:.1f} s, peak traced {peak / 2**20:.0f} MiB (= {peak / (args.big**2 * 4):.1f}× one float32 image), "
          f"process max RSS {rss_mb():.0f} MiB (was {rss0:.0f} MiB before)")
    assert out.shape == big.shape


if __name__ == "__main__":
    main()
