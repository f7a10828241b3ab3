"""The npe2 manifest is valid and every contribution's python_name imports (what napari does on startup)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import REPO


def test_npe2_validate_with_imports():
    npe2 = Path(sys.executable).with_name("npe2")
    proc = subprocess.run([str(npe2), "validate", "--imports", "dinocell"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Manifest for 'DINOCell' valid" in proc.stdout


def test_every_widget_is_a_contribution():
    manifest = yaml.safe_load((REPO / "src" / "napari_dinocell" / "napari.yaml")
                              .read_text())
    widgets = {w["display_name"] for w in manifest["contributions"]["widgets"]}
    assert widgets == {"Pretrain", "Train decoder", "Runs", "JUMP browser", "Segment", "Backbone features", "Profiles"}
