"""Files from other people: edited checkpoints and bundles are refused naming the file; crafted bundles cannot make
timm open a file or allocate a huge model; truncated bundles are marked in ``models list``."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dinocell_core.backbones.archs import (
    ARCH_SPECS,
    ArchitectureError,
    backbone_params,
    check_memory,
)
from dinocell_core.cli import main
from dinocell_core.io.checkpoint import (
    CheckpointError,
    load_state,
    save_state,
    save_tensors,
)
from dinocell_core.io.tiffio import write_tiff
from dinocell_core.seg.bundle import BundleError, load_bundle, save_bundle, unique_state
from dinocell_core.seg.inference import Segmenter
from tests.helpers.bundles import meta, tiny_model


def _edit(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 1, old
    path.write_bytes(data.replace(old, new))


def test_one_byte_in_bundle_metadata_is_refused_naming_the_file(tmp_path, capsys):
    model = tiny_model()
    path = save_bundle(tmp_path / "m.safetensors", model, meta(model))
    _edit(path, b'"peak\\": 0.47', b'"peak\\": 0.97')
    with pytest.raises(BundleError, match=f"{path}: metadata does not match its recorded digest"):
        load_bundle(path)
    img = tmp_path / "img.tiff"
    write_tiff(img, np.random.default_rng(0).integers(0, 4000, (64, 64)).astype(np.uint16))
    assert main(["segment", str(path), str(img), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "digest" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_one_byte_in_a_checkpoint_skeleton_is_refused(tmp_path):
    path = tmp_path / "step_00000030.safetensors"
    save_state(path, {"step": 30, "w": torch.arange(4.0)})
    assert load_state(path)["step"] == 30
    _edit(path, b'\\"step\\", 30]', b'\\"step\\", 38]')
    with pytest.raises(CheckpointError, match=f"{path}: metadata does not match"):
        load_state(path)


class _Payload:
    """Unpickling this writes a marker file: proof that a file was torch.load-ed (unpickled)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _crafted(tmp_path: Path, name: str, **changes) -> Path:
    """A bundle whose metadata an attacker rewrote — with a valid digest, since anyone can recompute one."""
    model = tiny_model()
    m = {**meta(model), "format": "dinocell-bundle/1", "aliases": unique_state(model.state_dict())[1]}
    for dotted, value in changes.items():
        node = m
        *parents, leaf = dotted.split("__")
        for k in parents:
            node = node[k]
        node[leaf] = value
    path = tmp_path / f"{name}.safetensors"
    save_tensors(path, unique_state(model.state_dict())[0], m)
    return path


def test_bundle_kwargs_cannot_make_timm_open_a_file(tmp_path):
    marker = tmp_path / "marker.txt"
    secret = tmp_path / "secret.pth"
    secret.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    for key, value in (("checkpoint_path", str(secret)), ("pretrained_cfg_overlay", {"file": str(secret)}),
                       ("embed_dim", 100_000)):
        path = _crafted(tmp_path, key, backbone__kwargs={key: value})
        with pytest.raises(BundleError, match=f"{path}: backbone.kwargs.{key} is not an accepted"):
            Segmenter(path, device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    ({"backbone__arch": "vit_giant2"}, "unknown backbone arch 'vit_giant2'"),
    ({"backbone__patch_size": 1}, "patch_size 1 is not supported"),
    ({"backbone__kwargs": {"depth": 100_000}}, r"depth must be an integer in \[1, 4\]"),
    ({"decoder__width": 10**7}, r"decoder.width must be an integer in \[1, 1024\]"),
    ({"decoder__layers": [0, 99]}, r"decoder.layers must list"),
    ({"thresholds__peak": 2.0}, r"thresholds.peak must be a number in \(0, 1\)"),
    ({"tile_size": 0}, r"tile_size must be an integer in \[16, 4096\]"),
])
def test_crafted_architecture_fields_are_refused_before_building(tmp_path, change, message):
    path = _crafted(tmp_path, "c", **change)
    with pytest.raises(BundleError, match=message):
        load_bundle(path).build_model("cpu")


def test_memory_is_checked_before_allocation():
    n = backbone_params(ARCH_SPECS["vit_large"], 8)
    assert 290e6 < n < 320e6  # ViT-L/8 has ~304 M parameters
    check_memory(n, "big.safetensors", available=10 * n * 8)
    with pytest.raises(ArchitectureError, match=r"big.safetensors: this model needs about 2.4 GB .* 1.0 GB"):
        check_memory(n, "big.safetensors", available=10**9)


def test_models_list_marks_truncated_bundles(tmp_path, capsys):
    model = tiny_model()
    good = save_bundle(tmp_path / "good.safetensors", model, meta(model, name="good"))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-1000])  # an interrupted copy
    assert main(["models", "list", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "good" in out
    cut_line = next(line for line in out.splitlines() if "cut.safetensors" in line)
    assert "UNUSABLE" in cut_line and "truncated" in cut_line
    assert main(["models", "list", str(tmp_path), "--json"]) == 0
    listed = {Path(b["path"]).name: b for b in json.loads(capsys.readouterr().out)}
    assert listed["good.safetensors"]["problem"] is None and "truncated" in listed["cut.safetensors"]["problem"]
    with pytest.raises(BundleError, match="cut.safetensors"):
        load_bundle(cut)


def test_run_files_are_readable_as_the_umask_allows(tmp_path):
    from dinocell_core.io.fsutil import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
