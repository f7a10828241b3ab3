"""``dinocell-core demo``: the whole pipeline on built-in synthetic data, on CPU, in a few minutes.

Every step is the real CLI command a user would type (printed as it runs), so the demo doubles as a tour:
fixture → index → SSL batch preview → pretrain → export backbone → train decoder on that backbone →
segment a field → evaluate on held-out fixture fields.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

from dinocell_core.config import RECIPES


def register(subparsers: argparse._SubParsersAction) -> None:
    dm = subparsers.add_parser(
        "demo", help="run the whole pipeline on synthetic CPJUMP1 data (CPU, a few minutes)",
        description="Synthetic CPJUMP1 fixture → index → SSL preview → DINOv3 pretraining (tiny ViT/8) → backbone "
                    "export → distance-map decoder on that backbone → segmentation of a field → evaluation on "
                    "held-out fields. Each step is the CLI command it prints.")
    dm.add_argument("outdir", type=Path, nargs="?", default=Path("demo_output"), help="output folder")
    dm.add_argument("--configs", type=Path, default=RECIPES,
                    help="folder with pretrain_demo.yaml and decoder_demo.yaml (default: the packaged recipes)")
    dm.add_argument("--size", type=int, default=192, help="fixture field size in pixels")
    dm.add_argument("--pretrain-epochs", type=int, default=None, help="default: the demo config's")
    dm.add_argument("--decoder-steps", type=int, default=None, help="default: the demo config's")
    dm.set_defaults(handler=_demo)


def _step(title: str, argv: list[str]) -> None:
    from dinocell_core.commands import main

    print(f"\n== {title}\n$ dinocell-core {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    if code != 0:
        print(f"dinocell-core demo: step '{title}' failed (exit {code}); its message is above", file=sys.stderr)
        raise SystemExit(code)
    print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def _demo(args: argparse.Namespace) -> int:
    from dinocell_core.config import read_yaml
    from dinocell_core.runs.rundir import read_metrics

    out: Path = args.outdir
    pretrain_cfg = args.configs / "pretrain_demo.yaml"
    decoder_cfg = args.configs / "decoder_demo.yaml"
    for cfg in (pretrain_cfg, decoder_cfg):
        if not cfg.is_file():
            raise FileNotFoundError(f"demo config {cfg} not found; pass --configs pointing at a folder of recipes")
    out.mkdir(parents=True, exist_ok=True)
    fixture, heldout = out / "fixture", out / "heldout"
    pre_run, dec_run = out / "runs" / "pretrain-demo", out / "runs" / "decoder-demo"
    backbone = out / "backbone" / "demo_vit8"
    t0 = time.perf_counter()

    _step("synthetic CPJUMP1 plates (8 channels, uint16 LZW, masks)",
          ["fixture", "jump", str(fixture), "--size", str(args.size)])
    _step("held-out plate for scoring (another seed)",
          ["fixture", "jump", str(heldout), "--size", str(args.size), "--plates", "1", "--wells", "2",
           "--seed", "7", "--no-edge-cases"])
    _step("index the fields (cached)", ["jump", "index", str(fixture), "-o", str(out / "index.csv")])
    _step("preview SSL batches (2 global + local crops, iBOT masks)",
          ["jump", "preview", str(pretrain_cfg), f"data.root={fixture}", "-o", str(out / "ssl_preview.png")])
    epochs = [f"train.epochs={args.pretrain_epochs}"] if args.pretrain_epochs else []
    _step("DINOv3 pretraining (DINO + iBOT + KoLeo, EMA teacher)",
          ["pretrain", str(pretrain_cfg), f"data.root={fixture}", *epochs, "--run-dir", str(pre_run)])
    _step("export the teacher backbone (official DINOv3 layout + safetensors)",
          ["export-backbone", str(pre_run), "-o", str(backbone)])
    steps = [f"train.steps={args.decoder_steps}"] if args.decoder_steps else []
    _step("distance-map decoder on the pretrained backbone (DNA channel)",
          ["train-decoder", str(decoder_cfg), f"data.path={fixture}",
           f"backbone.weights={backbone.with_suffix('.safetensors')}", *steps, "--run-dir", str(dec_run)])
    model = _only_bundle(dec_run / "models")
    field = sorted(heldout.rglob("*-ch5sk*.tiff"))[0]
    _step("segment a held-out DNA field", ["segment", str(model), str(field), "-o", str(out / "segmented"),
                                           "--save-distance"])
    scores = out / "scores.json"
    _step("score on the held-out plate", ["evaluate", str(model), str(heldout), "--channel", "DNA",
                                          "-o", str(scores)])

    m = json.loads(scores.read_text())["metrics"]
    recs = [r for r in read_metrics(pre_run / "metrics.jsonl") if "loss_total" in r]
    losses = [r["loss_total"] for r in recs]
    ln_k = math.log(int(read_yaml(pre_run / "config.yaml")["heads"]["out_dim"]))
    print(f"\nDemo finished in {time.perf_counter() - t0:.0f} s. Outputs in {out}:")
    print(f"  SSL preview        {out / 'ssl_preview.png'}")
    print(f"  pretraining run    {pre_run}  (loss {losses[0]:.2f} → {losses[-1]:.2f}; metrics.jsonl, checkpoints/)")
    for key in ("loss_dino", "loss_ibot", "teacher_entropy", "teacher_batch_entropy", "teacher_view_agreement"):
        print(f"    {key:<22} {recs[0][key]:.3f} → {recs[-1][key]:.3f}")
    print(f"    (ln heads.out_dim = {ln_k:.3f}: DINO loss and teacher entropy at that value carry no signal; "
          "teacher_batch_entropy well above teacher_entropy means no collapse; teacher_view_agreement: share of "
          "fields whose two views get the same top prototype)")
    print(f"  backbone export    {backbone.with_suffix('.safetensors')}")
    print(f"  model bundle       {model}")
    print(f"  labels             {out / 'segmented'}")
    print(f"  held-out AP@0.5    {m['ap@0.50']:.3f}, AP@0.9 {m['ap@0.90']:.3f}, AP@0.95 {m['ap@0.95']:.3f}, "
          f"mean AP {m['ap_mean']:.3f}, SEG {m['seg']:.3f}, COCO mask AP {m['coco_ap']:.3f}  ({scores})")
    print("With the plugin installed (pip install -e '.[napari]'): `napari` → Plugins → DINOCell → Runs, Segment.")
    return 0


def _only_bundle(models_dir: Path) -> Path:
    from dinocell_core.seg.bundle import list_bundles

    bundles = list_bundles(models_dir)
    if len(bundles) != 1:
        raise RuntimeError(f"expected one model bundle in {models_dir}, found {[b.path.name for b in bundles]}")
    return bundles[0].path
