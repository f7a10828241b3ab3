"""Pretraining commands: ``pretrain`` (1 process, or every rank under torchrun) and ``export-backbone``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

#: the GPUs ``--plan`` models (``dinocell_core.ssl.cost.GPUS``; named here so the plan stays torch-free)
GPU_NAMES = ("A100-40", "A100-80", "H100")


def register(subparsers: argparse._SubParsersAction) -> None:
    pt = subparsers.add_parser(
        "pretrain", help="continue DINOv3 SSL pretraining (DINO+iBOT+KoLeo) on JUMP fields",
        description="Self-supervised pretraining of a DINOv3 ViT on CPJUMP1 fields. Writes a run directory "
                    "(config.yaml, metrics.jsonl, status.json, run.log, checkpoints/); running it again on the same "
                    "run directory resumes from the last checkpoint. SIGTERM/SIGINT checkpoint and stop. For several "
                    "GPUs: torchrun --nproc_per_node=N -m dinocell_core.cli pretrain CONFIG --run-dir DIR "
                    "(see docs/pretraining.md).")
    pt.add_argument("config", type=Path, help="pretraining YAML config (see configs/pretrain_*.yaml)")
    pt.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=32 data.root=/data")
    pt.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/pretrain-<name>)")
    pt.add_argument("--allow-config-change", action="store_true",
                    help="resume although the config differs from the one stored in the checkpoint (the changes "
                         "are recorded in the run's config_history.jsonl and status.json)")
    pt.add_argument("--plan", type=Path, default=None, metavar="OUT.json",
                    help="do not train: print the schedule's milestones and the run's cost, and write the per-step "
                         "lr, last_layer_lr, backbone_lr_factor, wd, momentum and teacher_temp of every 10th step "
                         "to OUT.json (needs neither data nor weights)")
    pt.add_argument("--world-size", type=int, default=None,
                    help="with --plan: number of processes (GPUs) the run will use (default: $WORLD_SIZE or 1)")
    pt.add_argument("--fields", type=int, default=None,
                    help="with --plan: number of fields in the data, to report passes over it")
    pt.add_argument("--gpu", choices=list(GPU_NAMES), default=None,
                    help="refuse the config, before any data is read, when its counted peak memory does not fit "
                         "this GPU (with --plan too); --plan reports every GPU's peak memory and step time")
    pt.set_defaults(handler=_pretrain)

    ex = subparsers.add_parser(
        "export-backbone", help="export a run's teacher backbone (official DINOv3 layout: .pth + .safetensors)",
        description="Writes FILE.pth (tensors only, official DINOv3 keys), FILE.safetensors (+ metadata) and "
                    "FILE.json from the newest verified checkpoint of RUN (or a checkpoint file).")
    ex.add_argument("run", type=Path, help="pretraining run directory or checkpoint file")
    ex.add_argument("-o", "--output", type=Path, required=True, help="output name (suffix optional)")
    ex.set_defaults(handler=_export)


def _pretrain(args: argparse.Namespace) -> int:
    """SIGTERM/SIGINT handlers go in first: a stop during start-up (imports, index, model) ends as a clean "stopped"
    run with its status written, not a process killed before status.json exists."""
    from dinocell_core.runs.stopping import StopRequest

    with StopRequest():  # the trainer's own StopRequest joins this one
        return _pretrain_run(args)


def _pretrain_run(args: argparse.Namespace) -> int:
    from dinocell_core.config import load_config
    from dinocell_core.runs.logs import setup_logging
    from dinocell_core.runs.rundir import RunDir
    from dinocell_core.ssl.config import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.plan is not None:
        return _plan(cfg, args)
    if args.gpu is not None:
        from dinocell_core.ssl.cost import hardware_plan

        refusal = _gpu_refusal(hardware_plan(cfg), args.gpu)
        if refusal:
            print(f"dinocell-core: {refusal}", file=sys.stderr)
            return 2
    from dinocell_core.ssl.trainer import run_pretraining  # torch: only when training
    run = RunDir(args.run_dir or Path("runs") / f"pretrain-{cfg.name}")
    rank = int(os.environ.get("RANK", "0"))
    run.ensure()
    lock = run.lock()
    if rank == 0:
        lock.acquire()  # before run.log is opened: a refused second trainer writes nothing into the run
    try:
        setup_logging(run.log_path if rank == 0 else run.path / f"run.rank{rank}.log", rank=rank)
        run_pretraining(cfg, run.path, allow_config_change=args.allow_config_change)
    except FloatingPointError as exc:
        print(f"dinocell-core: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    if rank == 0 and run.read_status().get("state") == "stopped":
        print(f"stopped; resume with the same command (run dir {run.path})", file=sys.stderr)
        # under torchrun a non-zero exit of rank 0 reads as a crash (ChildFailedError + traceback): a clean stop
        # (every rank checkpointed and stopped together) exits 0 there
        return 0 if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 143
    return 0


def _plan(cfg: object, args: argparse.Namespace) -> int:
    import json

    from dinocell_core.io.fsutil import atomic_write_text
    from dinocell_core.ssl.plan import describe, plan_table
    from dinocell_core.ssl.schedules import schedule_spec

    world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1:
        print("dinocell-core: --world-size must be ≥ 1", file=sys.stderr)
        return 2
    for line in describe(cfg, world, args.fields):  # type: ignore[arg-type]
        print(line)
    hw = _hardware_plan(cfg)
    for line in _hardware_lines(hw):
        print(line)
    refusal = _gpu_refusal(hw, args.gpu) if args.gpu else None
    if refusal:
        print(f"dinocell-core: {refusal}", file=sys.stderr)
        return 2
    args.plan.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.plan, json.dumps({**plan_table(schedule_spec(cfg, world)), **hw}) + "\n")
    print(f"per-step values (every 10th step), peak memory and step time per GPU: {args.plan}")
    return 0


def _hardware_plan(cfg: Any) -> dict[str, Any]:
    """``dinocell_core.ssl.cost.hardware_plan`` in a child process: the count needs torch, the plan does not."""
    from dinocell_core.config import config_to_dict

    proc = subprocess.run([sys.executable, "-m", "dinocell_core.ssl.cost"], input=json.dumps(config_to_dict(cfg)),
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if proc.returncode != 0:
        raise RuntimeError(f"counting the step's cost failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def _hardware_lines(hw: dict[str, Any]) -> list[str]:
    h = hw["hardware"]
    lines = [f"hardware (one training step counted per op on meta tensors at batch {h['batch_size']} per GPU, "
             f"slope from batch {h['counted_at_batches'][0]}; eager ops: compile only lowers these):",
             f"  peak memory {hw['peak_memory_gb']:.1f} GB = {h['peak_memory_gb_fixed']:.2f} GB + "
             f"{h['peak_memory_gb_per_sample']:.3f} GB/sample; {h['flops_per_step'] / 1e12:.2f} TFLOP and "
             f"{h['bytes_per_step'] / 1e9:.0f} GB moved per step; {h['host_syncs_per_step']} host sync(s) per step"]
    for name, s in hw["step_s"].items():
        lines.append(f"  {name:<8} modelled step {s:.3f} s ({3600 / s:,.0f} it/h); "
                     f"{'fits' if h['fits'][name] else 'does NOT fit'} (largest batch that fits: "
                     f"{h['max_batch'][name]})")
    return lines


def _gpu_refusal(hw: dict[str, Any], gpu: str) -> str | None:
    """Why the config cannot run on ``gpu`` (None when it fits)."""
    h = hw["hardware"]
    if h["fits"][gpu]:
        return None
    return (f"the config does not fit on {gpu}: counted peak memory {hw['peak_memory_gb']:.1f} GB at batch "
            f"{h['batch_size']} per GPU (plus {h['reserved_gb']:.1f} GB for CUDA and ×{h['fragmentation']:.2f} for the "
            f"allocator); the largest batch that fits is {h['max_batch'][gpu]} (train.batch_size), or turn on "
            "train.activation_checkpointing")


def _export(args: argparse.Namespace) -> int:
    from dinocell_core.ssl.export import export_backbone

    for p in export_backbone(args.run, args.output):
        print(p)
    return 0
