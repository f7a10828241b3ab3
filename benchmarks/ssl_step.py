"""SSL step benchmark: where the time of one DINOv3 iteration goes, FLOPs of the A100 recipe, and MFU on CUDA.

    python benchmarks/ssl_step.py [--steps 20] [--no-flop-count] [--cuda-steps 20] [--cuda-batch 48]

1. Tiny CPU config (configs/pretrain_demo.yaml on a synthetic fixture, loader in-process): ms per step split into
   data, forward (teacher + student + losses), backward, optimizer (clip + AdamW), EMA.
2. FLOPs per iteration of configs/pretrain_vits8_jump.yaml (ViT-S/8, 2×224 + 8×96 crops, heads 65,536, batch 48):
   counted with torch's FlopCounterMode on one real training step at batch 2 (math SDPA so attention is
   counted), masked patches set to the recipe's expectation (235 per sample); checked against the analytic
   ≈ 27 TFLOP of docs (dinov3.md §8).
3. On CUDA: the recipe's step time at ``--cuda-batch`` (synthetic crops, real masks) and the model-FLOP
   utilisation it implies for the current device; on CPU MFU is reported as n/a.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from dinocell_core.backbones.vit import count_forward_flops  # noqa: E402
from dinocell_core.config import load_config  # noqa: E402
from dinocell_core.runs.distributed import DistInfo  # noqa: E402
from dinocell_core.ssl.augment import MaskingGenerator, ibot_masks  # noqa: E402
from dinocell_core.ssl.config import PretrainConfig  # noqa: E402
from dinocell_core.ssl.data import make_ssl_loader  # noqa: E402
from dinocell_core.ssl.trainer import PhaseTimer, Trainer  # noqa: E402
from dinocell_core.synthetic.fixture import make_jump_fixture  # noqa: E402

#: dense bf16 peak TFLOP/s by device-name substring (no sparsity)
PEAK_BF16_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "H800": 989.0, "A800": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}
RECIPE = REPO / "configs" / "pretrain_vits8_jump.yaml"
DEMO = REPO / "configs" / "pretrain_demo.yaml"
PHASES = ("data", "forward", "backward", "optimizer", "ema")


def cpu_split(steps: int, work: Path) -> None:
    root = make_jump_fixture(work / "fixture", plates=2, wells=4, sites=2, size=192, seed=0).root
    cfg = load_config(PretrainConfig, DEMO, [f"data.root={root}", "data.num_workers=0", "train.progress=false"])
    device = torch.device("cpu")
    trainer = Trainer(cfg, device, DistInfo())
    warm = 3
    loader = iter(make_ssl_loader(cfg.data, cfg.model.patch_size, cfg.train.batch_size, cfg.seed,
                                  steps=steps + warm))
    timer = PhaseTimer(device)
    for step in range(steps + warm):
        if step == warm:
            timer.seconds.clear()
        with timer("data"):
            batch = next(loader)
        trainer.train_step(batch, step, timer)
    total = sum(timer.seconds.values())
    d = cfg.data
    print(f"\n== step time split, tiny CPU config ({cfg.model.arch}/p{cfg.model.patch_size}, batch "
          f"{cfg.train.batch_size}, {d.n_global}×{d.global_size}+{d.n_local}×{d.local_size} px, heads "
          f"{cfg.heads.out_dim}, torch threads {torch.get_num_threads()}, {steps} steps after {warm} warm-up) ==")
    for name in PHASES:
        sec = timer.seconds.get(name, 0.0)
        print(f"  {name:<10} {1000 * sec / steps:8.1f} ms/step  {100 * sec / total:5.1f} %")
    rate = cfg.train.batch_size * steps / total
    print(f"  {'total':<10} {1000 * total / steps:8.1f} ms/step  ({rate:.1f} samples/s)")


def recipe_config(batch: int, extra: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    return load_config(PretrainConfig, RECIPE, ["model.weights=null", f"train.batch_size={batch}",
                                                "train.progress=false", "warm_start.freeze_backbone_steps=0",
                                                *extra])


def synthetic_batch(cfg: PretrainConfig, batch: int, seed: int = 0, masked_per_sample: int | None = None) -> dict:
    """Crops of the recipe's shapes; iBOT masks from the data layer's generator (or a fixed masked count)."""
    d, p = cfg.data, cfg.model.patch_size
    g = torch.Generator().manual_seed(seed)
    grid = (d.global_size // p, d.global_size // p)
    if masked_per_sample is None:
        gen = MaskingGenerator(grid, max_num_patches=int(0.5 * grid[0] * grid[1]))
        masks = ibot_masks(d.n_global * batch, grid, d.mask_probability, tuple(d.mask_ratio),
                           np.random.default_rng(seed), gen).reshape(d.n_global, batch, *grid)
        masks = torch.from_numpy(masks)
    else:
        masks = torch.zeros(d.n_global, batch, grid[0] * grid[1], dtype=torch.bool)
        masks[0, :, torch.randperm(grid[0] * grid[1], generator=g)[:masked_per_sample]] = True
        masks = masks.view(d.n_global, batch, *grid)
    return {"global": torch.rand(d.n_global, batch, 1, d.global_size, d.global_size, generator=g),
            "local": torch.rand(d.n_local, batch, 1, d.local_size, d.local_size, generator=g),
            "masks": masks, "n_failed": 0, "failures": []}


def analytic_flops(trainer: Trainer, cfg: PretrainConfig, masked: float) -> float:
    """Per-sample FLOPs from the model's shapes: student fwd+bwd (×3), teacher fwd; CLS tokens go through the
    DINO head, masked patches through the iBOT head (their prototype counts differ on one GPU)."""
    d = cfg.data
    bb = trainer.student.backbone
    crop_g, crop_l = count_forward_flops(bb, d.global_size), count_forward_flops(bb, d.local_size)
    def head_flops(head: torch.nn.Module) -> float:
        return sum(2 * m.in_features * m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear))

    dino, ibot = head_flops(trainer.student.dino_head), head_flops(trainer.student.ibot_head)
    student = 3 * (d.n_global * crop_g + d.n_local * crop_l + (d.n_global + d.n_local) * dino + masked * ibot)
    teacher = d.n_global * crop_g + d.n_global * dino + masked * ibot
    return student + teacher


def count_recipe_flops(expected_masked: float) -> tuple[float, float]:
    """(counted, analytic) FLOPs per sample of the recipe's training step."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = recipe_config(2, ["train.precision=fp32", "train.device=cpu"])  # KoLeo needs 2 samples
    trainer = Trainer(cfg, torch.device("cpu"), DistInfo())
    batch = synthetic_batch(cfg, 2, masked_per_sample=round(expected_masked))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        trainer.train_step(batch, 0)
    return float(counter.get_total_flops()) / 2, analytic_flops(trainer, cfg, round(expected_masked))


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def cuda_mfu(steps: int, batch: int, flops_per_sample: float, extra: list[str]) -> None:
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    cfg = recipe_config(batch, extra)
    trainer = Trainer(cfg, device, DistInfo())
    batches = [synthetic_batch(cfg, batch, seed=i) for i in range(4)]
    for step in range(5):
        trainer.train_step(batches[step % 4], step)
    timer = PhaseTimer(device)
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for step in range(steps):
        trainer.train_step(batches[step % 4], 5 + step, timer)
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / steps
    flops = flops_per_sample * batch
    peak = peak_tflops(name)
    print(f"\n== recipe on {name} (batch {batch}, bf16 autocast, compile={cfg.train.compile}, "
          f"activation checkpointing={cfg.train.activation_checkpointing}, synthetic crops) ==")
    for k in PHASES[1:]:
        print(f"  {k:<10} {1000 * timer.seconds.get(k, 0.0) / steps:8.1f} ms/step")
    print(f"  step {1000 * per_step:.1f} ms → {batch / per_step:.0f} samples/s, {3600 / per_step:,.0f} iterations/h, "
          f"80k-iteration recipe ≈ {80_000 * per_step / 3600:.1f} h; peak memory "
          f"{torch.cuda.max_memory_allocated(device) / 1e9:.1f} GB")
    if peak is None:
        print(f"  MFU: unknown peak for {name!r}; achieved {flops / per_step / 1e12:.1f} TFLOP/s")
    else:
        print(f"  achieved {flops / per_step / 1e12:.1f} TFLOP/s of {peak:.0f} (bf16 dense) → MFU "
              f"{100 * flops / per_step / (peak * 1e12):.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps of the tiny CPU config")
    ap.add_argument("--no-flop-count", action="store_true", help="skip the FlopCounterMode count (≈ 1 min on CPU)")
    ap.add_argument("--cuda-steps", type=int, default=20)
    ap.add_argument("--cuda-batch", type=int, default=48)
    ap.add_argument("--cuda-override", action="append", default=[],
                    help="extra recipe overrides for the CUDA run, e.g. train.compile=true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cpu_split(args.steps, Path(tmp))

    cfg = recipe_config(48)
    d = cfg.data
    n_tok = (d.global_size // cfg.model.patch_size) ** 2
    expected_masked = d.n_global * d.mask_probability * sum(d.mask_ratio) / 2 * n_tok
    print(f"\n== FLOPs per iteration, A100 recipe ({cfg.model.arch}/p{cfg.model.patch_size}, {d.n_global}×"
          f"{d.global_size} + {d.n_local}×{d.local_size} px, heads {cfg.heads.out_dim}, batch 48, "
          f"~{expected_masked:.0f} masked patches/sample) ==")
    if args.no_flop_count:
        trainer = Trainer(recipe_config(2, ["train.precision=fp32"]), torch.device("cpu"), DistInfo())
        counted, analytic = None, analytic_flops(trainer, cfg, expected_masked)
    else:
        t0 = time.perf_counter()
        counted, analytic = count_recipe_flops(expected_masked)
        print(f"  counted (FlopCounterMode, one real step at batch 2, {time.perf_counter() - t0:.0f} s): "
              f"{counted / 1e9:.0f} GFLOP/sample → {48 * counted / 1e12:.2f} TFLOP/iteration")
    print(f"  analytic from the model's shapes: {analytic / 1e9:.0f} GFLOP/sample → "
          f"{48 * analytic / 1e12:.2f} TFLOP/iteration (reference: ≈ 566 GFLOP/sample, ≈ 27 TFLOP/iteration)")
    per_sample = counted if counted is not None else analytic
    for name, peak in (("A100", 312.0), ("H100 SXM", 989.0)):
        for mfu in (0.2, 0.4):
            t = 48 * per_sample / (mfu * peak * 1e12)
            print(f"  {name} at {mfu:.0%} MFU: {t:.3f} s/iteration, {48 / t:.0f} samples/s, 80k iterations "
                  f"in {80_000 * t / 3600:.1f} h")
    if torch.cuda.is_available():
        cuda_mfu(args.cuda_steps, args.cuda_batch, per_sample, args.cuda_override)
    else:
        print("\nMFU: n/a (no CUDA device; run this script on the GPU server for the recipe's step time and MFU)")


if __name__ == "__main__":
    main()
