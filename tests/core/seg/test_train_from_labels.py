"""Every channel's decoder trained from labels: a brightfield model trained only on `jump label`'s transferred
labels segments held-out fixture fields (scored against their true masks) better than an untrained model and a
hand-crafted threshold baseline; `models report` scores it against a labels store, auto and corrected apart."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from dinocell_core.cli import main
from dinocell_core.config import load_config
from dinocell_core.labels.store import GROUND_TRUTH_DIR, LabelStore
from dinocell_core.seg.bundle import load_bundle
from dinocell_core.seg.config import DecoderConfig, SegDataConfig
from dinocell_core.seg.data import load_samples
from dinocell_core.seg.evaluate import evaluate_bundle
from dinocell_core.seg.metrics import evaluate_pairs
from dinocell_core.seg.train import run_decoder_training
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers import REPO

pytestmark = pytest.mark.slow  # trains a model

DEMO = REPO / "configs" / "decoder_demo.yaml"
FIXTURE_PARAMS = ["--param", "min_diameter=5", "--param", "nuclei_bounds=0.008,1"]  # as tests/test_jump_label.py


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("bf")
    train = make_jump_fixture(base / "train", plates=2, wells=4, sites=2, size=192, seed=0).root
    held = make_jump_fixture(base / "held", plates=1, wells=4, sites=2, size=192, seed=11, edge_cases=False).root
    auto = base / "AUTO"
    assert main(["jump", "label", str(train), "-o", str(auto), "--workers", "1", "--qc-fields", "0",
                 *FIXTURE_PARAMS]) == 0
    return train, held, auto


def threshold_baseline(image01: np.ndarray) -> np.ndarray:
    """Hand-crafted brightfield segmentation: smooth, Otsu (cells are darker than the background), components."""
    smooth = ndi.gaussian_filter(image01, 2.0)
    mask = smooth < threshold_otsu(smooth)
    return ndi.label(ndi.binary_opening(mask, iterations=2))[0].astype(np.int32)


def test_brightfield_decoder_from_transferred_labels_segments_held_out_fields(trees, tmp_path, capsys) -> None:
    train, held, auto = trees
    models = tmp_path / "models"
    cfg = load_config(DecoderConfig, DEMO, [f"data.path={train}", f"data.labels={auto}", "channels=[Brightfield]",
                                            "augment.invert_p=0.0", f"models_dir={models}"])
    (path,) = run_decoder_training(cfg, tmp_path / "run")
    meta = load_bundle(path).metadata
    assert meta["training_data"]["labels"] == str(auto) and len(meta["training_data"]["fields"]) == 11
    truth = SegDataConfig(format="jump", path=str(held), channel="Brightfield")  # the held tree's true masks
    trained = evaluate_bundle(path, truth, device="cpu")["metrics"]
    untrained_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 1, "eval_every": 1}),
                                           "models_dir": str(tmp_path / "untrained")})
    (p0,) = run_decoder_training(untrained_cfg, tmp_path / "run0")
    untrained = evaluate_bundle(p0, truth, device="cpu")["metrics"]
    samples = load_samples(truth)
    baseline = evaluate_pairs([(s.labels, threshold_baseline(s.image)) for s in samples], [0.5]).as_dict()
    with capsys.disabled():
        print(f"\nbrightfield AP@0.5 on {trained['n_images']} held-out fields ({trained['n_gt']} true cells): "
              f"trained on transferred labels {trained['ap@0.50']:.3f}, untrained {untrained['ap@0.50']:.3f}, "
              f"Otsu threshold baseline {baseline['ap@0.50']:.3f}")
    assert trained["n_images"] == 8 and trained["n_gt"] > 100
    assert trained["ap@0.50"] > max(untrained["ap@0.50"], baseline["ap@0.50"]) + 0.1
    assert trained["ap@0.50"] >= 0.5

    # the report card: against the held tree's automatic labels, and one corrected (here: true) field
    held_auto = tmp_path / "HELD"
    assert main(["jump", "label", str(held), "-o", str(held_auto), "--workers", "1", "--qc-fields", "0",
                 *FIXTURE_PARAMS]) == 0
    store, gt = LabelStore.open(held_auto), LabelStore.open(Path(held) / "cpg0000-jump-pilot/source_4" /
                                                            GROUND_TRUTH_DIR)
    from dinocell_core.jump.index import index_fields

    f = index_fields(held).fields[0]
    row = gt.best((f.plate_folder, f.well, f.site))
    store.write_field(f, *gt.read_pair(row), "corrected")
    capsys.readouterr()
    assert main(["models", "report", str(models), str(held_auto), "--device", "cpu", "-o", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "rep" / "report.csv", newline="") as fh:
        rows = {r["source"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"auto", "corrected"} and rows["auto"]["fields"] == "8" and rows["corrected"]["fields"] == "1"
    assert rows["auto"]["held_out"] == "yes" and float(rows["auto"]["ap50"]) > 0.3
    with capsys.disabled():
        print(printed)
    assert "demo-Brightfield" in printed and (tmp_path / "rep" / "report.png").stat().st_size > 1000
    assert json.loads((tmp_path / "rep" / "report.json").read_text())[0]["model"] == "demo-Brightfield"
