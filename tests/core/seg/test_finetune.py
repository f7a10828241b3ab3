"""Correct → retrain → compare on the fixture: a cell model trained on deliberately wrong labels (neighbouring cells
merged) is fine-tuned on fields a person corrected (the true masks saved as ``source=corrected``) with the CLI
contract ``train-decoder CONFIG data.labels=STORE data.label_sources=[corrected] model.init_bundle=MODEL``; on the
held-out corrected fields its AP beats the starting model's, and RUN/finetune.json and the bundle say so alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from dinocell_core.cli import main
from dinocell_core.config import load_config
from dinocell_core.jump.index import index_fields
from dinocell_core.labels.store import GROUND_TRUTH_DIR, LabelStore, field_key
from dinocell_core.seg.bundle import list_bundles, load_bundle
from dinocell_core.seg.config import DecoderConfig
from dinocell_core.seg.data import SegDataError
from dinocell_core.seg.finetune import FINETUNE_JSON, FinetuneError, finetune_config
from dinocell_core.seg.train import run_decoder_training
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers import REPO

pytestmark = pytest.mark.slow  # trains two models

DEMO = REPO / "configs" / "decoder_demo.yaml"
SHORT = ["channels=[RNA]", "train.steps=30", "train.batch_size=4", "train.eval_every=15", "train.checkpoint_every=30",
         "inference.tune_thresholds=false"]


def merged(cells: np.ndarray) -> np.ndarray:
    """Wrong cell labels on purpose: every cell grown by 3 px and touching cells merged into one object."""
    return ndi.label(ndi.binary_dilation(cells > 0, iterations=3))[0].astype(np.int32)


def test_finetuning_on_corrections_beats_the_model_it_started_from(tmp_path, capsys) -> None:
    root = make_jump_fixture(tmp_path / "fx", plates=1, wells=4, sites=2, size=96, seed=0,
                             edge_cases=False).root
    truth = LabelStore.open(Path(root) / "cpg0000-jump-pilot" / "source_4" / GROUND_TRUTH_DIR)
    store = LabelStore.open_or_create(tmp_path / "LABELS", {"method": "test", "source_root": str(root)})
    fields = index_fields(root).fields
    for f in fields:
        nuclei, cells = truth.read_pair(truth.best(field_key(f)))
        store.write_field(f, nuclei, merged(cells), "auto")
    models = tmp_path / "models"
    bad_cfg = load_config(DecoderConfig, DEMO, [f"data.path={root}", f"data.labels={store.root}",
                                                f"models_dir={models}", *SHORT])
    (bad,) = run_decoder_training(bad_cfg, tmp_path / "run-bad")

    ft = [str(DEMO), f"data.path={root}", f"data.labels={store.root}", "data.label_sources=[corrected]",
          f"model.init_bundle={bad}", f"models_dir={models}", "val_fraction=0.34", *SHORT]
    with pytest.raises(SegDataError, match=r"has no corrected labels for any of the 8 fields"):
        run_decoder_training(load_config(DecoderConfig, ft[0], ft[1:]), tmp_path / "run-none")

    with pytest.raises(FinetuneError, match="has 0 corrected field"):
        finetune_config(bad, root, store.root)
    for f in fields[:6]:  # a person corrects six fields: the true masks, saved as corrections
        store.write_field(f, *truth.read_pair(truth.best(field_key(f))), "corrected")
    run = tmp_path / "run-ft"
    assert main(["train-decoder", *ft, "--run-dir", str(run)]) == 0
    scores = json.loads((run / FINETUNE_JSON).read_text())
    new = load_bundle(scores["bundle"])
    assert new.name == "demo-RNA-finetuned" and new.metadata["init_bundle"] == str(bad)
    assert new.metadata["finetune"]["after"] == scores["after"] and len(scores["held_out"]) == 2
    assert {n.rsplit("/ch", 1)[0] for n in scores["held_out"]} <= {f.key for f in fields[:6]}
    assert not set(scores["held_out"]) & set(new.metadata["training_data"]["fields"])
    assert [b.name for b in list_bundles(models, channel="RNA")] == ["demo-RNA", "demo-RNA-finetuned"]
    # napari's fine-tune button builds the same run from the bundle alone, named beside the first fine-tuned one
    again = finetune_config(bad, root, store.root, steps=5)
    assert again.model.init_bundle == str(bad.resolve()) and again.data.channel == "RNA"
    assert again.data.label_sources == ["corrected"] and again.name == "demo-v2"
    assert Path(str(again.models_dir)) == models.resolve() and again.train.tile_size == 64
    b, t, a = scores["before"], scores["before_tuned"], scores["after"]
    with capsys.disabled():
        print(f"\nheld-out corrected fields {len(scores['held_out'])}: AP@0.5 {b['ap@0.50']:.3f} → {a['ap@0.50']:.3f}, "
              f"AP@0.75 {b['ap@0.75']:.3f} → {a['ap@0.75']:.3f} (before, thresholds re-tuned on them: "
              f"AP@0.5 {t['ap@0.50']:.3f}, AP@0.75 {t['ap@0.75']:.3f})")
    assert a["ap@0.50"] > b["ap@0.50"] + 0.1 and a["ap@0.50"] > t["ap@0.50"]
