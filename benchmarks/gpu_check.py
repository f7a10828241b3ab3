"""GPU check of the A100 recipe, unattended: is the GPU usable, and how fast is the step the run will spend its
hours in; then segmentation on the GPU (``segment-plate`` fields/s, benchmarks/segment.py) and inference precision
(fp32 vs bf16 autocast of the segmentation network and the profile embedder: throughput and agreement).

    python benchmarks/gpu_check.py [--out FILE.json] [--steps 200] [--warmup 10] [--batch 48] [--data ROOT]
                                   [--workers N] [--compile on,off] [--override key=value ...]
                                   [--fixture-size 1080 --fixture-fields 32] [--only pretrain,segment,precision]
                                   [--seg-batch 32] [--seg-fields 8]

First the GPU probe: a GPU that is visible but unusable (an NVIDIA driver too old for this torch build, a CPU-only
torch wheel on a GPU machine, a device that fails its first kernel) is reported with the reason and the script
exits 2; only a machine with no GPU at all prints "no GPU" and exits 0.

Pretraining, per compile setting: the recipe (configs/pretrain_vits8_jump.yaml) with its frozen-backbone warm start,
the real data loader (a synthetic 1080-px fixture unless ``--data``). Every graph the run compiles is warmed first —
``--warmup`` steps in the frozen phase, then ``--warmup`` in the unfrozen phase (the unfreeze recompiles) — then
``--steps`` (≥ 200) steps of the unfrozen phase, where the backbone trains, are timed with the data wait measured over
the whole window (the loader's queue holds workers × prefetch batches: a short window would hide a slow loader).
Reported: step time, samples/s, MFU from the FLOPs counted per op (``dinocell_core.ssl.cost``), achieved bandwidth
from the counted bytes, peak allocated and reserved memory, data-wait fraction, host syncs per step (CUDA's sync
debug mode over a few steps) and what ``pretrain --plan`` predicted for this GPU. ``--out`` writes it all as JSON
(schema ``dinocell-gpu-check/1``, documented in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "benchmarks"
# benchmarks/ must not be on the path: its profile.py would shadow the standard library's (torch imports it);
# sibling benchmarks are loaded by file instead
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO / "src"))

SCHEMA = "dinocell-gpu-check/1"
#: top-level keys of the JSON report
REPORT_KEYS = ("schema", "status", "reason", "torch", "torch_cuda", "driver", "devices", "pretrain")
#: keys of one pretraining entry (one compile setting)
PRETRAIN_KEYS = ("compile", "device", "batch_size", "steps", "warmup_steps", "step_s", "samples_per_s", "tflops",
                 "mfu", "bandwidth_tb_s", "peak_memory_gb", "reserved_memory_gb", "data_wait_fraction",
                 "host_syncs_per_step", "warmup_s", "loss_total", "finite", "counted_flops_per_step",
                 "counted_bytes_per_step", "planned_peak_memory_gb", "planned_step_s")
#: dense bf16 peak TFLOP/s by device-name substring (no sparsity)
PEAK_BF16_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "H800": 989.0, "A800": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}


def sibling(name: str) -> Any:
    """A module of benchmarks/ (segment, profile), loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------------ probe


@dataclass
class GpuProbe:
    """What this machine's GPU situation is: ``ok``, ``no_gpu`` (nothing to check) or ``unusable`` (why)."""

    status: str
    reason: str | None = None
    torch: str = ""
    torch_cuda: str | None = None
    driver: str | None = None
    devices: list[str] = field(default_factory=list)


def _device_nodes() -> list[str]:
    return sorted(glob.glob("/dev/nvidia[0-9]*"))


