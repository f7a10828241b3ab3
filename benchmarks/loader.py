"""Loader benchmark: decode floor vs. full SSL sample cost, in ONE process on ONE core.

Prints, on a 1080×1080 LZW synthetic CPJUMP1 fixture:
  * seconds to decode the 5 fluorescent TIFFs of a field (the floor: nothing can be faster per new field),
  * SSL samples/s in one worker process (2 global 224 + 8 local 96 crops, augmentation, iBOT masks, collate),
  * the ratio sample-time / decode-floor (goal ≤ 1.5: preprocessing + augmentation ≤ 50 % on top of decoding),
  * the same with several crop sets per decoded field (crops_per_field > 1),
  * the same on fields stored by ``dinocell-core jump prepare`` (uint16 .npy views),
  * index scanning speed on a synthetic CPJUMP1-shaped tree of empty files (--scan-fields, 0 to skip).

Usage: python benchmarks/loader.py [--work DIR] [--fields 12] [--samples 48] [--mode fluorescent_mean]
                                   [--scan-fields 20000]
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

from dinocell_core.io.tiffio import read_tiff  # noqa: E402
from dinocell_core.jump.channels import FLUORESCENT  # noqa: E402
from dinocell_core.jump.index import (
    file_name,
    index_fields,
    load_index,
    read_index_csv,
    write_index_csv,  # noqa: E402
)
from dinocell_core.ssl.config import DataConfig  # noqa: E402
from dinocell_core.ssl.data import make_ssl_loader  # noqa: E402
from dinocell_core.ssl.prepare import prepare_fields  # noqa: E402
from dinocell_core.synthetic.fixture import make_jump_fixture  # noqa: E402


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
    """Per-field decode time: median over fields of the best of ``repeats`` passes (files in page cache)."""
    fields = load_index(root)
    best = [float("inf")] * len(fields)
    for _ in range(repeats):
        for i, f in enumerate(fields):
            t0 = time.perf_counter()
            for ch in FLUORESCENT:
                read_tiff(f.path(root, ch))
            best[i] = min(best[i], time.perf_counter() - t0)
    return statistics.median(best)


def ssl_rate(cfg: DataConfig, n_samples: int, batch_size: int, repeats: int = 3) -> float:
    """Best of ``repeats`` runs (the machine may be shared: the best run is closest to one free core)."""
    steps = max(1, n_samples // batch_size)
    best = 0.0
    for r in range(repeats):
        loader = make_ssl_loader(cfg, patch_size=8, batch_size=batch_size, seed=r, num_workers=0, steps=steps + 1)
        it = iter(loader)
        next(it)  # warm-up batch (imports, first allocations)
        t0 = time.perf_counter()
        n = 0
        for batch in it:
            n += batch["global"].shape[1]
        best = max(best, n / (time.perf_counter() - t0))
    return best


def scan_speed(work: Path, n_fields: int) -> None:
    """Index a tree of empty files laid out like CPJUMP1 (384 wells × 9 sites × 8 channels per plate)."""
    root = work / f"scan_{n_fields}"
    per_plate = 384 * 9
    if not (root / ".complete").exists():
        made = 0
        for p in range(-(-n_fields // per_plate)):
            d = root / "2020_11_04_CPJUMP1" / "images" / f"BR{p:08d}__2020-11-05T19_51_35-Measurement1" / "Images"
            d.mkdir(parents=True, exist_ok=True)
            for w in range(384):
                for s in range(1, 10):
                    if made >= n_fields:
                        break
                    made += 1
                    for ch in range(1, 9):
                        open(d / file_name(w // 24 + 1, w % 24 + 1, s, ch), "wb").close()
        (root / ".complete").touch()
    t0 = time.perf_counter()
    res = index_fields(root)
    scan_s = time.perf_counter() - t0
    csv_path = work / f"scan_{n_fields}.csv"
    write_index_csv(res.fields, csv_path)
    t0 = time.perf_counter()
    read_index_csv(csv_path)
    read_s = time.perf_counter() - t0
    rate = len(res.fields) / scan_s
    print(f"index scan: {len(res.fields)} fields ({res.n_files} files) in {scan_s:.2f} s = {rate:,.0f} fields/s "
          f"(340k CPJUMP1 fields ≈ {340_475 / rate:.0f} s on this disk); cached index read: {read_s:.2f} s "
          f"(≈ {340_475 / len(res.fields) * read_s:.0f} s for 340k)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="folder for the fixture (kept for reuse)")
    ap.add_argument("--fields", type=int, default=12)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mode", default="fluorescent_mean")
    ap.add_argument("--scan-fields", type=int, default=20000, help="fields in the empty-file scan tree (0: skip)")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.gettempdir()) / "dinocell_bench"
    root = ensure_fixture(work, args.fields)
    load_index(root, refresh=True)

    floor = decode_floor(root, repeats=3)
    print(f"decode floor: {floor * 1000:.1f} ms per field (5 fluorescent 1080² LZW TIFFs) = "
          f"{1 / floor:.1f} fields/s")
    base = dict(root=str(root), channel_mode=args.mode, num_workers=0)
    for k in (1, 2, 4):
        cfg = DataConfig(**base, crops_per_field=k)
        rate = ssl_rate(cfg, args.samples, args.batch_size)
        extra = (1 / rate - floor) / floor
        print(f"SSL ({args.mode}, 2×224 + 8×96, crops_per_field={k}): {rate:.1f} samples/s per core; "
              f"sample time / decode floor = {(1 / rate) / floor:.2f}"
              + (f" (preprocessing + augmentation = {extra:.0%} on top of decoding)" if k == 1 else ""))
    prepared = work / f"prepared_{args.mode.replace(':', '_')}"
    t0 = time.perf_counter()
    prepare_fields(DataConfig(**base), prepared, workers=1)
    print(f"jump prepare: {(time.perf_counter() - t0) / args.fields * 1000:.0f} ms per field (one-off)")
    for k in (1, 4):
        cfg = DataConfig(**base, crops_per_field=k, prepared=str(prepared))
        rate = ssl_rate(cfg, args.samples, args.batch_size)
        print(f"SSL from prepared fields (crops_per_field={k}): {rate:.1f} samples/s per core")
    if args.scan_fields:
        scan_speed(work, args.scan_fields)


if __name__ == "__main__":
    main()
