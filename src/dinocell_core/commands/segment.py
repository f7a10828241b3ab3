"""Segmentation commands: ``train-decoder``, ``segment``, ``evaluate``, ``models list`` (``models report``: labels)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from dinocell_core.seg.inference import Segmenter


def register(subparsers: argparse._SubParsersAction) -> None:
    td = subparsers.add_parser("train-decoder", help="train distance-map decoders (one bundle per channel)",
                               description="Train a SAMCell-style distance-map decoder on a pretrained backbone. "
                                           "Writes a run directory (config, metrics.jsonl with validation AP, "
                                           "status.json, checkpoints) and resumes from its last checkpoint; the "
                                           "best model of each channel is exported as a bundle.")
    td.add_argument("config", type=Path, help="decoder YAML config (see configs/decoder_*.yaml)")
    td.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 channels=[DNA]")
    td.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/decoder-<name>)")
    td.add_argument("--allow-config-change", action="store_true",
                    help="resume although the config differs from the checkpoint's (recorded in the run's "
                         "config_history.jsonl)")
    td.set_defaults(handler=_train)

    sg = subparsers.add_parser("segment", help="segment images with a model bundle",
                               description="Segment images of any size (tiled, blended, bounded memory); writes "
                                           "<name>_labels.tiff (and <name>_distance.tiff with --save-distance).")
    sg.add_argument("model", type=Path, help="model bundle (.safetensors)")
    sg.add_argument("inputs", nargs="+", type=Path,
                    help="image files (TIFF, PNG, ...); for a multichannel model (e.g. DNA+RNA) CPJUMP1 field files "
                         "(any channel of each field: the files of the channels it reads are found beside them)")
    sg.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    sg.add_argument("--channel", type=int, default=None, help="channel index of multichannel images")
    sg.add_argument("--tile-size", type=_positive_int, default=None, help="default: the bundle's")
    sg.add_argument("--overlap", type=_non_negative_int, default=None, help="default: the bundle's")
    add_inference_options(sg)
    sg.add_argument("--peak", type=_unit_open, default=None, help="peak threshold in (0, 1) (default: the bundle's)")
    sg.add_argument("--fill", type=_unit_half_open, default=None,
                    help="fill threshold in [0, 1) (default: the bundle's)")
    sg.add_argument("--grow", type=_unit_half_open, default=None,
                    help="cells grow back to their border inside map > grow, in [0, 1) (default: the bundle's)")
    sg.add_argument("--ring", type=_unit_left_open, default=None,
                    help="growth stops below this fraction of a cell's ring value, in (0, 1] (default: the bundle's)")
    sg.add_argument("--slope", type=_unit_closed, default=None,
                    help="growth goes on only while the map falls at ≥ this fraction of a cell's slope 1/R per px, "
                         "in [0, 1] (lower grows further into a blurred map; default: the bundle's)")
    sg.add_argument("--min-size", type=_non_negative_int, default=None,
                    help="drop objects smaller than this (pixels; default: the bundle's)")
    sg.add_argument("--save-distance", action="store_true", help="also write the float32 distance map")
    sg.add_argument("--overwrite", action="store_true",
                    help="replace existing output files that `segment` did not write (by default they are refused)")
    sg.set_defaults(handler=_segment)

    ev = subparsers.add_parser("evaluate", help="score a model bundle on an annotated dataset",
                               description="AP@0.50…0.95, F1, CTC SEG/DET/OP_CSB pooled over the images of "
                                           "DATASET (Cellpose *_img/*_masks folder, images/+masks/, LIVECell COCO "
                                           "JSON, or a JUMP fixture) and COCO mask AP; thresholds are the "
                                           "bundle's. Prints a table and writes JSON.")
    ev.add_argument("model", type=Path)
    ev.add_argument("dataset", type=Path)
    ev.add_argument("-o", "--output", type=Path, default=None, help="JSON file (default: <model>.eval.json)")
    ev.add_argument("--channel", default=None, help="JUMP channel name, or channel index of multichannel images")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--tile-size", type=_positive_int, default=None)
    ev.add_argument("--batch-size", type=_positive_int, default=8)
    ev.add_argument("--max-images", type=_positive_int, default=None)
    ev.add_argument("--images", type=Path, default=None,
                    help="image folder of a COCO/LIVECell JSON (default: next to it, or images/livecell_*_images/ "
                         "of the official layout)")
    ev.add_argument("--peak", type=_unit_open, default=None, help="default: the bundle's (tuned on validation)")
    ev.add_argument("--fill", type=_unit_half_open, default=None, help="default: the bundle's")
    ev.add_argument("--grow", type=_unit_half_open, default=None, help="default: the bundle's")
    ev.add_argument("--ring", type=_unit_left_open, default=None, help="default: the bundle's")
    ev.add_argument("--slope", type=_unit_closed, default=None, help="default: the bundle's")
    ev.add_argument("--min-size", type=_non_negative_int, default=None, help="default: the bundle's")
    ev.set_defaults(handler=_evaluate)

    md = subparsers.add_parser("models", help="the model registry (a folder of bundles)")
    md_sub = md.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ml = md_sub.add_parser("list", help="list the bundles in a folder",
                           description="Every bundle in FOLDER with its channel, backbone and validation AP; each "
                                       "file is read in full and checked (digest, tensors, settings) so a damaged "
                                       "one is listed UNUSABLE with the reason.")
    ml.add_argument("folder", type=Path)
    ml.add_argument("--channel", default=None, help="only models for this channel (e.g. DNA, 5, brightfield)")
    ml.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ml.set_defaults(handler=_models_list)

    from dinocell_core.commands.labels import add_models_report

    add_models_report(md_sub)


def add_inference_options(p: argparse.ArgumentParser) -> None:
    """``--batch-size``, ``--device`` and ``--precision`` of the commands that run a segmentation model."""
    from dinocell_core.config import PRECISIONS

    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="tiles per network call (default: 4 on a CPU, 32 of 256² on a GPU with the memory; lower on "
                        "OOM)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast on a CUDA GPU (TF32 for the rest), fp32 on a CPU; bf16 on a CPU is slower")


def _number(text: str, kind: type, ok: object, what: str) -> object:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not ok(value):  # type: ignore[operator]
        raise argparse.ArgumentTypeError(f"{text} is not {what}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "an integer ≥ 1")  # type: ignore[return-value]


def _non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer ≥ 0")  # type: ignore[return-value]


def _unit_open(text: str) -> float:
    return _number(text, float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")  # type: ignore[return-value]


def _unit_half_open(text: str) -> float:
    return _number(text, float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")  # type: ignore[return-value]


def _unit_left_open(text: str) -> float:
    return _number(text, float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")  # type: ignore[return-value]


def _unit_closed(text: str) -> float:
    return _number(text, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")  # type: ignore[return-value]


def output_stems(inputs: list[Path], output: Path) -> dict[Path, Path]:
    """Input → output path stem (``OUT/<relative folder>/<name>``), unique per input.

    Inputs from several folders keep their folder below the deepest common one (CPJUMP1 repeats the same file name
    on every plate); two inputs that would still share an output (``a.tif`` and ``a.png``) are refused before any
    work, naming both."""
    from dinocell_core.errors import DinocellError

    resolved = [p.resolve() for p in inputs]
    common = Path(os.path.commonpath([r.parent for r in resolved])) if resolved else Path()
    stems: dict[Path, Path] = {}
    owner: dict[Path, Path] = {}
    for given, r in zip(inputs, resolved):
        stem = output / r.parent.relative_to(common) / _image_stem(r.name)
        if stem in owner:
            same = owner[stem] == given or owner[stem].resolve() == r
            raise DinocellError(f"{given} is given twice" if same else
                                f"{owner[stem]} and {given} would both write {stem}_labels.tiff; rename one or "
                                "segment them into different output folders")
        owner[stem] = given
        stems[given] = stem
    return stems


#: the TIFF Software tag of the files ``segment`` writes: an existing output without it is someone else's file
SEGMENT_SOFTWARE = "dinocell-core segment"


def check_outputs(inputs: list[Path], stems: dict[Path, Path], save_distance: bool, overwrite: bool) -> None:
    """Refuse, before any work, outputs that would replace an input or a file ``segment`` did not write (an
    unrelated ``gt_labels.tiff`` beside ``gt.tiff`` was silently overwritten); ``overwrite`` allows the latter."""
    from dinocell_core.errors import DinocellError

    suffixes = ("_labels.tiff", "_distance.tiff") if save_distance else ("_labels.tiff",)
    targets = [stem.parent / f"{stem.name}{suffix}" for stem in stems.values() for suffix in suffixes]
    given = {p.resolve() for p in inputs}
    for target in targets:
        if target.resolve() in given:
            raise DinocellError(f"{target} is one of the inputs and would be overwritten by another input's labels; "
                                "segment into another output folder")
    foreign = [t for t in targets if t.exists() and not overwrite and not _written_by_segment(t)]
    if foreign:
        raise DinocellError(f"{foreign[0]} exists and was not written by `dinocell-core segment` ({len(foreign)} such "
                            "file(s)); nothing was written — move them, choose another -o, or pass --overwrite")


def _written_by_segment(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.pages) and tif.pages[0].software == SEGMENT_SOFTWARE
    except Exception:  # noqa: BLE001 - not a readable TIFF: certainly not ours
        return False


def _image_stem(name: str) -> str:
    """The name without its image extension (``x.ome.tiff`` → ``x``; ``a.v2.tif`` → ``a.v2``)."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") else stem