def _nvidia_smi() -> tuple[list[str], str | None]:
    """GPU names and the driver version nvidia-smi reports ([] and None without nvidia-smi or a working driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return [], None
    rows = [r.split(",") for r in out.stdout.strip().splitlines() if "," in r]
    return [r[0].strip() for r in rows], (rows[0][1].strip() if rows else None)


def probe_gpu(cuda: Any = None, device_nodes: Callable[[], list[str]] = _device_nodes,
              smi: Callable[[], tuple[list[str], str | None]] = _nvidia_smi) -> GpuProbe:
    """Probe ``cuda`` (``torch.cuda``, or a stand-in with ``is_available``, ``device_count``, ``init``,
    ``get_device_name`` and ``build_version``) and the machine. A GPU is *visible* when torch counts
    one, ``/dev/nvidia*`` device nodes exist or nvidia-smi lists one; it is *usable* when torch initialises CUDA and
    runs a kernel on it. Visible but unusable is an error with its reason (the driver/build mismatch that made the
    old check print "no CUDA device" and exit 0)."""
    import torch

    cuda = torch.cuda if cuda is None else cuda
    names, driver = smi()
    build = getattr(cuda, "build_version", torch.version.cuda)  # a stand-in names its build; torch.cuda has none
    info = dict(torch=torch.__version__, torch_cuda=build, driver=driver, devices=names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            available = bool(cuda.is_available())
            said = [str(w.message).strip() for w in caught]
        except Exception as exc:  # noqa: BLE001 - any failure of the probe is the answer
            available, said = False, [str(exc)]
    try:
        count = int(cuda.device_count())
    except Exception:  # noqa: BLE001
        count = 0
    visible = count > 0 or bool(device_nodes()) or bool(names)
    if available:
        try:
            cuda.init()
            x = torch.ones(8, device="cuda")
            if float((x * 2).sum()) != 16.0:
                raise RuntimeError("a test kernel returned a wrong result")
            devices = [cuda.get_device_name(i) for i in range(cuda.device_count())]
            return GpuProbe("ok", None, **{**info, "devices": devices})
        except Exception as exc:  # noqa: BLE001
            return GpuProbe("unusable", f"CUDA initialised but the first kernel failed: {exc}", **info)
    if not visible:
        return GpuProbe("no_gpu", None, **info)
    if build is None:
        why = (f"a GPU is visible ({', '.join(names) or 'device nodes ' + ', '.join(device_nodes())}) but this torch "
               f"build ({torch.__version__}) has no CUDA: install a CUDA wheel of torch")
    else:
        why = (f"a GPU is visible but torch {torch.__version__} (CUDA {build}) cannot use it"
               f"{f' (NVIDIA driver {driver})' if driver else ''}: "
               f"{'; '.join(said) or 'torch.cuda.is_available() is False'}")
    return GpuProbe("unusable", why, **info)


# ------------------------------------------------------------------------------------------------------ pretraining


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def pretrain_record(*, compile_: bool, device: str, batch: int, steps: int, warmup: int, wall_s: float,
                    wait_s: float, warmup_s: float, peak_gb: float | None, reserved_gb: float | None,
                    syncs_per_step: float | None, loss: float, finite: bool, counted: Any, planned: dict[str, Any],
                    peak_tflops_: float | None) -> dict[str, Any]:
    """One ``pretrain`` entry of the report (keys: :data:`PRETRAIN_KEYS`)."""
    step_s = wall_s / steps
    flops = counted.flops * batch / counted.batch_size
    moved = counted.bytes * batch / counted.batch_size
    gpu = planned.get("gpu")
    return {
        "compile": compile_, "device": device, "batch_size": batch, "steps": steps, "warmup_steps": warmup,
        "step_s": step_s, "samples_per_s": batch / step_s, "tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / (peak_tflops_ * 1e12) if peak_tflops_ else None,
        "bandwidth_tb_s": moved / step_s / 1e12, "peak_memory_gb": peak_gb, "reserved_memory_gb": reserved_gb,
        "data_wait_fraction": wait_s / wall_s, "host_syncs_per_step": syncs_per_step, "warmup_s": warmup_s,
        "loss_total": loss, "finite": finite, "counted_flops_per_step": flops, "counted_bytes_per_step": moved,
        "planned_peak_memory_gb": planned.get("peak_memory_gb"),
        "planned_step_s": planned["step_s"].get(gpu) if gpu else None,
    }


def count_syncs(run: Callable[[], None]) -> int:
    """CUDA calls that synchronised the host with the device while ``run`` ran (torch's sync debug mode)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def time_pretraining(cfg: Any, device: Any, steps: int, warmup: int, planned: dict[str, Any]) -> dict[str, Any]:
    """Warm every compiled graph (frozen, then unfrozen backbone), then time ``steps`` unfrozen steps with the real
    loader; ``device`` may be the CPU (tests), the figures then have no MFU and no GPU memory."""
    import torch

    from dinocell_core.runs.distributed import DistInfo
    from dinocell_core.ssl.cost import count_trainer_step
    from dinocell_core.ssl.data import make_ssl_loader
    from dinocell_core.ssl.trainer import Trainer

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    trainer = Trainer(cfg, device, DistInfo(), load_weights=False)
    counted = count_trainer_step(cfg, cfg.train.batch_size, device.type)
    spec = trainer.spec
    unfrozen = spec.freeze_backbone_steps + spec.backbone_ramp_steps
    n_sync = 3 if cuda else 0
    loader = iter(make_ssl_loader(cfg.data, cfg.model.patch_size, cfg.train.batch_size, cfg.seed,
                                  steps=2 * warmup + n_sync + steps, pin_memory=cuda))
    t0 = time.perf_counter()
    schedule = [min(i, max(0, spec.freeze_backbone_steps - 1)) for i in range(warmup)] if spec.freeze_backbone_steps \
        else []
    schedule += [unfrozen + i for i in range(warmup)]
    for step in schedule:  # compilation (frozen and unfrozen graphs) and autotuning happen here
        trainer.train_step(next(loader), step)
    sync()
    warmup_s = time.perf_counter() - t0
    step = unfrozen + warmup
    syncs = None
    if cuda:
        def few() -> None:
            for i in range(n_sync):
                trainer.train_step(next(loader), step + i)
        syncs = count_syncs(few) / n_sync
        step += n_sync
        torch.cuda.reset_peak_memory_stats(device)
    wait = 0.0
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        tw = time.perf_counter()
        batch = next(loader)
        wait += time.perf_counter() - tw
        terms, _, finite = trainer.train_step(batch, step + i)
    sync()
    wall = time.perf_counter() - t0
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    return pretrain_record(
        compile_=cfg.train.compile, device=name, batch=cfg.train.batch_size, steps=steps, warmup=len(schedule),
        wall_s=wall, wait_s=wait, warmup_s=warmup_s,
        peak_gb=torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None,
        reserved_gb=torch.cuda.max_memory_reserved(device) / 1e9 if cuda else None, syncs_per_step=syncs,
        loss=float(terms["loss_total"]), finite=bool(finite), counted=counted, planned=planned,
        peak_tflops_=peak_tflops(name) if cuda else None)


def planned_for(cfg: Any, device_name: str) -> dict[str, Any]:
    """``pretrain --plan``'s figures for this config, with the named GPU that matches the device (if any)."""
    from dinocell_core.ssl.cost import hardware_plan

    plan = hardware_plan(cfg)
    gpu = "H100" if "H100" in device_name else ("A100-80" if "A100" in device_name and "80" in device_name else
                                                  "A100-40" if "A100" in device_name else None)
    return {"peak_memory_gb": plan["peak_memory_gb"], "step_s": plan["step_s"], "gpu": gpu}


def check_pretraining(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from dinocell_core.config import load_config
    from dinocell_core.ssl.config import PretrainConfig
    from dinocell_core.synthetic.fixture import make_jump_fixture

    rows = []
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
        print(f"device: {name}, torch {torch.__version__}, batch {args.batch}, {args.warmup} frozen + {args.warmup} "
              f"unfrozen warm-up steps, then {args.steps} timed unfrozen steps, bf16")
        for mode in [m.strip() for m in args.compile.split(",") if m.strip()]:
            ov = [f"data.root={root}", "model.weights=null", f"train.batch_size={args.batch}",
                  "train.precision=bf16", "train.device=cuda", "train.progress=false",
                  f"train.compile={'true' if mode == 'on' else 'false'}", *args.override]
            if args.workers is not None:
                ov.append(f"data.num_workers={args.workers}")
            cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain_vits8_jump.yaml", ov)
            r = time_pretraining(cfg, torch.device("cuda"), args.steps, args.warmup, planned_for(cfg, name))
            rows.append(r)
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
            print(f"compile {mode:>3}: {1000 * r['step_s']:7.1f} ms/step  {r['samples_per_s']:6.1f} samples/s  "
                  f"{r['tflops']:6.1f} TFLOP/s  MFU {mfu}  {r['bandwidth_tb_s']:.2f} TB/s counted  peak "
                  f"{r['peak_memory_gb']:.1f} GB (reserved {r['reserved_memory_gb']:.1f})  data wait "
                  f"{100 * r['data_wait_fraction']:.1f} %  syncs/step {r['host_syncs_per_step']:.1f}  (warm-up "
                  f"{r['warmup_s']:.0f} s; plan: {r['planned_peak_memory_gb']:.1f} GB, "
                  f"{r['planned_step_s'] or float('nan'):.3f} s; last loss {r['loss_total']:.3f}, finite "
                  f"{r['finite']})", flush=True)
            torch.cuda.empty_cache()
    for r in rows:
        print(f"80k-iteration recipe at compile {'on' if r['compile'] else 'off'}: ≈ "
              f"{80_000 * r['step_s'] / 3600:.1f} h")
    return rows


def check_segmentation(args: argparse.Namespace) -> None:
    """segment-plate on CUDA (ViT-S/8, random weights, 1080² fields): fields/s per channel, both models with
    measurements, peak GPU memory; then the per-field split network / blending / post-processing."""
    seg = sibling("segment")
    seg.bench_plate(["vit_small"], 8, 256, 32, args.seg_batch, "cuda", 1080, args.seg_fields)
    seg.bench_pipeline(argparse.Namespace(arch="vit_small", patch=8, tile=256, overlap=32, batch=args.seg_batch,
                                          device="cuda", fields=4))


def check_precision() -> None:
    """What ``precision: auto`` buys on this GPU: the segmentation network (ViT-S/8 + decoder, random weights, one
    1080² field, the Segmenter's default batch) and the profile embedder (ViT-S/8, 224-px tiles) in fp32 (TF32
    matmuls) and under bf16 autocast — throughput of each, the distance maps' |Δ| and the embeddings' cosine."""
    sibling("segment").bench_precision("vit_small", 8, 256, 32, None, "cuda", 1080, 4)
    with tempfile.TemporaryDirectory() as tmp:
        sibling("profile").bench_precision("vit_small", 8, "cuda", Path(tmp), repeats=5)


def write_report(path: Path | None, probe: GpuProbe, pretrain: list[dict[str, Any]]) -> None:
    if path is None:
        return
    report = {"schema": SCHEMA, **asdict(probe), "pretrain": pretrain}
    report = {k: report[k] for k in REPORT_KEYS}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")


def main(argv: list[str] | None = None, probe: Callable[[], GpuProbe] = probe_gpu) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON (dinocell-gpu-check/1)")
    ap.add_argument("--steps", type=int, default=200, help="timed unfrozen steps per setting (≥ 200)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up steps in each phase (frozen, unfrozen)")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: the recipe's)")
    ap.add_argument("--compile", default="on,off", help="comma list of on/off")
    ap.add_argument("--data", default=None, help="CPJUMP1 root (default: a synthetic fixture in a temp folder)")
    ap.add_argument("--fixture-size", type=int, default=1080)
    ap.add_argument("--fixture-fields", type=int, default=32)
    ap.add_argument("--override", action="append", default=[], help="extra recipe overrides (key=value)")
    ap.add_argument("--only", default="pretrain,segment,precision", help="comma list: pretrain, segment, precision")
    ap.add_argument("--seg-batch", type=int, default=32, help="tiles per network batch in the segment part")
    ap.add_argument("--seg-fields", type=int, default=8, help="1080² fields per segment-plate run")
    args = ap.parse_args(argv)
    if args.steps < 200:
        print(f"gpu_check: --steps {args.steps} < 200: the loader's queue can hide a slow loader in a short window",
              file=sys.stderr)
    found = probe()
    if found.status == "no_gpu":
        print("gpu_check: no GPU on this machine (no CUDA device, no /dev/nvidia*, no nvidia-smi GPU); nothing to "
              "check. Exit 0.")
        write_report(args.out, found, [])
        return 0
    if found.status != "ok":
        print(f"gpu_check: GPU unusable: {found.reason}", file=sys.stderr)
        write_report(args.out, found, [])
        return 2
    parts = set(args.only.split(","))
    rows = check_pretraining(args) if "pretrain" in parts else []
    write_report(args.out, found, rows)
    if "segment" in parts:
        check_segmentation(args)
    if "precision" in parts:
        check_precision()
    return 0


if __name__ == "__main__":
    sys.exit(main())
