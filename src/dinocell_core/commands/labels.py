"""Label commands: ``jump label`` (CPJUMP1 CellProfiler segmentation or imported masks into a labels store) and
``models report`` (per-channel report card of model bundles against a labels store)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dinocell_core.commands.shard_options import add_shard_options, shard_line
from dinocell_core.labels.settings import METHODS, CellProfilerParams, LabelSettings
from dinocell_core.measure.names import FEATURE_SETS

#: options of ``jump label`` that are no settings field: what to read and write, and the machine's share (workers)
LABEL_RUN_OPTIONS = frozenset({"root", "output", "from_dir", "param", "endpoint_url", "workers", "measure", "shard",
                               "merge", "help"})


def add_jump_label(j_sub: argparse._SubParsersAction) -> None:
    jl = j_sub.add_parser("label", help="make nuclei/cell labels for every field (CPJUMP1 CellProfiler pipeline)",
                          description="Label every field of ROOT into the labels store LABELS (labels.csv, LZW "
                                      "mask TIFFs per plate folder, manifest.json, qc.csv, contact_sheet.png). "
                                      "The tree is never written. Re-running skips fields already labelled; bad "
                                      "fields are skipped with their reason (skipped.csv).")
    jl.add_argument("root", help="CPJUMP1 tree (folder or s3:// prefix) or an index CSV")
    jl.add_argument("-o", "--output", required=True, help="labels store folder (LABELS; local)")
    jl.add_argument("--method", choices=METHODS, default=LabelSettings.model_fields["method"].default)
    jl.add_argument("--from", dest="from_dir", type=Path, default=None,
                    help="--method import: folder of <image prefix>_nuclei/_cells masks (per plate folder)")
    jl.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a pipeline setting, e.g. min_diameter=8 or cells_bounds=0.005,0.025")
    jl.add_argument("--no-illum", dest="illumination", action="store_false",
                    default=CellProfilerParams.model_fields["illumination"].default,
                    help="skip illumination correction (no Illum*.npy files)")
    jl.add_argument("--endpoint-url", default=None, help="S3 endpoint of an s3:// ROOT (mirror or test server)")
    jl.add_argument("--measure", choices=FEATURE_SETS, default=None,
                    help="then measure every labelled field's cells (minimal: 17 per object; full: CellProfiler's "
                         "measurements by cp-measure) into LABELS/measurements/<set>/<plate folder>/<well>_sSS.parquet")
    jl.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    add_shard_options(jl, "LABELS.shards/shard-I-of-N (a labels store of its own)", "the labels store")
    jl.add_argument("--qc-fields", type=int, default=LabelSettings.model_fields["qc_fields"].default,
                    help="fields on the contact sheet (0: none)")
    jl.add_argument("--seed", type=int, default=LabelSettings.model_fields["seed"].default,
                    help="which random fields the contact sheet shows")
    jl.set_defaults(handler=_jump_label)


def add_models_report(md_sub: argparse._SubParsersAction) -> None:
    mr = md_sub.add_parser("report", help="per-channel AP@0.5/F1/count agreement against a labels store",
                           description="Score every bundle in MODELS on the held-out fields of LABELS (fields the "
                                       "bundle did not train on), auto and corrected labels separately; prints a "
                                       "table and writes report.csv / report.png / report.json.")
    mr.add_argument("models", type=Path)
    mr.add_argument("labels", help="labels store folder (local)")
    mr.add_argument("--root", default=None, help="the image tree, a folder or s3:// prefix (default: the store's "
                                                 "source root)")
    mr.add_argument("--endpoint-url", default=None, help="S3 endpoint of an s3:// image tree (mirror or test server)")
    mr.add_argument("-o", "--output", type=Path, default=None, help="output folder (default: MODELS/report)")
    mr.add_argument("--device", default="auto")
    mr.add_argument("--max-fields", type=int, default=None, help="per model and label source")
    mr.set_defaults(handler=_models_report)


def _jump_label(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dinocell_core.io.shards import Shard
    from dinocell_core.labels.run import label_tree, merge_label_shards
    from dinocell_core.labels.settings import parse_params

    params = parse_params([*args.param, *([] if args.illumination else ["illumination=false"])])
    if args.method == "import" and (args.param or not args.illumination):
        raise ValueError("--param and --no-illum apply to --method cellprofiler only")
    if args.measure is not None:
        from dinocell_core.measure.cells import check_features

        check_features(args.measure)  # a missing cp-measure is said before any field is labelled
    shard = Shard.parse(args.shard) if args.shard else None
    common = dict(method=args.method, params=params, from_dir=args.from_dir, qc_fields=args.qc_fields, seed=args.seed,
                  endpoint_url=args.endpoint_url)
    if args.merge:
        summary = merge_label_shards(args.root, args.output, **common)
    else:
        with tqdm(unit="field", desc=f"label ({args.method}{f', shard {shard}' if shard else ''})") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            summary = label_tree(args.root, args.output, workers=args.workers, progress=progress, shard=shard,
                                 **common)
    print(summary.text())
    if shard is not None:
        print(shard_line(shard, summary.merged, summary.waiting, f"the labels store {args.output}"))
        if not summary.merged:
            return 0  # the store is measured by the shard that merges (the masks are in the parts until then)
    if args.measure is not None:
        from dinocell_core.labels.measure import MEASUREMENTS_DIR, measure_store
        from dinocell_core.labels.run import source_storage, tree_fields

        storage = source_storage(args.root, args.endpoint_url)
        fields, _ = tree_fields(args.root, storage)
        with tqdm(unit="field", desc=f"measure ({args.measure})") as bar:
            def measured(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            written, kept, failed = measure_store(args.output, args.root, fields, args.measure, storage=storage,
                                                  progress=measured)
        print(f"measured {written} field(s) ({kept} already measured) into "
              f"{Path(args.output) / MEASUREMENTS_DIR / args.measure}")
        for line in failed:
            print(f"not measured: {line}", file=sys.stderr)
    print(f"labels store: {args.output}")
    return 0


def _models_report(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dinocell_core.seg.report import format_report, models_report, write_report

    with tqdm(unit="field", desc="report") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        rows = models_report(args.models, args.labels, root=args.root, device=args.device,
                             max_fields=args.max_fields, progress=progress, endpoint_url=args.endpoint_url)
    out = args.output or args.models / "report"
    write_report(rows, out)
    print(format_report(rows))
    print(f"written {out}/report.csv, report.png, report.json")
    return 0
