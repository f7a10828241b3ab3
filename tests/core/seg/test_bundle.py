"""Model bundles: round trip, registry listing/filtering, tampered and pickled files refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinocell_core.io.checkpoint import save_tensors
from dinocell_core.seg.bundle import (
    BundleError,
    list_bundles,
    load_bundle,
    read_bundle_metadata,
    save_bundle,
)
from dinocell_core.seg.distance import labels_from_distance
from tests.helpers.bundles import meta, tiny_model
from tests.helpers.shapes import big_touching_disks, blurred_map


def test_round_trip_gives_the_same_network(tmp_path) -> None:
    model = tiny_model()
    path = save_bundle(tmp_path / "m.safetensors", model, meta(model))
    bundle = load_bundle(path)
    assert bundle.name == "m" and bundle.channel == "DNA" and bundle.thresholds["peak"] == 0.47
    assert bundle.metadata["validation_metrics"]["ap@0.50"] == 0.9
    rebuilt = bundle.build_model("cpu")
    x = torch.rand(1, 1, 40, 48)
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt(x).numpy(), model(x).numpy(), atol=1e-6)


def test_thresholds_round_trip_slope_and_old_bundles_take_the_default(tmp_path) -> None:
    from dinocell_core.seg.config import GROWTH_SLOPE
    from dinocell_core.seg.inference import Segmenter

    model = tiny_model()
    tuned = {**meta(model), "thresholds": {"peak": 0.47, "fill": 0.09, "grow": 0.01, "ring": 0.75, "slope": 0.65,
                                           "min_size": 0}}
    path = save_bundle(tmp_path / "tuned.safetensors", model, tuned)
    assert load_bundle(path).thresholds["slope"] == 0.65
    assert read_bundle_metadata(path)["thresholds"]["slope"] == 0.65
    d = blurred_map(big_touching_disks(), 2.0, 0.1, 0)  # a map where the slope changes the labels
    assert np.array_equal(Segmenter(path, device="cpu").labels(d),
                          labels_from_distance(d, ring_fraction=0.75, growth_slope=0.65))
    assert np.array_equal(Segmenter(path, device="cpu").labels(d, slope=0.9),
                          labels_from_distance(d, ring_fraction=0.75, growth_slope=0.9))
    old = save_bundle(tmp_path / "old.safetensors", model, meta(model))  # thresholds written before "slope"
    assert "slope" not in load_bundle(old).thresholds
    assert np.array_equal(Segmenter(old, device="cpu").labels(d), labels_from_distance(d, growth_slope=GROWTH_SLOPE))
    assert not np.array_equal(labels_from_distance(d, growth_slope=0.65), labels_from_distance(d))
    for bad in (1.5, -0.1, "0.8", True):
        wrong = {**tuned, "thresholds": {**tuned["thresholds"], "slope": bad}}
        p = save_bundle(tmp_path / "bad.safetensors", model, wrong)
        with pytest.raises(BundleError, match=r"thresholds\.slope must be a number in \[0, 1\]"):
            load_bundle(p)


def test_tampered_bundle_is_refused(tmp_path) -> None:
    model = tiny_model()
    path = save_bundle(tmp_path / "m.safetensors", model, meta(model))
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one weight byte
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="digest"):
        load_bundle(path)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(BundleError, match=r"truncated \(3\d+ of 7\d+ bytes"):
        load_bundle(path)


def test_pickled_files_are_refused(tmp_path) -> None:
    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(BundleError, match="pickled"):
        load_bundle(tmp_path / "model.pt")
    (tmp_path / "renamed.safetensors").write_bytes((tmp_path / "model.pt").read_bytes())
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(tmp_path / "renamed.safetensors")


def test_foreign_safetensors_and_incomplete_metadata_refused(tmp_path) -> None:
    save_tensors(tmp_path / "backbone.safetensors", {"w": torch.zeros(2)}, {"kind": "backbone-export"})
    with pytest.raises(BundleError, match="not a DINOCell model bundle"):
        load_bundle(tmp_path / "backbone.safetensors")
    model = tiny_model()
    bad = meta(model)
    del bad["thresholds"]
    with pytest.raises(BundleError, match="thresholds"):
        save_bundle(tmp_path / "x.safetensors", model, bad)


def test_registry_lists_and_filters_by_channel(tmp_path) -> None:
    model = tiny_model()
    save_bundle(tmp_path / "dna.safetensors", model, meta(model, "DNA", "nuclei"))
    save_bundle(tmp_path / "mito.safetensors", model, meta(model, "Mito", "mito"))
    save_bundle(tmp_path / "phase.safetensors", model, meta(model, "phase", "livecell"))
    (tmp_path / "notes.safetensors").write_bytes(b"garbage")
    save_tensors(tmp_path / "export.safetensors", {"w": torch.zeros(1)}, {"kind": "backbone"})
    names = [b.name for b in list_bundles(tmp_path)]
    assert names == ["livecell", "mito", "nuclei"]
    for query in ("DNA", "dna", 5, "ch5", "OrigDNA"):
        assert [b.name for b in list_bundles(tmp_path, channel=query)] == ["nuclei"]
    assert [b.name for b in list_bundles(tmp_path, channel="Phase")] == ["livecell"]
    assert read_bundle_metadata(tmp_path / "dna.safetensors")["tile_size"] == 64
    with pytest.raises(FileNotFoundError):
        list_bundles(tmp_path / "missing")
