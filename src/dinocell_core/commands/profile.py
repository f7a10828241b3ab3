"""Profiling commands: ``profile embed`` (images → well profiles), ``profile evaluate`` (the CPJUMP1 copairs
benchmark), ``profile compare`` (several backbones side by side)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _eval_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("benchmark settings (defaults: the CPJUMP1 benchmark)")
    g.add_argument("--normalize", default="negcon_mad", choices=["negcon_mad", "spherize_mad", "none"],
                   help="negcon_mad: per-plate MAD on negcon wells (CPJUMP1 *_normalized_negcon); spherize_mad: "
                        "sphering on all negcon wells then per-plate MAD (Kim et al.); none")
    g.add_argument("--plate-col", default="Metadata_Plate")
    g.add_argument("--perturbation-col", default="Metadata_broad_sample")
    g.add_argument("--control-col", default="Metadata_control_type")
    g.add_argument("--negcon-value", default="negcon", help="value of --control-col that marks negative controls")
    g.add_argument("--target-col", default="Metadata_target_list", help="pipe-separated compound targets")
    g.add_argument("--gene-col", default="Metadata_gene")
    g.add_argument("--modality-col", default="Metadata_modality")
    g.add_argument("--null-size", type=int, default=100_000, help="permutations of the mAP null (CPJUMP1: 100000)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threshold", type=float, default=0.05, help="BH-corrected p-value threshold")
    g.add_argument("--no-matching", action="store_true", help="replicate retrieval only")


def _settings(args: argparse.Namespace) -> Any:
    from dinocell_core.profiling.evaluate import EvalSettings

    return EvalSettings(plate_col=args.plate_col, pert_col=args.perturbation_col, control_col=args.control_col,
                        negcon_value=args.negcon_value, target_col=args.target_col, gene_col=args.gene_col,
                        modality_col=args.modality_col, normalize=args.normalize, null_size=args.null_size,
                        seed=args.seed, threshold=args.threshold, matching=not args.no_matching,
                        progress=not getattr(args, "quiet", False))


def register(subparsers: argparse._SubParsersAction) -> None:
    pp = subparsers.add_parser("profile", help="well profiles and the CPJUMP1 copairs benchmark")
    sub = pp.add_subparsers(dest="profile_command", metavar="ACTION", required=True)

    ev = sub.add_parser("evaluate", help="replicate retrieval and matching mAP of a well-profile table",
                        description="Score PROFILES (CSV or Parquet, one row per well; Metadata_* columns are "
                                    "metadata, the rest features) as the CPJUMP1 benchmark does: normalise, copairs "
                                    "mAP of replicate retrieval against same-plate negcon wells, and target/gene "
                                    "matching when those columns exist. Writes replicate_retrieval.csv, one CSV "
                                    "per matching task, summary.json and map_distributions.png.")
    ev.add_argument("profiles", type=Path)
    ev.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    _eval_options(ev)
    ev.set_defaults(handler=_evaluate)

    em = sub.add_parser("embed", help="images → well profiles with a backbone or the hand-crafted baseline",
                        description="Embed every field of a CPJUMP1 tree (folder, s3:// prefix or load_data CSV) "
                                    "in Kim et al.'s tiles or in per-cell crops from a labels store, aggregate "
                                    "unit → site → well and annotate with the CPJUMP1 metadata files. Resumable: "
                                    "run the same command again after a kill. OUTPUT.fields.csv lists every "
                                    "field's unit count and status (fields without labels are skipped and listed).")
    em.add_argument("root", help="CPJUMP1 folder, s3:// prefix or load_data CSV (as for `jump index`)")
    em.add_argument("-o", "--output", type=Path, required=True, help="profile table (.csv, .csv.gz, .parquet)")
    em.add_argument("--backbone", default="baseline",
                    help="baseline | random | official .pth | pretraining run dir | checkpoint | export")
    em.add_argument("--arch", default=None, help="architecture for random init or an official .pth")
    em.add_argument("--patch-size", type=int, default=8)
    em.add_argument("--model-kwargs", default=None, help='JSON of extra backbone arguments, e.g. \'{"depth": 2}\'')
    em.add_argument("--seed", type=int, default=0, help="seed of a random-init backbone")
    em.add_argument("--channels", default="fluorescent_mean",
                    help="fluorescent_mean | each (ch1–5 embedded separately, concatenated) | channel:N")
    em.add_argument("--tokens", default="cls", choices=["cls", "mean_patch", "cls+mean_patch"])
    em.add_argument("--units", default="tiles", choices=["tiles", "cells"],
                    help="tiles: Kim et al.'s 224-px tiles; cells: one crop per object of --labels")
    em.add_argument("--labels", default=None,
                    help="labels store (labels.csv + masks, from `jump label`) for --units cells")
    em.add_argument("--crop", type=int, default=96,
                    help="cells: crop size in px at native scale (DeepProfiler's CPJUMP1 box: 96 ≈ 57 µm at 20×)")
    em.add_argument("--centre", default="nuclei", choices=["nuclei", "cells"],
                    help="cells: centre each crop on the nucleus or the cell centroid")
    em.add_argument("--border", default="pad", choices=["pad", "shift", "skip"],
                    help="cells: a crop leaving the field is zero-padded (cell centred), shifted inside the "
                         "field, or skipped")
    em.add_argument("--tile", type=int, default=224, help="tile size in px (Kim et al.: 224)")
    em.add_argument("--min-dna-fraction", type=float, default=0.01)
    em.add_argument("--site-aggregation", default="mean", choices=["mean", "median"])
    em.add_argument("--well-aggregation", default="mean", choices=["mean", "median"])
    em.add_argument("--illumination", action="store_true", help="divide by the plates' illumination functions")
    em.add_argument("--metadata", type=Path, default=None,
                    help="folder with platemaps/…/barcode_platemap.csv and the perturbation .tsv files "
                         "(default: ROOT's workspace/metadata)")
    em.add_argument("--no-metadata", action="store_true", help="write plate/well only, no annotations")
    em.add_argument("--plates", nargs="+", default=None, help="only these plate barcodes")
    em.add_argument("--batch-size", type=int, default=64)
    em.add_argument("--device", default="auto")
    em.add_argument("--chunk-sites", type=int, default=32, help="sites per resumable chunk")
    em.add_argument("--endpoint-url", default=None, help="S3 endpoint (mirror or test server)")
    em.add_argument("--quiet", action="store_true")
    em.set_defaults(handler=_embed)

    cp = sub.add_parser("compare", help="fraction retrieved and mean mAP per task for several backbones",
                        description="INPUTS are `profile evaluate` output folders or profile tables (evaluated "
                                    "here with the options below). Writes comparison.csv and comparison.png.")
    cp.add_argument("inputs", nargs="+")
    cp.add_argument("-o", "--output", type=Path, required=True)
    cp.add_argument("--labels", nargs="+", default=None, help="one name per input (default: file/folder names)")
    cp.add_argument("--quiet", action="store_true")
    _eval_options(cp)
    cp.set_defaults(handler=_compare)


def _print_summary(summary: dict[str, Any]) -> None:
    for task, v in summary.items():
        if isinstance(v, dict) and "fraction_retrieved" in v:
            n = v.get("n_perturbations", v.get("n_groups"))
            print(f"{task:28s} fraction retrieved {v['fraction_retrieved']:.3f}   mean mAP {v['mean_map']:.3f}   "
                  f"(n={n})")
    for task, why in summary.get("skipped_tasks", {}).items():
        print(f"{task:28s} skipped: {why}")
    for note in summary.get("exclusions", []):
        print(f"excluded: {note}")


def _evaluate(args: argparse.Namespace) -> int:
    from dinocell_core.profiling.evaluate import evaluate_profiles
    from dinocell_core.profiling.report import write_evaluation
    from dinocell_core.profiling.table import read_profiles

    ev = evaluate_profiles(read_profiles(args.profiles), _settings(args), source=str(args.profiles))
    write_evaluation(ev, args.output)
    _print_summary(ev.summary())
    print(f"wrote {args.output}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from dinocell_core.jump.index import load_index
    from dinocell_core.profiling.embed import (
        EmbedSettings,
        embed_profiles,
        find_metadata_dir,
    )
    from dinocell_core.profiling.table import ProfileError

    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else None
    s = EmbedSettings(backbone=args.backbone, arch=args.arch, patch_size=args.patch_size, model_kwargs=kwargs,
                      seed=args.seed, channels=args.channels, tokens=args.tokens, units=args.units,
                      labels=args.labels, crop=args.crop, centre=args.centre, border=args.border, tile=args.tile,
                      min_dna_fraction=args.min_dna_fraction, site_aggregation=args.site_aggregation,
                      well_aggregation=args.well_aggregation, illumination=args.illumination,
                      batch_size=args.batch_size, device=args.device, chunk_sites=args.chunk_sites)
    storage = None
    if args.root.startswith("s3://") or args.endpoint_url:
        from dinocell_core.io.storage import S3Storage

        storage = S3Storage(endpoint_url=args.endpoint_url)
    metadata = None
    if not args.no_metadata:
        metadata = args.metadata or find_metadata_dir(args.root)
        if metadata is None:
            raise ProfileError(f"no CPJUMP1 metadata (barcode_platemap.csv) under {args.root}/workspace/metadata; "
                               "pass --metadata DIR or --no-metadata")
    fields = load_index(args.root, storage=storage)
    if args.plates:
        fields = [f for f in fields if f.plate in set(args.plates)]
    wells = embed_profiles(args.root, fields, args.output, s, metadata=metadata, storage=storage,
                           progress=not args.quiet)
    n_feat = sum(not str(c).startswith("Metadata_") for c in wells.columns)
    info = json.loads(Path(f"{args.output}.json").read_text())
    unit = f", {info['n_units']} {args.units}" if args.units == "cells" else ""
    print(f"wrote {args.output}: {len(wells)} wells × {n_feat} features from {info['n_fields']} fields{unit}; "
          f"per field: {args.output}.fields.csv")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from dinocell_core.profiling.compare import compare

    table = compare(args.inputs, args.output, labels=args.labels, settings=_settings(args))
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {args.output}/comparison.csv and comparison.png")
    return 0
