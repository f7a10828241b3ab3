"""Data commands: ``fixture jump``, ``jump index``, ``jump preview``, ``jump prepare`` (``jump label``: labels)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    fx = subparsers.add_parser("fixture", help="write synthetic test data")
    fx_sub = fx.add_subparsers(dest="fixture_kind", metavar="KIND", required=True)
    fj = fx_sub.add_parser("jump", help="synthetic CPJUMP1 plates in the exact bucket layout",
                           description="Synthetic CPJUMP1 plates (8 channels, uint16 LZW, load_data CSVs, "
                                       "illumination .npy, ground-truth masks, two phenotypes per plate).")
    fj.add_argument("out", type=Path, help="output folder (cpg0000-jump-pilot/source_4/... is written inside)")
    fj.add_argument("--plates", type=int, default=2)
    fj.add_argument("--wells", type=int, default=4)
    fj.add_argument("--sites", type=int, default=2)
    fj.add_argument("--size", type=int, default=1080, help="field size in pixels (CPJUMP1: 1080)")
    fj.add_argument("--seed", type=int, default=0)
    fj.add_argument("--no-edge-cases", action="store_true", help="do not leave one field incomplete")
    fj.set_defaults(handler=_fixture_jump)

    jp = subparsers.add_parser("jump", help="JUMP Cell Painting data: index, preview, prepare")
    j_sub = jp.add_subparsers(dest="jump_command", metavar="ACTION", required=True)
    ji = j_sub.add_parser("index", help="index the fields of a CPJUMP1 tree (cached)",
                          description="Find every complete field under ROOT (local folder or s3:// prefix, any "
                                      "depth) or in load_data CSVs; write the contract CSV (plate, well, site, "
                                      "ch1..ch8, batch, plate_folder, sk). The index is cached (ROOT/.dinocell/"
                                      "index.csv or ~/.cache/dinocell) and reused until --refresh.")
    ji.add_argument("root", help="CPJUMP1 folder, s3:// prefix, or a load_data CSV")
    ji.add_argument("-o", "--output", type=Path, default=None, help="also write the index CSV here")
    ji.add_argument("--refresh", action="store_true", help="rescan even when a cached index exists")
    ji.add_argument("--cache", type=Path, default=None, help="index cache file (default: see above)")
    ji.add_argument("--load-data", nargs="+", default=[], metavar="CSV",
                    help="index from these load_data CSVs (URL_ or PathName_/FileName_ columns, .csv/.csv.gz); "
                         "s3://cellpainting-gallery/ locations are rewritten to ROOT")
    ji.add_argument("--endpoint-url", default=None, help="S3 endpoint (mirror or test server)")
    ji.set_defaults(handler=_jump_index)

    pv = j_sub.add_parser("preview", help="write a few SSL batches (crops + iBOT masks) as a PNG grid")
    pv.add_argument("source", help="a pretraining/data YAML config, or a data root (folder, s3://, CSV)")
    pv.add_argument("overrides", nargs="*", help="key=value overrides of the data section (e.g. global_size=128)")
    pv.add_argument("-o", "--output", type=Path, required=True)
    pv.add_argument("--batches", type=int, default=2)
    pv.add_argument("--batch-size", type=int, default=4)
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--patch-size", type=int, default=None, help="default: model.patch_size of the config, or 8")
    pv.set_defaults(handler=_jump_preview)

    pr = j_sub.add_parser("prepare", help="store each field's preprocessed views for fast loading",
                          description="One-off pass that stores each field's normalised views (uint16 .npy, "
                                      "memory-mappable) so training reads one small file per field instead of "
                                      "decoding 5–8 LZW TIFFs. Point data.prepared at OUT.")
    pr.add_argument("source", help="a pretraining/data YAML config, or a data root")
    pr.add_argument("overrides", nargs="*", help="key=value overrides of the data section")
    pr.add_argument("-o", "--output", type=Path, required=True)
    pr.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    pr.set_defaults(handler=_jump_prepare)

    from dinocell_core.commands.labels import add_jump_label

    add_jump_label(j_sub)


def _fixture_jump(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dinocell_core.synthetic.fixture import make_jump_fixture

    with tqdm(total=args.plates * args.wells * args.sites, unit="field", desc="fixture") as bar:
        info = make_jump_fixture(args.out, plates=args.plates, wells=args.wells, sites=args.sites,
                                 size=args.size, seed=args.seed, edge_cases=not args.no_edge_cases,
                                 progress=lambda: bar.update(1))
    print(f"wrote {info.n_fields} complete fields of {info.size}×{info.size} in {len(info.plate_folders)} plate "
          f"folders under {info.source_root}")
    for item in info.incomplete:
        print(f"  incomplete on purpose: {item}")
    return 0


def _jump_index(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from dinocell_core.jump.index import (
        build_index,
        default_cache_path,
        read_index_csv,
        write_index_cache,
        write_index_csv,
    )

    storage = None
    if args.root.startswith("s3://") or args.endpoint_url:
        from dinocell_core.io.storage import S3Storage

        storage = S3Storage(endpoint_url=args.endpoint_url)
    cache = args.cache or default_cache_path(args.root, storage.endpoint_url if storage is not None else None)
    if cache.is_file() and not args.refresh and not args.load_data:
        fields = read_index_csv(cache)
        report = json.loads(cache.with_suffix(".json").read_text()) if cache.with_suffix(".json").is_file() else {}
        print(f"{len(fields)} complete fields (cached index {cache}; --refresh to rescan)")
        if report.get("incomplete"):
            print(f"{report['incomplete']} incomplete fields left out, e.g.:")
            for ex in report.get("incomplete_examples", [])[:5]:
                print(f"  {ex}")
    else:
        with tqdm(unit="file", desc="scanning") as bar:
            result = build_index(args.root, load_data=args.load_data, storage=storage, progress=bar.update)
        fields = result.fields
        if not fields:  # an empty listing is never cached: the next run looks again
            raise ValueError(f"no complete CPJUMP1 fields found under {args.root}"
                             + (f" at endpoint {storage.endpoint_url}" if storage and storage.endpoint_url else ""))
        write_index_cache(result, args.root, cache)
        print(f"{len(fields)} complete fields from {result.n_files} files in {result.seconds:.2f} s "
              f"(cached in {cache})")
        if result.n_incomplete:
            print(f"{result.n_incomplete} incomplete fields left out, e.g.:")
            for ex in result.incomplete_examples[:5]:
                print(f"  {ex}")
        for folder in result.unreadable[:5]:
            print(f"unreadable folder skipped: {folder}")
    if not fields:
        raise ValueError(f"no complete CPJUMP1 fields found under {args.root}")
    if args.output is not None:
        write_index_csv(fields, args.output)
        print(f"index written to {args.output}")
    return 0


def load_data_section(source: str, overrides: list[str]) -> tuple[Any, int | None]:
    """DataConfig from a YAML (its ``data:`` section, or the whole file) or from a data root + overrides."""
    from dinocell_core.config import apply_overrides, read_yaml, validate_config
    from dinocell_core.ssl.config import DataConfig

    if source.endswith((".yaml", ".yml")) and os.path.isfile(source):
        raw = read_yaml(source)
        full = "data" in raw
        ovr = [o if (not full or o.startswith(("data.", "model."))) else f"data.{o}" for o in overrides]
        raw = apply_overrides(raw, ovr)
        section = raw.get("data", {}) if full else raw
        patch = raw.get("model", {}).get("patch_size") if full and isinstance(raw.get("model"), dict) else None
        return validate_config(DataConfig, section, f"{source} (data section)" if full else source), patch
    ovr = [o[len("data."):] if o.startswith("data.") else o for o in overrides]
    data = apply_overrides({"root": source}, ovr)
    return validate_config(DataConfig, data, "command line"), None


def _jump_preview(args: argparse.Namespace) -> int:
    from dinocell_core.ssl.data import TooManyFailures, make_ssl_loader
    from dinocell_core.ssl.preview import render_preview, write_png

    cfg, patch = load_data_section(args.source, args.overrides)
    patch_size = args.patch_size or patch or 8
    loader = make_ssl_loader(cfg, patch_size, args.batch_size, args.seed, num_workers=0, steps=args.batches)
    try:
        batches = list(loader)
    except TooManyFailures as exc:
        raise ValueError(str(exc)) from None
    rgb = render_preview(batches, max_rows=args.batches * args.batch_size)
    write_png(str(args.output), rgb)
    failed = sum(b["n_failed"] for b in batches)
    print(f"wrote {args.output} ({rgb.shape[1]}×{rgb.shape[0]} px, {args.batches} batches of {args.batch_size}"
          f", mode {cfg.channel_mode}" + (f", {failed} bad files skipped" if failed else "") + ")")
    return 0


def _jump_prepare(args: argparse.Namespace) -> int:
    import json
    import sys

    from dinocell_core.ssl.prepare import prepare_fields
    from dinocell_core.ssl.prepared_store import MANIFEST

    cfg, _patch = load_data_section(args.source, args.overrides)
    summary = prepare_fields(cfg, args.output, workers=args.workers)
    print(summary)
    manifest = json.loads((Path(args.output) / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("n_failed"):  # a partial store is not a success: scripts and Slurm must see it
        print(f"dinocell-core: error: {manifest['n_failed']} field(s) could not be prepared (listed in "
              f"{Path(args.output) / MANIFEST}); fix or exclude them and run again (prepared fields are kept)",
              file=sys.stderr)
        return 1
    return 0
