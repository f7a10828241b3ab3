"""Sharded plate jobs (``--shard I/N``, the last shard merging): CPU-seconds per 1080² field of each job, run as the
CLI processes a Slurm array runs, and what sharding adds over one run.

    python benchmarks/shards.py                                  # 4 fields, 2 shards, every job
    python benchmarks/shards.py --fields 8 --shards 4 --only label,embed

Builds (once, under --work) a synthetic CPJUMP1 plate of 1080² fields with all 8 channels, then runs each job as
``dinocell-core`` subprocesses with OMP_NUM_THREADS=1 — first one unsharded run, then the N shards one after the
other (the last one merges) — and reports their children's CPU-seconds: per field of the one run (the per-core
figure that a loaded machine's wall clock does not give) and what each extra task costs (start-up, the tree's
listing, the merge), the fixed price of a shard. Jobs: ``jump label`` (the CPJUMP1 CellProfiler pipeline),
``profile embed`` with the hand-crafted baseline and with a random-init ViT-S/8 (224-px tiles, the 5 fluorescent
channels embedded separately: the ViT default), ``segment-plate`` with two random-init ViT-S/8 decoders (DNA →
nuclei, AGP → cells, 256-px tiles) and the minimal measurements. Random weights cost what trained ones do. It also
checks that the sharded outputs equal the unsharded ones byte for byte (the manifests' timestamps aside).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# run as a script, benchmarks/ heads the path and its profile.py would shadow the standard library's (torch imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from dinocell_core.jump.index import load_index  # noqa: E402
from dinocell_core.synthetic.fixture import make_jump_fixture  # noqa: E402

JOBS = ("label", "embed", "embed-vit", "plate")
LABEL_TIMES = ("created", "updated")


def cli(*args: str) -> tuple[float, float]:
    """(child CPU-seconds, wall seconds) of one ``dinocell-core`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "dinocell_core.cli", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"dinocell-core {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def output_files(out: Path) -> dict[str, bytes]:
    """A job's output (a folder, or a table and its .json / .fields.csv), lock files and timestamps left out."""
    if out.is_dir():
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                 if p.is_file() and not p.name.endswith(".lock")}
    else:
        files = {s: Path(f"{out}{s}").read_bytes() for s in ("", ".json", ".fields.csv") if Path(f"{out}{s}").is_file()}
    for name in ("manifest.json", "segment-plate.json"):
        if name in files:
            m = json.loads(files[name])
            for key in (*LABEL_TIMES, "created_at"):
                m.pop(key, None)
            m.get("last_run", {}).pop("seconds", None)
            files[name] = json.dumps(m, sort_keys=True).encode()
    return files


def vit_bundle(folder: Path, channel: str) -> Path:
    """A random-weight ViT-S/8 decoder bundle, as benchmarks/segment.py makes them (256-px tiles, 64 px overlap)."""
    from dinocell_core.backbones.loading import load_backbone
    from dinocell_core.seg.bundle import save_bundle
    from dinocell_core.seg.decoder import DistanceDecoder
    from dinocell_core.seg.distance import resolve_thresholds

    model = DistanceDecoder(load_backbone("vit_small", patch_size=8), width=128, stem_width=16).eval()
    meta = {"name": f"bench-vits8-{channel}", "channel": channel,
            "backbone": {"arch": "vit_small", "patch_size": 8, "kwargs": {}, "source": None},
            "decoder": {"layers": model.layers, "width": 128, "stem_width": 16},
            "preprocessing": {"low": 1.0, "high": 99.8}, "thresholds": resolve_thresholds({}),
            "tile_size": 256, "overlap": 64}
    return save_bundle(folder / f"bench-{channel}.safetensors", model, meta)


def job_args(job: str, root: Path, work: Path) -> tuple[list[str], str]:
    """The job's command (without -o / --shard) and the output's name."""
    if job == "label":
        return ["jump", "label", str(root), "--workers", "1", "--qc-fields", "4"], "labels"
    if job == "embed":
        return ["profile", "embed", str(root), "--quiet", "--chunk-sites", "1"], "baseline.csv"
    if job == "embed-vit":
        return ["profile", "embed", str(root), "--quiet", "--chunk-sites", "1", "--backbone", "random", "--arch",
                "vit_small", "--patch-size", "8", "--device", "cpu", "--batch-size", "16"], "vits8.csv"
    models = work / "models"
    if not models.is_dir():
        models.mkdir()
        vit_bundle(models, "DNA")
        vit_bundle(models, "AGP")
    return ["segment-plate", str(models), str(root), "--device", "cpu", "--batch-size", "4"], "plate"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", type=int, default=4)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--only", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)}")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dinocell_bench_shards")
    args = ap.parse_args()
    root = args.work / f"plate_{args.fields}"
    if not root.is_dir():  # built aside, then renamed: an interrupted build is not taken for a plate
        shutil.rmtree(root.with_name(root.name + ".building"), ignore_errors=True)
        make_jump_fixture(root.with_name(root.name + ".building"), plates=1, wells=max(1, args.fields // 2),
                          sites=min(2, args.fields), size=1080, seed=0, edge_cases=False)
        root.with_name(root.name + ".building").rename(root)
    n = len(load_index(root))
    print(f"{n} fields of 1080² (8 channels), {args.shards} shards; OMP_NUM_THREADS=1; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'job':<10} {'one run CPU-s':>14} {'N shards CPU-s':>15} {'CPU-s/field':>12} {'extra per task':>15}  "
          "same bytes")
    for job in args.only.split(","):
        command, name = job_args(job, root, args.work)
        one, sharded = args.work / f"one_{name}", args.work / f"sharded_{name}"
        for q in (p for out in (one, sharded) for p in (out, *out.parent.glob(f"{out.name}.*")) if p.exists()):
            shutil.rmtree(q) if q.is_dir() else q.unlink()  # an earlier run's outputs
        cpu_one, _ = cli(*command, "-o", str(one))
        cpu_shards = sum(cli(*command, "-o", str(sharded), "--shard", f"{i}/{args.shards}")[0]
                         for i in range(1, args.shards + 1))
        same = output_files(one) == output_files(sharded)
        extra = (cpu_shards - cpu_one) / max(1, args.shards - 1)  # N processes instead of one, and the merge
        print(f"{job:<10} {cpu_one:>14.1f} {cpu_shards:>15.1f} {cpu_one / n:>12.2f} {extra:>15.1f}  {same}")


if __name__ == "__main__":
    main()
