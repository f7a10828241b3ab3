"""The README's demo command end to end, shortened: real `dinocell-core demo` subprocess on fresh synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys

import tifffile

from dinocell_core.runs.rundir import RunDir
from dinocell_core.seg.bundle import list_bundles


def test_demo_runs_the_whole_pipeline(tmp_path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "demo", str(out), "--pretrain-epochs", "1",
                           "--decoder-steps", "40"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("fixture jump", "jump index", "jump preview", "pretrain", "export-backbone", "train-decoder",
                 "segment", "evaluate"):
        assert f"$ dinocell-core {step}" in proc.stdout
    assert RunDir(out / "runs" / "pretrain-demo").read_status()["state"] == "finished"
    assert (out / "backbone" / "demo_vit8.pth").is_file() and (out / "ssl_preview.png").stat().st_size > 1000
    bundles = list_bundles(out / "runs" / "decoder-demo" / "models")
    assert [b.channel for b in bundles] == ["DNA"]
    assert bundles[0].metadata["backbone"]["source"].endswith("demo_vit8.safetensors")
    labels = tifffile.imread(next((out / "segmented").glob("*_labels.tiff")))
    assert labels.max() >= 1
    metrics = json.loads((out / "scores.json").read_text())["metrics"]
    assert 0.0 <= metrics["ap@0.95"] <= metrics["ap@0.50"] <= 1.0
    assert f"held-out AP@0.5    {metrics['ap@0.50']:.3f}" in proc.stdout
