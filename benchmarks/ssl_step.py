"""SSL step benchmark: this project's DINOv3 training step against the official trainer's, counted and timed.

    python benchmarks/ssl_step.py [--official PATH] [--batch 48] [--time-batch 2] [--steps 10]
                                  [--time-override key=value ...] [--time-precision fp32|bf16] [--compile]
                                  [--split] [--cuda-steps 20] [--cuda-batch 48] [--cuda-override key=value ...]

1. Counted per op on meta tensors (``dinocell_core.ssl.cost``; no data, no arithmetic) for the A100 recipe
   (configs/pretrain_vits8_jump.yaml, bf16 as on CUDA, the unfrozen phase) at ``--batch``: FLOPs, bytes moved
   (tensors read + written per op), peak live memory, host syncs per step, and the modelled step
   (FLOPs / peak + bytes / bandwidth) on A100-40, A100-80 and H100 — for both trainers, with the ratios.
2. Timed on this CPU, side by side in one process on the same batches (same crops, masks and step values):
   ``--steps`` rounds of one step each after a warm-up round, in alternating order so both see the same machine
   load, at ``--time-batch`` with the recipe's shapes (``--time-override`` shrinks them) in ``--time-precision``
   (fp32 by default: a CPU without bf16 units emulates bf16). Eager unless ``--compile`` (then both compile as
   they do on a GPU). The ratio is the median of the rounds' paired ratios with a distribution-free interval.
3. ``--split``: the tiny CPU config's step split into data / forward / backward / optimizer / EMA.
4. On CUDA: the recipe's step time, MFU from the counted FLOPs and bandwidth from the counted bytes.

The official trainer comes from a local checkout of facebookresearch/dinov3 (``--official PATH``, plus
``pip install omegaconf``); without it only this project's figures are printed, and the script says so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "benchmarks"
# benchmarks/ must not be on the path: its profile.py would shadow the standard library's (torch imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO / "src"))

from dinocell_core.backbones.loading import load_backbone  # noqa: E402
from dinocell_core.config import load_config  # noqa: E402
from dinocell_core.runs.distributed import DistInfo  # noqa: E402
from dinocell_core.ssl.augment import MaskingGenerator, ibot_masks  # noqa: E402
from dinocell_core.ssl.config import PretrainConfig  # noqa: E402
from dinocell_core.ssl.cost import GPUS, StepCost, count_trainer_step, counting, synthetic_batch  # noqa: E402
from dinocell_core.ssl.data import make_ssl_loader, step_index_tensors  # noqa: E402
from dinocell_core.ssl.trainer import PhaseTimer, Trainer, prepare_batch  # noqa: E402

#: dense bf16 peak TFLOP/s by device-name substring (no sparsity)
PEAK_BF16_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "H800": 989.0, "A800": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}
RECIPE = REPO / "configs" / "pretrain_vits8_jump.yaml"
DEMO = REPO / "configs" / "pretrain_demo.yaml"
PHASES = ("data", "forward", "backward", "optimizer", "ema")


def sibling(name: str) -> Any:
    """A module of benchmarks/, loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_config(batch: int, extra: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    return load_config(PretrainConfig, RECIPE, ["model.weights=null", f"train.batch_size={batch}",
                                                "train.progress=false", *extra])


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


# ------------------------------------------------------------------------------------------------- 1. counted


def count_official(cfg: PretrainConfig, batch: int, official: Any) -> StepCost:
    """The official step counted like ours: meta tensors, the second of two steps, same batch shapes and masks."""
    meta = torch.device("meta")
    with official.single_rank(meta):
        step = official.OfficialStep(cfg, batch, meta)
        with torch.device(meta):
            backbone = load_backbone(cfg.model.arch, patch_size=cfg.model.patch_size, **cfg.model.kwargs)
        x = prepare_batch(synthetic_batch(cfg, batch, meta), meta, backbone.normalize_input)
        data = official.official_batch(x, batch, step.input_dtype)
        alive = [*step.tensors(), *[v for v in data.values() if isinstance(v, torch.Tensor)]]
        it = 10 * cfg.train.steps_per_epoch  # past every warm-up
        with counting(meta, alive) as c:
            step.step(data, it)
            c.reset()
            step.step(data, it + 1)
    return StepCost(batch, c.flops, c.bytes, float(c.peak), dict(c.syncs), dict(c.bytes_by_op))


def print_counts(ours: StepCost, theirs: StepCost | None, cfg: PretrainConfig) -> None:
    d = cfg.data
    print(f"\n== counted per op on meta tensors: A100 recipe ({cfg.model.arch}/p{cfg.model.patch_size}, "
          f"{d.n_global}×{d.global_size} + {d.n_local}×{d.local_size} px, heads {cfg.heads.out_dim}/"
          f"{cfg.heads.ibot_out_dim}, batch {ours.batch_size}, bf16, unfrozen backbone) ==")
    rows = [("FLOPs per step (T)", ours.flops / 1e12, None if theirs is None else theirs.flops / 1e12),
            ("bytes moved per step (GB)", ours.bytes / 1e9, None if theirs is None else theirs.bytes / 1e9),
            ("peak live memory (GB)", ours.peak_bytes / 1e9, None if theirs is None else theirs.peak_bytes / 1e9),
            ("host syncs per step", sum(ours.syncs.values()), None if theirs is None else sum(theirs.syncs.values()))]
    for name, gpu in GPUS.items():
        rows.append((f"modelled step on {name} (ms)", 1e3 * ours.step_s(gpu),
                     None if theirs is None else 1e3 * theirs.step_s(gpu)))
    print(f"  {'':<32}{'this project':>14}{'official':>12}{'ratio':>8}")
    for label, a, b in rows:
        other = "n/a" if b is None else f"{b:,.2f}"
        ratio = "" if not b else f"{a / b:.3f}"
        print(f"  {label:<32}{a:>14,.2f}{other:>12}{ratio:>8}")
    print(f"  syncs: this project {dict(ours.syncs)}; official "
          f"{'not counted' if theirs is None else dict(theirs.syncs)}")
    top = sorted(ours.bytes_by_op.items(), key=lambda kv: -kv[1])[:8]
    print("  largest byte counts, this project: " + ", ".join(f"{k.split('.')[-1]} {v / 1e9:.0f} GB" for k, v in top))
    if theirs is not None:
        top = sorted(theirs.bytes_by_op.items(), key=lambda kv: -kv[1])[:8]
        print("  largest byte counts, official:     "
              + ", ".join(f"{k.split('.')[-1]} {v / 1e9:.0f} GB" for k, v in top))


# ------------------------------------------------------------------------------------------------- 2. timed


def real_batch(cfg: PretrainConfig, batch: int, seed: int = 0) -> dict[str, Any]:
    """Random crops in [0, 1] of the config's shapes and iBOT masks from the data layer's generator."""
    d, p = cfg.data, cfg.model.patch_size
    g = torch.Generator().manual_seed(seed)
    grid = (d.global_size // p, d.global_size // p)
    gen = MaskingGenerator(grid, max_num_patches=int(0.5 * grid[0] * grid[1]))
    masks = torch.from_numpy(ibot_masks(d.n_global * batch, grid, d.mask_probability, tuple(d.mask_ratio),
                                        np.random.default_rng(seed), gen).reshape(d.n_global, batch, *grid))
    fields = [f"field{i}" for i in range(batch)]
    return {"global": torch.rand(d.n_global, batch, 1, d.global_size, d.global_size, generator=g),
            "local": torch.rand(d.n_local, batch, 1, d.local_size, d.local_size, generator=g),
            "masks": masks, "fields": fields, "n_failed": 0, "failures": [], **step_index_tensors(masks, fields)}


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Median, and the interval between order statistics that holds it with probability ≥ ``level`` (or the widest
    the count allows): (median, low, high, coverage). Distribution-free: a shared machine's step times are not
    normal."""
    x = sorted(values)
    n = len(x)

    def below(j: int) -> float:  # P(Binomial(n, ½) < j)
        return sum(math.comb(n, i) for i in range(j)) / 2**n

    k = 1  # the interval is the k-th smallest to the k-th largest
    while k < n // 2 and 2 * below(k + 1) <= 1 - level:
        k += 1
    return statistics.median(x), x[k - 1], x[n - k], 1 - 2 * below(k)


def time_side_by_side(args: argparse.Namespace, official: Any) -> None:
    cpu = torch.device("cpu")
    cfg = recipe_config(args.time_batch, [f"train.precision={args.time_precision}", "train.device=cpu",
                                          "data.crops_per_field=1",  # KoLeo: ≥ 2 fields in a batch of 2
                                          f"train.compile={'true' if args.compile else 'false'}",
                                          *args.time_override])
    torch._dynamo.config.disable = not args.compile  # the official iBOT Sinkhorn compiles itself otherwise
    ours = Trainer(cfg, cpu, DistInfo(), load_weights=False)
    if ours.queue is not None:  # steady state, as counted: the queue fills by only 2·batch rows a step
        rows = torch.randn(ours.queue.size, cfg.heads.bottleneck_dim, generator=torch.Generator().manual_seed(1))
        ours.queue.load(torch.nn.functional.normalize(rows, dim=-1))
    batch = real_batch(cfg, args.time_batch)
    it = cfg.train.steps_per_epoch * 10  # unfrozen backbone, past every warm-up
    times: dict[str, list[float]] = {"this project": [], "official": []}  # CPU seconds of this process
    walls: dict[str, list[float]] = {"this project": [], "official": []}
    losses: dict[str, float] = {}
    with official.single_rank(cpu) if official is not None else contextlib.nullcontext():
        steps: dict[str, Any] = {"this project": lambda i: ours.train_step(batch, it + i)[0]["loss_total"]}
        if official is not None:
            theirs = official.OfficialStep(cfg, args.time_batch, cpu, compile_=args.compile)
            data = official.official_batch(prepare_batch(batch, cpu, ours.student.backbone.normalize_input),
                                           args.time_batch, theirs.input_dtype)
            steps["official"] = lambda i: theirs.step(data, it + i)
        for i in range(args.steps + 1):  # round 0 warms up; the order alternates, so neither always goes first
            for name in (list(steps) if i % 2 == 0 else list(steps)[::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                losses[name] = float(steps[name](i))
                if i:
                    walls[name].append(time.perf_counter() - t0)
                    times[name].append(time.process_time() - c0)
    d = cfg.data
    print(f"\n== timed on this CPU ({torch.get_num_threads()} threads), same batches, alternating order: batch "
          f"{args.time_batch}, {d.n_global}×{d.global_size} + {d.n_local}×{d.local_size} px, heads "
          f"{cfg.heads.out_dim}/{cfg.heads.ibot_out_dim}, {args.time_precision}, "
          f"{'compiled' if args.compile else 'eager'}, {args.steps} rounds after 1 warm-up; CPU time of this "
          f"process (a shared machine's load inflates wall time more than CPU time) ==")
    for k, v in times.items():
        if v:
            print(f"  {k:<14} {1000 * statistics.median(v):9.0f} CPU-ms/step median (range {1000 * min(v):.0f}–"
                  f"{1000 * max(v):.0f}; wall median {1000 * statistics.median(walls[k]):.0f} ms; last loss "
                  f"{losses[k]:.3f})")
    if times["official"]:
        for label, series in (("CPU time", times), ("wall", walls)):
            ratios = [a / b for a, b in zip(series["this project"], series["official"])]
            med, lo, hi, cov = median_interval(ratios)
            print(f"  ratio this project / official, {label}: {med:.3f} (median of {len(ratios)} paired rounds; "
                  f"{100 * cov:.1f} % interval {lo:.3f}–{hi:.3f})")
    else:
        print("  official: not timed (no --official checkout)")
    if ours.queue is not None:
        print(f"  this project's step includes its Sinkhorn queue ({ours.queue.size:,} embeddings re-scored against "
              f"{cfg.heads.out_dim:,} prototypes and normalised each step, whatever the batch; the official has none): "
              "--time-override loss.sinkhorn_queue=0 times the same algorithm")


# ------------------------------------------------------------------------------------------------- 3. split


def cpu_split(steps: int, work: Path) -> None:
    from dinocell_core.synthetic.fixture import make_jump_fixture

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
    print(f"  {'total':<10} {1000 * total / steps:8.1f} ms/step  ({cfg.train.batch_size * steps / total:.1f} samples/s)")


# ------------------------------------------------------------------------------------------------- 4. CUDA


def cuda_mfu(steps: int, batch: int, cost: StepCost, extra: list[str]) -> None:
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    cfg = recipe_config(batch, extra)
    trainer = Trainer(cfg, device, DistInfo(), load_weights=False)
    batches = [real_batch(cfg, batch, seed=i) for i in range(4)]
    it = trainer.spec.freeze_backbone_steps + trainer.spec.backbone_ramp_steps
    for step in range(5):
        trainer.train_step(batches[step % 4], it + step)
    timer = PhaseTimer(device)
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for step in range(steps):
        trainer.train_step(batches[step % 4], it + 5 + step, timer)
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / steps
    flops = cost.flops * batch / cost.batch_size
    peak = peak_tflops(name)
    print(f"\n== recipe on {name} (batch {batch}, compile={cfg.train.compile}, synthetic crops) ==")
    for k in PHASES[1:]:
        print(f"  {k:<10} {1000 * timer.seconds.get(k, 0.0) / steps:8.1f} ms/step")
    print(f"  step {1000 * per_step:.1f} ms → {batch / per_step:.0f} samples/s; peak memory "
          f"{torch.cuda.max_memory_allocated(device) / 1e9:.1f} GB; counted bytes at "
          f"{cost.bytes * batch / cost.batch_size / per_step / 1e12:.2f} TB/s")
    if peak is not None:
        print(f"  achieved {flops / per_step / 1e12:.1f} TFLOP/s of {peak:.0f} → MFU "
              f"{100 * flops / per_step / (peak * 1e12):.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", default=None, help="folder of a facebookresearch/dinov3 checkout")
    ap.add_argument("--batch", type=int, default=48, help="batch of the counted step (0: no count)")
    ap.add_argument("--time-batch", type=int, default=2, help="batch of the CPU-timed steps")
    ap.add_argument("--steps", type=int, default=10,
                    help="CPU-timed rounds (one step of each trainer; 0: no timing; ≥ 6 for a 95 %% interval)")
    ap.add_argument("--time-override", action="append", default=[], help="recipe overrides for the timed steps")
    ap.add_argument("--time-precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--compile", action="store_true", help="time both trainers compiled")
    ap.add_argument("--split", action="store_true", help="also the tiny CPU config's phase split")
    ap.add_argument("--cuda-steps", type=int, default=20)
    ap.add_argument("--cuda-batch", type=int, default=48)
    ap.add_argument("--cuda-override", action="append", default=[], help="recipe overrides for the CUDA run")
    args = ap.parse_args()

    official = None
    if args.official:
        official = sibling("official_dinov3")
        try:
            official.import_official(args.official)
        except official.OfficialUnavailable as exc:
            print(f"official trainer unavailable: {exc}")
            official = None
    else:
        print("official trainer: not measured — give --official PATH (a facebookresearch/dinov3 checkout; "
              "pip install omegaconf) for the ratios")
    torch._dynamo.config.disable = True  # counts are per op (eager semantics) for both trainers
    cfg = recipe_config(args.batch or 48)
    t0 = time.perf_counter()
    ours = count_trainer_step(cfg, cfg.train.batch_size)
    if args.batch:
        theirs = count_official(cfg, args.batch, official) if official is not None else None
        print(f"(counted in {time.perf_counter() - t0:.0f} s)")
        print_counts(ours, theirs, cfg)
    if args.steps > 0:
        time_side_by_side(args, official)
    if args.split:
        with tempfile.TemporaryDirectory() as tmp:
            cpu_split(20, Path(tmp))
    if torch.cuda.is_available():
        torch._dynamo.config.disable = False
        cuda_mfu(args.cuda_steps, args.cuda_batch, ours, args.cuda_override)
    else:
        print("\nMFU: n/a (no CUDA device; run this script on the GPU server for the recipe's step time and MFU)")


if __name__ == "__main__":
    main()
