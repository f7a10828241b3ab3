"""Profiling commands: ``profile embed`` (images → well profiles), ``profile evaluate`` (the CPJUMP1 copairs
benchmark), ``profile compare`` (several backbones side by side)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dinocell_core.commands.shard_options import add_shard_options, shard_line
from dinocell_core.config import PRECISIONS
from dinocell_core.measure.names import FEATURE_SETS
from dinocell_core.profiling.settings import (
    AGGREGATIONS,
    BORDERS,
    CELLPROFILER,
    CENTRES,
    TOKENS,
    UNITS,
    EmbedSettings,
    EvalSettings,
)

#: options that are no settings field: what to read and write, and how the command talks
RUN_OPTIONS = frozenset({"profiles", "root", "inputs", "output", "quiet", "metadata", "no_metadata", "plates",
                         "endpoint_url", "labels", "overrides", "shard", "merge", "help"})


def _option(g: Any, model: type, name: str, *flags: str, **kw: Any) -> None:
    """``--name`` (or ``flags``) setting field ``name`` of ``model``, with the model's default (its one home)."""
    g.add_argument(*(flags or (f"--{name.replace('_', '-')}",)), dest=name, default=model.model_fields[name].default,
                   **kw)


def _eval_options(p: argparse.ArgumentParser) -> None:
    from dinocell_core.profiling.normalize import NORMALIZATIONS

    g = p.add_argument_group("benchmark settings (defaults: the CPJUMP1 benchmark; any other EvalSettings field "
                             "as key=value)")
    _option(g, EvalSettings, "normalize", choices=NORMALIZATIONS,
            help="negcon_mad: per-plate MAD on negcon wells (CPJUMP1 *_normalized_negcon); spherize_mad: sphering on "
                 "all negcon wells then per-plate MAD (Kim et al.); none")
    _option(g, EvalSettings, "plate_col")
    _option(g, EvalSettings, "pert_col", "--perturbation-col")
    _option(g, EvalSettings, "control_col")
    _option(g, EvalSettings, "negcon_value", help="value of --control-col that marks negative controls")
    _option(g, EvalSettings, "target_col", help="pipe-separated compound targets")
    _option(g, EvalSettings, "gene_col")
    _option(g, EvalSettings, "modality_col")
    _option(g, EvalSettings, "null_size", type=int, help="permutations of the mAP null (CPJUMP1: 100000)")
    _option(g, EvalSettings, "seed", type=int)
    _option(g, EvalSettings, "threshold", type=float, help="BH-corrected p-value threshold")
    _option(g, EvalSettings, "matching", "--no-matching", action="store_false", help="replicate retrieval only")


def _is_override(item: str) -> bool:
    """``key=value`` (a settings override) rather than a file or folder."""
    key = item.split("=", 1)[0]
    return "=" in item and key.replace(".", "_").isidentifier() and not Path(item).exists()


def settings_from_args(model: type, args: argparse.Namespace, overrides: Sequence[str] = (), **extra: Any) -> Any:
    """``model`` from the options that are its fields, then ``key=value`` overrides (YAML values, as for
    ``pretrain``): a bad or unknown key is a ProfileError naming it."""
    from dinocell_core.config import ConfigError, apply_overrides
    from dinocell_core.profiling.table import ProfileError

    data = {k: v for k, v in vars(args).items() if k in model.model_fields}
    try:
        data = apply_overrides({**data, **extra}, list(overrides))
    except ConfigError as exc:
        raise ProfileError(str(exc)) from None
    return model(**data)


