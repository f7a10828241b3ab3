"""GPU check of the A100 recipe: N real training steps (bf16 autocast), compile off and on, real data loader;
then segmentation on the GPU: ``segment-plate`` fields/s and peak GPU memory per channel for ViT-S/8 on 1080²
fields (benchmarks/segment.py's plate and pipeline parts with ``--device cuda``).

    python benchmarks/gpu_check.py [--steps 30] [--warmup 8] [--batch 48] [--data ROOT] [--workers 12]
                                   [--compile off,on] [--fixture-size 1080 --fixture-fields 32]
                                   [--only pretrain,segment] [--seg-batch 32] [--seg-fields 8]

For each compile setting it prints step time, samples/s, model-FLOP utilisation (MFU) from the FLOPs counted
from the model's shapes (``backbone.count_forward_flops`` + heads, as benchmarks/ssl_step.py), peak GPU memory and
the fraction of wall time the step loop waited for the data loader. ``--data`` points at a CPJUMP1 folder (or a
``jump prepare`` store via ``--override data.prepared=...``); without it a synthetic 1080-px fixture is written to a
temporary folder first. On a machine without CUDA it says so and exits 0 (nothing to check there).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "benchmarks"
# benchmarks/ must not be on the path: its profile.py would shadow the standard library's (torch imports it);
# sibling benchmarks are loaded by file instead
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO / "src"))


def sibling(name: str) -> Any:
    """A module of benchmarks/ (ssl_step, segment), loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_one(cfg, steps: int, warmup: int, flops_per_sample: float | None) -> dict[str, float]:
    import torch

    ssl_step = sibling("ssl_step")
    analytic_flops, peak_tflops = ssl_step.analytic_flops, ssl_step.peak_tflops

    from dinocell_core.runs.distributed import DistInfo
    from dinocell_core.ssl.data import make_ssl_loader
    from dinocell_core.ssl.trainer import Trainer

    device = torch.device("cuda")
    trainer = Trainer(cfg, device, DistInfo())
    d = cfg.data
    n_tok = (d.global_size // cfg.model.patch_size) ** 2
    masked = d.n_global * d.mask_probability * sum(d.mask_ratio) / 2 * n_tok
    per_sample = flops_per_sample or analytic_flops(trainer, cfg, masked)
    loader = iter(make_ssl_loader(d, cfg.model.patch_size, cfg.train.batch_size, cfg.seed, steps=steps + warmup,
                                  pin_memory=True))
    t_compile = time.perf_counter()
    for step in range(warmup):  # compilation and cuDNN autotuning happen here
        trainer.train_step(next(loader), step)
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t_compile
    torch.cuda.reset_peak_memory_stats(device)
    wait = 0.0
    t0 = time.perf_counter()
    for step in range(warmup, warmup + steps):
        tw = time.perf_counter()
        batch = next(loader)
        wait += time.perf_counter() - tw
        terms, _, finite = trainer.train_step(batch, step)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    per_step = wall / steps
    b = cfg.train.batch_size
    peak = peak_tflops(torch.cuda.get_device_name(device))
    achieved = per_sample * b / per_step
    return {"step_s": per_step, "samples_per_s": b / per_step, "tflops": achieved / 1e12,
            "mfu": achieved / (peak * 1e12) if peak else float("nan"), "peak_mem_gb":
            torch.cuda.max_memory_allocated(device) / 1e9, "data_wait": wait / wall, "warmup_s": warm_s,
            "loss_total": float(terms["loss_total"]), "finite": float(finite), "gflop_per_sample": per_sample / 1e9}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps first (compilation happens here)")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: the recipe's)")
    ap.add_argument("--compile", default="off,on", help="comma list of off/on")
    ap.add_argument("--data", default=None, help="CPJUMP1 root (default: a synthetic fixture in a temp folder)")
    ap.add_argument("--fixture-size", type=int, default=1080)
    ap.add_argument("--fixture-fields", type=int, default=32)
    ap.add_argument("--override", action="append", default=[], help="extra recipe overrides (key=value)")
    ap.add_argument("--only", default="pretrain,segment", help="comma list: pretrain, segment")
    ap.add_argument("--seg-batch", type=int, default=32, help="tiles per network batch in the segment part")
    ap.add_argument("--seg-fields", type=int, default=8, help="1080² fields per segment-plate run")
    args = ap.parse_args()
    parts = set(args.only.split(","))

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check (run it on the GPU server). Exit 0.")
        return 0
    if "pretrain" in parts:
        check_pretraining(args)
    if "segment" in parts:
        check_segmentation(args)
    return 0


def check_segmentation(args: argparse.Namespace) -> None:
    """segment-plate on CUDA (ViT-S/8, random weights, 1080² fields): fields/s per channel, both models with
    measurements, peak GPU memory; then the per-field split network / blending / post-processing."""
    seg = sibling("segment")
    seg.bench_plate(["vit_small"], 8, 256, 32, args.seg_batch, "cuda", 1080, args.seg_fields)
    seg.bench_pipeline(argparse.Namespace(arch="vit_small", patch=8, tile=256, overlap=32, batch=args.seg_batch,
                                      device="cuda", fields=4))


def check_pretraining(args: argparse.Namespace) -> None:
    import torch

    from dinocell_core.config import load_config
    from dinocell_core.ssl.config import PretrainConfig
    from dinocell_core.synthetic.fixture import make_jump_fixture

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            t0 = time.perf_counter()
            wells = max(1, args.fixture_fields // 4)
            root = str(make_jump_fixture(Path(tmp) / "fixture", plates=2, wells=wells, sites=2,
                                         size=args.fixture_size, seed=0, edge_cases=False).root)
            print(f"synthetic fixture: {4 * wells} fields of {args.fixture_size}² px in "
                  f"{time.perf_counter() - t0:.0f} s")
        name = torch.cuda.get_device_name(0)
        print(f"device: {name}, torch {torch.__version__}, batch {args.batch}, {args.steps} timed steps after "
              f"{args.warmup} warm-up steps, bf16 autocast")
        rows = []
        for mode in [m.strip() for m in args.compile.split(",") if m.strip()]:
            ov = [f"data.root={root}", "model.weights=null", f"train.batch_size={args.batch}",
                  "train.precision=bf16", "train.device=cuda", "train.progress=false",
                  f"train.compile={'true' if mode == 'on' else 'false'}", *args.override]
            if args.workers is not None:
                ov.append(f"data.num_workers={args.workers}")
            cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain_vits8_jump.yaml", ov)
            r = run_one(cfg, args.steps, args.warmup, None)
            rows.append((mode, r))
            print(f"compile {mode:>3}: {1000 * r['step_s']:7.1f} ms/step  {r['samples_per_s']:6.1f} samples/s  "
                  f"{r['tflops']:6.1f} TFLOP/s  MFU {100 * r['mfu']:5.1f} %  peak mem {r['peak_mem_gb']:5.1f} GB  "
                  f"data wait {100 * r['data_wait']:5.1f} %  (warm-up {r['warmup_s']:.0f} s, "
                  f"{r['gflop_per_sample']:.0f} GFLOP/sample, last loss {r['loss_total']:.3f}, "
                  f"finite {bool(r['finite'])})", flush=True)
            torch.cuda.empty_cache()
        for mode, r in rows:
            print(f"80k-iteration recipe at compile {mode}: ≈ {80_000 * r['step_s'] / 3600:.1f} h")


if __name__ == "__main__":
    sys.exit(main())
