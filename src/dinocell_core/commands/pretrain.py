"""Pretraining commands: ``pretrain`` (1 process, or every rank under torchrun) and ``export-backbone``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


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
    pt.add_argument("--plan", type=Path, default=None, metavar="OUT.json",
                    help="do not train: print the schedule's milestones and the run's cost, and write the per-step "
                         "lr, last_layer_lr, backbone_lr_factor, wd, momentum and teacher_temp of every 10th step "
                         "to OUT.json (needs neither data nor weights)")
    pt.add_argument("--world-size", type=int, default=None,
                    help="with --plan: number of processes (GPUs) the run will use (default: $WORLD_SIZE or 1)")
    pt.add_argument("--fields", type=int, default=None,
                    help="with --plan: number of fields in the data, to report passes over it")
    pt.set_defaults(handler=_pretrain)

    ex = subparsers.add_parser(
        "export-backbone", help="export a run's teacher backbone (official DINOv3 layout: .pth + .safetensors)",
        description="Writes FILE.pth (tensors only, official DINOv3 keys), FILE.safetensors (+ metadata) and "
                    "FILE.json from the newest verified checkpoint of RUN (or a checkpoint file).")
    ex.add_argument("run", type=Path, help="pretraining run directory or checkpoint file")
    ex.add_argument("-o", "--output", type=Path, required=True, help="output name (suffix optional)")
    ex.set_defaults(handler=_export)


def _pretrain(args: argparse.Namespace) -> int:
    from dinocell_core.config import load_config
    from dinocell_core.runs.logs import setup_logging
    from dinocell_core.runs.rundir import RunDir
    from dinocell_core.ssl.config import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.plan is not None:
        return _plan(cfg, args)
    from dinocell_core.ssl.trainer import run_pretraining  # torch: only when training
    run = RunDir(args.run_dir or Path("runs") / f"pretrain-{cfg.name}")
    rank = int(os.environ.get("RANK", "0"))
    run.path.mkdir(parents=True, exist_ok=True)
    lock = run.lock()
    if rank == 0:
        lock.acquire()  # before run.log is opened: a refused second trainer writes nothing into the run
    try:
        setup_logging(run.log_path if rank == 0 else run.path / f"run.rank{rank}.log", rank=rank)
        run_pretraining(cfg, run.path)
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
    args.plan.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.plan, json.dumps(plan_table(schedule_spec(cfg, world))) + "\n")
    print(f"per-step values (every 10th step): {args.plan}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from dinocell_core.ssl.export import export_backbone

    for p in export_backbone(args.run, args.output):
        print(p)
    return 0