def _settings(args: argparse.Namespace, overrides: Sequence[str] = ()) -> Any:
    return settings_from_args(EvalSettings, args, overrides, progress=not getattr(args, "quiet", False))


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
    ev.add_argument("overrides", nargs="*", help="key=value overrides of the benchmark settings, e.g. null_size=2000")
    ev.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    _eval_options(ev)
    ev.set_defaults(handler=_evaluate)

    em = sub.add_parser("embed", help="images → well profiles with a backbone or the hand-crafted baseline",
                        description="Embed every field of a CPJUMP1 tree (folder, s3:// prefix or load_data CSV) "
                                    "in Kim et al.'s tiles or in per-cell crops from a labels store, aggregate "
                                    "unit → site → well and annotate with the CPJUMP1 metadata files. Resumable: "
                                    "run the same command again after a kill. OUTPUT.fields.csv lists every "
                                    "field's unit count and status (fields without labels are skipped and listed); "
                                    "OUTPUT.json records the settings and the read-out.")
    em.add_argument("root", help="CPJUMP1 folder, s3:// prefix or load_data CSV (as for `jump index`)")
    em.add_argument("overrides", nargs="*",
                    help="key=value overrides of any embedding setting, e.g. otsu_factor=0.5 norm_percentiles=[1,99]")
    em.add_argument("-o", "--output", type=Path, required=True, help="profile table (.csv, .csv.gz, .parquet)")
    S = EmbedSettings
    _option(em, S, "backbone", help="baseline | random | cellprofiler (CellProfiler's per-cell features of --labels, "
                                    "median per well) | official .pth | pretraining run dir | checkpoint | export")
    _option(em, S, "features", choices=FEATURE_SETS,
            help="--backbone cellprofiler: full (cp-measure: shape, Zernike, Feret, intensity, texture, granularity, "
                 "radial distribution, correlation; the `measure` extra) or minimal (17 per object)")
    _option(em, S, "arch", help="architecture for random init or an official .pth")
    _option(em, S, "patch_size", type=int)
    _option(em, S, "model_kwargs", help='JSON of extra backbone arguments, e.g. \'{"depth": 2}\'')
    _option(em, S, "seed", type=int, help="seed of a random-init backbone")
    _option(em, S, "channels",
            help="fluorescent_mean | each (ch1–5 embedded separately, concatenated) | channel:N (default: each for "
                 "a ViT backbone, fluorescent_mean for the baseline)")
    _option(em, S, "tokens", choices=TOKENS)
    _option(em, S, "units", choices=UNITS,
            help="tiles: Kim et al.'s 224-px tiles; cells: one crop per object of --labels")
    _option(em, S, "labels", help="labels store (labels.csv + masks, from `jump label`) for --units cells and "
                                  "--backbone cellprofiler")
    _option(em, S, "crop", type=int,
            help="cells: crop size in px at native scale (DeepProfiler's CPJUMP1 box: 96 ≈ 57 µm at 20×)")
    _option(em, S, "centre", choices=CENTRES, help="cells: centre each crop on the nucleus or the cell centroid")
    _option(em, S, "border", choices=BORDERS,
            help="cells: a crop leaving the field is zero-padded (cell centred), shifted inside the field, or "
                 "skipped")
    _option(em, S, "tile", type=int, help="tile size in px (Kim et al.: 224)")
    _option(em, S, "min_dna_fraction", type=float)
    _option(em, S, "site_aggregation", choices=AGGREGATIONS)
    _option(em, S, "well_aggregation", choices=AGGREGATIONS)
    _option(em, S, "illumination", action="store_true", help="divide by the plates' illumination functions")
    em.add_argument("--metadata", type=Path, default=None,
                    help="folder with platemaps/…/barcode_platemap.csv and the perturbation .tsv files "
                         "(default: ROOT's workspace/metadata)")
    em.add_argument("--no-metadata", action="store_true", help="write plate/well only, no annotations")
    em.add_argument("--plates", nargs="+", default=None, help="only these plate barcodes")
    _option(em, S, "batch_size", type=int)
    _option(em, S, "device")
    _option(em, S, "precision", choices=PRECISIONS,
            help="auto: bf16 autocast on a CUDA GPU (TF32 for the rest), fp32 on a CPU; bf16 on a CPU is slower")
    _option(em, S, "chunk_sites", type=int, help="sites per resumable chunk")
    em.add_argument("--endpoint-url", default=None, help="S3 endpoint (mirror or test server)")
    em.add_argument("--quiet", action="store_true")
    add_shard_options(em, "OUTPUT.parts", "OUTPUT", split="chunks of --chunk-sites sites split by a hash of their name; "
                      "--backbone cellprofiler: wells", extra=". Under torchrun each rank runs its own shard (of I/N "
                      "when given) on its own GPU")
    em.set_defaults(handler=_embed)

    cp = sub.add_parser("compare", help="fraction retrieved and mean mAP per task for several backbones",
                        description="INPUTS are `profile evaluate` output folders or profile tables (evaluated "
                                    "here with the options below; key=value items among them override benchmark "
                                    "settings, e.g. null_size=2000). Writes comparison.csv and comparison.png.")
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

    settings = _settings(args, args.overrides)
    ev = evaluate_profiles(read_profiles(args.profiles), settings, source=str(args.profiles))
    write_evaluation(ev, args.output)
    _print_summary(ev.summary())
    print(f"wrote {args.output}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from dinocell_core.io.shards import Shard, torchrun_shard, unfinished
    from dinocell_core.jump.index import load_index
    from dinocell_core.profiling.embed import embed_profiles, find_metadata_dir
    from dinocell_core.profiling.table import ProfileError, info_path

    try:
        kwargs = json.loads(args.model_kwargs) if isinstance(args.model_kwargs, str) else args.model_kwargs
    except ValueError as exc:
        raise ProfileError(f"--model-kwargs is not JSON ({exc})") from None
    s = settings_from_args(EmbedSettings, args, args.overrides, model_kwargs=kwargs)
    shard = Shard.parse(args.shard) if args.shard else None
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # torchrun: one shard per rank, each on its own GPU
        if args.merge:
            raise ProfileError("--merge runs in one process: start it without torchrun")
        shard = torchrun_shard(shard)
        if s.device in ("auto", "cuda") and s.backbone != CELLPROFILER:
            import torch

            if torch.cuda.is_available():
                s = s.model_copy(update={"device": f"cuda:{os.environ.get('LOCAL_RANK', '0')}"})
    storage = None
    if args.root.startswith("s3://") or args.endpoint_url:
        from dinocell_core.io.storage import S3Storage

        storage = S3Storage(endpoint_url=args.endpoint_url)
    remote = "://" in args.root
    # an s3:// tree is listed first: an unreachable endpoint is the error to report, not the metadata lookup
    fields = load_index(args.root, storage=storage) if remote else None
    metadata = None
    if not args.no_metadata:
        metadata = args.metadata or find_metadata_dir(args.root)
        if metadata is None and remote:
            raise ProfileError(f"{args.root}: the CPJUMP1 metadata is not read from S3; download the source's "
                               "workspace/metadata folder and pass --metadata DIR, or pass --no-metadata")
        if metadata is None:
            raise ProfileError(f"no CPJUMP1 metadata (barcode_platemap.csv) under {args.root}/workspace/metadata; "
                               "pass --metadata DIR or --no-metadata")
    if fields is None:
        fields = load_index(args.root, storage=storage)
    if args.plates:
        fields = [f for f in fields if f.plate in set(args.plates)]
    wells = embed_profiles(args.root, fields, args.output, s, metadata=metadata, storage=storage,
                           progress=not args.quiet, shard=shard, merge=args.merge)
    if shard is not None:
        waiting = [] if wells is not None else [str(m) for m in unfinished(args.output, shard.count)]
        print(shard_line(shard, wells is not None, waiting, str(args.output)))
    if wells is None:  # a shard that left the merge to the last one
        return 0
    n_feat = sum(not str(c).startswith("Metadata_") for c in wells.columns)
    info = json.loads(info_path(args.output).read_text())
    unit = f", {info['n_units']} cells" if s.units == "cells" or "n_features" in info else ""
    per_field = f"; per field: {args.output}.fields.csv" if Path(f"{args.output}.fields.csv").is_file() else ""
    print(f"wrote {args.output}: {len(wells)} wells × {n_feat} features from {info['n_fields']} fields{unit}"
          f"{per_field}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from dinocell_core.profiling.compare import compare

    inputs = [i for i in args.inputs if not _is_override(i)]
    settings = _settings(args, [i for i in args.inputs if _is_override(i)])
    if not inputs:
        from dinocell_core.profiling.table import ProfileError

        raise ProfileError("no INPUTS: give `profile evaluate` output folders or profile tables")
    table = compare(inputs, args.output, labels=args.labels, settings=settings)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {args.output}/comparison.csv and comparison.png")
    return 0
