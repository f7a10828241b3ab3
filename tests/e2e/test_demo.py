"""The README's demo command end to end, shortened, from a built wheel installed into a fresh folder.

Running from the wheel (not the source tree) is what proves the recipes ship inside the package: after a plain
``pip install .`` the demo and the napari forms must find them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

from dinocell_core.runs.rundir import RunDir
from dinocell_core.seg.bundle import list_bundles

pytestmark = pytest.mark.slow  # trains a model
from tests.helpers import REPO


def install_wheel(tmp_path: Path) -> dict[str, str]:
    """Build the project's wheel and install it (no dependencies) into its own folder; the env to run it."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("dinocell-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return {**os.environ, "PYTHONPATH": str(target)}


def test_demo_runs_the_whole_pipeline_from_the_installed_wheel(tmp_path) -> None:
    env = install_wheel(tmp_path)
    where = subprocess.run([sys.executable, "-c", "import dinocell_core.config as c; print(c.RECIPES)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "site"), where
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "demo", str(out), "--pretrain-epochs", "1",
                           "--decoder-steps", "40"], capture_output=True, text=True, timeout=900, env=env,
                          cwd=tmp_path)
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
