"""``segment-plate``: every field of JUMP plates → labels + per-cell measurements (Parquet), resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dinocell_core.commands.shard_options import add_shard_options, shard_line
from dinocell_core.commands.segment import add_inference_options
from dinocell_core.measure.names import FEATURE_SETS


def register(subparsers: argparse._SubParsersAction) -> None:
    sp = subparsers.add_parser(
        "segment-plate", help="segment whole JUMP plates and measure every cell (Parquet)",
        description="Every field of ROOT (a CPJUMP1 folder, s3:// prefix or load_data CSV; --plates selects) with "
                    "the models in MODELS (DNA bundle → nuclei, the cell-channel bundle → cells): labels per field "
                    "as TIFF and per-cell measurements with CellProfiler column names (Metadata_Plate, "
                    "Metadata_Well, Metadata_Site, ObjectNumber, Cells_AreaShape_Area, "
                    "Cells_Intensity_MeanIntensity_DNA, Cells_Parent_Nuclei, Nuclei_*) as Parquet, one file per "
                    "finished plate; intensities on CellProfiler's 0–1 scale (uint16 ÷ 65535). Run it again to "
                    "resume after a kill.")
    sp.add_argument("models", type=Path, help="models folder (bundles; see `models list`)")
    sp.add_argument("root", help="CPJUMP1 folder, s3:// prefix or load_data CSV")
    sp.add_argument("-o", "--output", type=Path, required=True, help="output folder (resumes when it exists)")
    sp.add_argument("--plates", nargs="+", default=None, help="plate barcodes or plate folders (default: all)")
    sp.add_argument("--cells-channel", default=None,
                    help="channel whose model gives the cells (default: the only non-DNA model in MODELS)")
    add_inference_options(sp)
    sp.add_argument("--max-fields", type=int, default=None, help="stop after this many fields (resume later)")
    sp.add_argument("--features", choices=FEATURE_SETS, default=FEATURE_SETS[0],
                    help="minimal: 17 per object (area/shape, centre, 5 intensities per channel); full: CellProfiler's "
                         "measurements by cp-measure (shape, Zernike, Feret, intensity, texture, granularity, radial "
                         "distribution per channel, correlation per channel pair; pip install 'dinocell[measure]')")
    add_shard_options(sp, "OUTPUT's per-field files (no plate table)", "the plate tables")
    sp.set_defaults(handler=_segment_plate)


def _segment_plate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dinocell_core.io.shards import Shard
    from dinocell_core.seg.plate import PlateRun

    shard = Shard.parse(args.shard) if args.shard else None
    run = PlateRun(args.models, args.root, args.output, plates=args.plates, device=args.device,
                   batch_size=args.batch_size, cells_channel=args.cells_channel, features=args.features,
                   precision=args.precision, shard=shard)
    if args.merge:
        for t in run.merge_shards():
            print(f"plate table {t}")
        return 0
    for obj, b in run.models.items():
        print(f"{obj:<7} {b.name} ({b.channel}) thresholds {b.metadata.get('thresholds')}")
    with tqdm(desc=f"segment-plate{f' shard {shard}' if shard else ''}", unit="field") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        res = run.run(progress=progress, max_fields=args.max_fields)
    new = res.done - res.done_before
    print(f"{new} fields segmented in {res.seconds:.1f} s ({res.done_before} already done, "
          f"{res.total - res.done - len(res.failed)} left); network {res.network_s:.1f} s")
    for t in res.tables:
        print(f"plate table {t}")
    if shard is not None:
        print(shard_line(shard, res.merged, res.waiting, "the plate tables", res.shard_finished))
    if res.failed:
        for line in res.failed:
            print(f"failed: {line}", file=sys.stderr)
        print(f"{len(res.failed)} fields failed (rerun to retry them)", file=sys.stderr)
        return 1
    return 0
