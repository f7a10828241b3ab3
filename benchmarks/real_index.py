"""Index the REAL CPJUMP1 batch-1 metadata: speed and correctness of both index paths on real names.

Input: the batch-1 table shipped in PyPI ``jump-image-datasets`` 0.3.0
(``jump_image_datasets/jump_pilot/data/2020_11_04_CPJUMP1_all_plates.parquet``, one row per image; needs pyarrow)
or a wide load_data CSV (``URL_Orig*`` + ``Metadata_Plate/Well/Site``, .csv/.csv.gz) made from it.

Prints: load_data indexing speed; field/plate/well/site counts (reference: 186,925 sites, 51 plate folders of
which 4 are not Measurement1, 48 plates × 384 wells + 3 × 383); channel column ↔ ``chN`` agreement; then builds
an empty-file mirror of ``--plates`` real plate folders and checks that scanning it gives exactly the fields the
load_data path gives (and times the scan).

Usage: python benchmarks/real_index.py TABLE.parquet|LOAD_DATA.csv.gz [--plates 5] [--work DIR]
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import tempfile
import time
from pathlib import Path

from dinocell_core.jump.index import FILE_RE, S3_GALLERY, index_fields, index_load_data

URL_COLS = ["URL_OrigDNA", "URL_OrigLowZBF", "URL_OrigHighZBF", "URL_OrigBrightfield", "URL_OrigMito",
            "URL_OrigAGP", "URL_OrigER", "URL_OrigRNA"]


def parquet_to_load_data(parquet: Path, out: Path) -> None:
    """Pivot the long (one row per image) table back to CellProfiler's wide load_data layout."""
    import pyarrow.parquet as pq

    cols = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ChannelURLName", "Metadata_FileUrl"]
    table = pq.read_table(parquet, columns=cols)
    data = {c: table.column(c).to_pylist() for c in cols}
    rows: dict[tuple[str, str, int], dict[str, str]] = {}
    for plate, well, site, col, url in zip(*(data[c] for c in cols)):
        rows.setdefault((plate, well, site), {})[col] = url
    with gzip.open(out, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(URL_COLS + ["Metadata_Plate", "Metadata_Well", "Metadata_Site"])
        for (plate, well, site), urls in rows.items():
            w.writerow([urls.get(c, "") for c in URL_COLS] + [plate, well, site])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", type=Path)
    ap.add_argument("--plates", type=int, default=5, help="plate folders mirrored as empty files for the scan")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dinocell_real_index")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ld = args.table
    if ld.suffix == ".parquet":
        ld = args.work / "batch1_load_data.csv.gz"
        if not ld.exists():
            parquet_to_load_data(args.table, ld)

    t0 = time.perf_counter()
    res = index_load_data([ld])
    dt = time.perf_counter() - t0
    fields = res.fields
    print(f"load_data index: {len(fields):,} fields from {res.n_files:,} image URLs in {dt:.1f} s "
          f"({len(fields) / dt:,.0f} fields/s); incomplete rows: {res.n_incomplete}")
    folders = collections.Counter(f.plate_folder for f in fields)
    print(f"unique field keys: {len({f.key for f in fields}):,}; plate folders: {len(folders)}; not Measurement1: "
          + ", ".join(sorted(k for k in folders if not k.endswith("Measurement1"))))
    wells = collections.Counter(f.plate_folder for f in {(f.plate_folder, f.well): f for f in fields}.values())
    print("plates by number of wells:", dict(collections.Counter(wells.values())))
    per_well = collections.Counter((f.plate_folder, f.well) for f in fields)
    print("wells by number of sites:", dict(sorted(collections.Counter(per_well.values()).items())))
    mismatch = sum(int(FILE_RE.match(p.rsplit("/", 1)[1]).group(5)) != ch  # type: ignore[union-attr]
                   for f in fields for ch, p in f.paths.items())
    print(f"URL column vs file-name channel mismatches: {mismatch}")

    chosen = sorted(folders)[: args.plates]
    mirror = args.work / "mirror"
    subset = [f for f in fields if f.plate_folder in chosen]
    n_files = 0
    for f in subset:
        for url in f.paths.values():
            p = mirror / url[len(S3_GALLERY):]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
            n_files += 1
    t0 = time.perf_counter()
    scan = index_fields(mirror)
    dt = time.perf_counter() - t0
    via_ld = [f for f in index_load_data([ld], root=str(mirror)).fields if f.plate_folder in chosen]
    same = scan.fields == via_ld
    print(f"scan of an empty-file mirror of {len(chosen)} real plate folders ({n_files:,} files): "
          f"{len(scan.fields):,} fields in {dt:.2f} s ({len(scan.fields) / dt:,.0f} fields/s); identical to the "
          f"load_data index: {same}")
    if not same:
        raise SystemExit("scan and load_data disagree")


if __name__ == "__main__":
    main()
