"""Loader benchmark: decode floor vs. full SSL sample cost, in ONE process on ONE core.

Prints, on a 1080×1080 LZW synthetic CPJUMP1 fixture:
  * seconds to decode the 5 fluorescent TIFFs of a field (the floor: nothing can be faster per new field),
  * SSL samples/s in one worker process (2 global 224 + 8 local 96 crops, augmentation, iBOT masks, collate),
  * the ratio sample-time / decode-floor (goal ≤ 1.5: preprocessing + augmentation ≤ 50 % on top of decoding),
  * the same with several crop sets per decoded field (crops_per_field > 1),
  * and, when --prepared is given, the same on fields stored by ``dinocell-core jump prepare``.

Usage: python benchmarks/loader.py [--work DIR] [--fields 12] [--samples 48] [--mode fluorescent_mean]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import torch  # noqa: E402

from dinocell_core.fixture import make_jump_fixture  # noqa: E402
from dinocell_core.jump import FLUORESCENT, load_index  # noqa: E402
from dinocell_core.ssl_data import DataConfig, make_ssl_loader  # noqa: E402
from dinocell_core.tiffio import read_tiff  # noqa: E402


def ensure_fixture(work: Path, n_fields: int) -> Path:
    root = work / "fixture_1080"
    marker = root / f".complete_{n_fields}"
    if not marker.exists():
        sites = 4
        wells = max(1, -(-n_fields // sites))
        t0 = time.perf_counter()
        make_jump_fixture(root, plates=1, wells=wells, sites=sites, size=1080, seed=0, edge_cases=False)
        print(f"fixture: {wells * sites} fields of 1080×1080 written in {time.perf_counter() - t0:.1f} s")
        marker.touch()
    return root


def decode_floor(root: Path, repeats: int) -> float:
    fields = load_index(root)
    times = []
    for _ in range(repeats):
        for f in fields:
            t0 = time.perf_counter()
            for ch in FLUORESCENT:
                read_tiff(f.path(root, ch))
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ssl_rate(cfg: DataConfig, n_samples: int, batch_size: int) -> float:
    steps = max(1, n_samples // batch_size)
    loader = make_ssl_loader(cfg, patch_size=8, batch_size=batch_size, seed=0, num_workers=0, steps=steps + 1)
    it = iter(loader)
    next(it)  # warm-up batch (imports, first allocations)
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        n += batch["global"].shape[1]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="folder for the fixture (kept for reuse)")
    ap.add_argument("--fields", type=int, default=12)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mode", default="fluorescent_mean")
    ap.add_argument("--prepared", type=Path, default=None, help="output of `dinocell-core jump prepare`")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.gettempdir()) / "dinocell_bench"
    root = ensure_fixture(work, args.fields)
    load_index(root, refresh=True)

    floor = decode_floor(root, repeats=2)
    print(f"decode floor: {floor * 1000:.1f} ms per field (5 fluorescent 1080² LZW TIFFs) = "
          f"{1 / floor:.1f} fields/s")
    base = dict(root=str(root), channel_mode=args.mode, num_workers=0)
    for k in (1, 2, 4):
        cfg = DataConfig(**base, crops_per_field=k)
        rate = ssl_rate(cfg, args.samples, args.batch_size)
        print(f"SSL ({args.mode}, 2×224 + 8×96, crops_per_field={k}): {rate:.1f} samples/s per core; "
              f"sample time / decode floor = {(1 / rate) / floor:.2f}" + (" (new field per sample)" if k == 1 else ""))
    if args.prepared is not None:
        for k in (1, 4):
            cfg = DataConfig(**base, crops_per_field=k, prepared=str(args.prepared))
            rate = ssl_rate(cfg, args.samples, args.batch_size)
            print(f"SSL from prepared fields, crops_per_field={k}: {rate:.1f} samples/s per core")


if __name__ == "__main__":
    main()