def _train(args: argparse.Namespace) -> int:
    from dinocell_core.config import load_config
    from dinocell_core.runs.logs import setup_logging
    from dinocell_core.runs.rundir import RunDir
    from dinocell_core.seg.config import DecoderConfig
    from dinocell_core.seg.train import run_decoder_training

    cfg = load_config(DecoderConfig, args.config, args.overrides)
    run_dir = args.run_dir or Path("runs") / f"decoder-{cfg.name}"
    run = RunDir(run_dir)
    run.create()
    with run.lock():  # before run.log is opened: a refused second trainer writes nothing into the run
        setup_logging(run.log_path)
        paths = run_decoder_training(cfg, run_dir, allow_config_change=args.allow_config_change)
    state = run.read_status().get("state")
    for p in paths:
        print(p)
    if state == "stopped":
        print(f"stopped; resume with the same command (run dir {run_dir})", file=sys.stderr)
        return 143
    return 0


def _segment(args: argparse.Namespace) -> int:
    """Network passes run here; post-processing and writing of image N run in a thread during the pass of N+1
    (the watershed runs alongside torch compute without slowing it), so on a GPU they stop adding to the time."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from dinocell_core.io.images import read_image
    from dinocell_core.seg.inference import Segmenter

    from dinocell_core.seg.bundle import read_bundle_metadata
    from dinocell_core.seg.config import bundle_channels

    channels = bundle_channels(read_bundle_metadata(args.model))
    fields = field_files(list(args.inputs), channels, args.model) if len(channels) > 1 else None
    inputs = list(fields) if fields is not None else list(args.inputs)
    stems = output_stems(inputs, args.output)  # collisions refused before the model is even loaded
    check_outputs(inputs if fields is None else [q for fs in fields.values() for q in fs], stems, args.save_distance,
                  args.overwrite)
    seg = Segmenter(args.model, device=args.device, tile_size=args.tile_size, overlap=args.overlap,
                    batch_size=args.batch_size, channel=args.channel, precision=args.precision)
    args.output.mkdir(parents=True, exist_ok=True)
    pending: tuple[Path, Future] | None = None
    failed: list[Path] = []

    def settle() -> None:
        """Wait for the field in flight; its failure is that image's, not the batch's."""
        if pending is None:
            return
        path, fut = pending
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - any per-image failure is reported and counted, never fatal
            print(f"{path}: skipped: {_one_line(exc)}", file=sys.stderr)
            failed.append(path)

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="postprocess") as post:
            for path in inputs:
                try:  # one failed or unusable image does not stop a batch
                    image = read_image(path) if fields is None else [read_image(q) for q in fields[path]]
                    dist = _distance(seg, image, str(path))
                except Exception as exc:  # noqa: BLE001 - reported per image, counted in the exit code
                    print(f"{path}: skipped: {_one_line(exc)}", file=sys.stderr)
                    failed.append(path)
                    continue
                settle()  # one field in flight at most
                pending = (path, post.submit(_finish_field, seg, args, path, dist, stems[path]))
            settle()
    finally:
        seg.release()
    if failed:
        print(f"{len(failed)} of {len(inputs)} inputs could not be segmented (see above)", file=sys.stderr)
        return 1
    return 0


def field_files(inputs: list[Path], channels: list[str], model: Path) -> dict[Path, list[Path]]:
    """CPJUMP1 field files → {the field's file of the model's first channel: its files of every channel the model
    reads, in the model's order}; each field once however many of its files are given. Refused before any work:
    a file that is not a CPJUMP1 image name, or a field whose file of a channel the model reads is missing."""
    from dinocell_core.errors import DinocellError
    from dinocell_core.jump.channels import channel_number
    from dinocell_core.jump.index import parse_file_name

    out: dict[Path, list[Path]] = {}
    for p in inputs:
        parts = parse_file_name(p.name)
        if parts is None:
            raise DinocellError(f"{p}: model {model.name} reads {'+'.join(channels)}; give CPJUMP1 field files "
                                "(rNNcNNfNNpNN-chN...tiff), whose other channels' files are found beside them")
        files = [p.with_name(f"r{parts.row:02d}c{parts.col:02d}f{parts.site:02d}p{parts.plane:02d}-"
                             f"ch{channel_number(c)}sk{parts.sk}fk{parts.fk}fl{parts.fl}.tiff") for c in channels]
        for c, q in zip(channels, files):
            if not q.is_file():
                raise DinocellError(f"{p}: its field has no {c} file {q.name} in {q.parent} (model {model.name} "
                                    f"reads {'+'.join(channels)})")
        out.setdefault(files[0], files)
    return out


def _one_line(exc: BaseException) -> str:
    from dinocell_core.errors import DinocellError

    text = " ".join(str(exc).split())
    return text if isinstance(exc, DinocellError) else f"{type(exc).__name__}: {text}"


def _distance(seg: Segmenter, image: np.ndarray | list[np.ndarray], name: str) -> np.ndarray:
    """The network pass over all tiles of one image, with a progress bar."""
    import numpy as np
    from tqdm import tqdm

    dist = None
    prepared = seg.preprocess(image, name=name)
    with tqdm(desc=Path(name).name, unit="tile", leave=False) as bar:
        for item in seg.iter_prepared(prepared):
            if isinstance(item, np.ndarray):
                dist = item
            else:
                bar.total = item[1]
                bar.update(item[0] - bar.n)
    assert dist is not None
    return dist


def _finish_field(seg: Segmenter, args: argparse.Namespace, path: Path, dist: np.ndarray, stem: Path) -> None:
    """Labels from the distance map, then the TIFFs (atomically) at ``stem`` (see :func:`output_stems`)."""
    import tifffile

    from dinocell_core.io.fsutil import atomic_path
    from dinocell_core.seg.distance import compact_labels

    labels = seg.labels(dist, peak_threshold=args.peak, fill_threshold=args.fill, min_size=args.min_size,
                        grow_threshold=args.grow, ring=args.ring, slope=args.slope)
    out = compact_labels(labels)
    labels_path = stem.parent / f"{stem.name}_labels.tiff"
    with atomic_path(labels_path) as tmp:
        tifffile.imwrite(tmp, out, compression="zlib", software=SEGMENT_SOFTWARE)
    if args.save_distance:
        with atomic_path(stem.parent / f"{stem.name}_distance.tiff") as tmp:
            tifffile.imwrite(tmp, dist, compression="zlib", software=SEGMENT_SOFTWARE)
    print(f"{path}: {int(labels.max())} cells → {labels_path}")


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dinocell_core.io.fsutil import atomic_write_json
    from dinocell_core.seg.evaluate import evaluate_bundle, format_table

    with tqdm(desc="evaluate", unit="image", leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = evaluate_bundle(args.model, args.dataset, device=args.device, tile_size=args.tile_size,
                                 batch_size=args.batch_size, channel=args.channel, max_images=args.max_images,
                                 progress=progress, images_dir=args.images, peak=args.peak, fill=args.fill,
                                 grow=args.grow, ring=args.ring, slope=args.slope, min_size=args.min_size)
    out = args.output or args.model.with_suffix(".eval.json")
    atomic_write_json(out, result)
    print(format_table(result))
    print(f"written {out}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from dinocell_core.seg.bundle import BundleError, list_bundles, load_bundle

    infos = list_bundles(args.folder, channel=args.channel, include_broken=True)
    for b in infos:  # the header alone cannot see a flipped byte in the weights: read and check each file
        if b.problem is None:
            try:
                load_bundle(b.path)
            except BundleError as exc:
                b.problem = str(exc)
    if args.json:
        print(json.dumps([{"name": b.name, "channel": b.channel, "path": str(b.path), "metadata": b.metadata,
                           "problem": b.problem} for b in infos], indent=1, default=str))
        return 0
    if not infos:
        print(f"no model bundles in {args.folder}" + (f" for channel {args.channel}" if args.channel else ""))
        return 0
    print(f"{'name':<28} {'channel':<12} {'backbone':<16} {'tile':>5} {'val AP@0.5':>10}  path")
    for b in infos:
        if b.problem is not None:
            print(f"{b.name:<28} UNUSABLE: {b.problem}")
            continue
        m = b.metadata
        bb = f"{m['backbone']['arch']}/{m['backbone']['patch_size']}"
        ap = (m.get("validation_metrics") or {}).get("ap@0.50")
        ap_s = f"{ap:.3f}" if isinstance(ap, (int, float)) else "-"
        print(f"{b.name:<28} {b.channel:<12} {bb:<16} {m['tile_size']:>5} {ap_s:>10}  {b.path}")
    return 0
