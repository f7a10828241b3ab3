"""Multichannel models: one decoder reading DNA + RNA learns cells on the fixture; the bundle records its channels;
`segment` takes a field's channel files, `segment-plate` feeds it its channels, and `models report` scores it beside
a single-channel model. Old single-channel bundles keep loading."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from dinocell_core.backbones.archs import ArchitectureError
from dinocell_core.backbones.loading import load_backbone
from dinocell_core.cli import main
from dinocell_core.config import ConfigError, load_config
from dinocell_core.jump.index import index_fields
from dinocell_core.labels.store import GROUND_TRUTH_DIR
from dinocell_core.seg.bundle import list_bundles, load_bundle, save_bundle
from dinocell_core.seg.config import DecoderConfig
from dinocell_core.seg.decoder import DistanceDecoder
from dinocell_core.seg.plate import PlateRun
from dinocell_core.seg.train import run_decoder_training
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers import REPO
from tests.helpers.bundles import meta, tiny_model

DEMO = REPO / "configs" / "decoder_demo.yaml"


def test_channels_beyond_the_backbone_planes_are_refused() -> None:
    with pytest.raises(ConfigError, match="data.channels lists 6 channels"):
        load_config(DecoderConfig, DEMO, ["data.channels=[DNA, RNA, AGP, Mito, ER, Brightfield]", "channels=null",
                                          "data.channel=null"])
    with pytest.raises(ConfigError, match="not both"):
        load_config(DecoderConfig, DEMO, ["data.channels=[DNA, RNA]", "channels=null"])
    torch.manual_seed(0)
    with pytest.raises(ArchitectureError, match=r"reads 4 channels \(data.channels\) but the backbone takes 3 input planes"):
        DistanceDecoder(load_backbone("vit_test", patch_size=8), width=32, stem_width=8, in_channels=4)
    stack = DistanceDecoder(load_backbone("vit_test", patch_size=8, in_chans=5), width=32, stem_width=8,
                            in_channels=3).eval()
    with torch.no_grad():
        assert stack(torch.rand(2, 3, 64, 64)).shape == (2, 1, 64, 64)


def test_single_channel_bundles_without_channels_keep_loading(tmp_path) -> None:
    model = tiny_model()
    old = meta(model, "RNA", "old")
    assert "channels" not in old and "in_chans" not in old["backbone"]
    path = save_bundle(tmp_path / "old.safetensors", model, old)
    bundle = load_bundle(path)
    assert bundle.channels == ["RNA"] and bundle.build_model().in_channels == 1
    assert [b.name for b in list_bundles(tmp_path, channel="RNA")] == ["old"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A DNA+RNA → cells model and an RNA → cells model, 30 steps each, on a small fixture."""
    base = tmp_path_factory.mktemp("mc")
    root = make_jump_fixture(base / "fx", plates=1, wells=4, sites=2, size=96, seed=0,
                             edge_cases=False).root
    models = base / "models"
    cfg = load_config(DecoderConfig, DEMO, [f"data.path={root}", "channels=[RNA, [DNA, RNA]]", "train.steps=30",
                                            "train.batch_size=4", "train.eval_every=30", "train.checkpoint_every=30",
                                            "inference.tune_thresholds=false",
                                            f"models_dir={models}"])
    run_decoder_training(cfg, base / "run")
    return root, models, base


@pytest.mark.slow
def test_dna_rna_model_trains_segments_and_is_reported(trained, tmp_path, capsys) -> None:
    root, models, _ = trained
    mc = load_bundle(models / "demo-DNA+RNA.safetensors")
    assert mc.channels == ["DNA", "RNA"] and mc.metadata["channel"] == "DNA+RNA"
    assert mc.build_model().in_channels == 2 and mc.metadata["validation_metrics"]["ap@0.50"] > 0.2
    # listed under every channel it reads, and only there
    assert "demo-DNA+RNA" in [b.name for b in list_bundles(models, channel="DNA")]
    assert [b.name for b in list_bundles(models, channel="RNA")] == ["demo-DNA+RNA", "demo-RNA"]
    assert list_bundles(models, channel="Mito") == []

    # segment: any channel file of a field; the field is segmented once, from its DNA and RNA files
    f = index_fields(root).fields[0]
    rna, dna = Path(f.path(root, 3)), Path(f.path(root, 5))
    assert main(["segment", str(mc.path), str(rna), str(dna), "-o", str(tmp_path / "seg"), "--device", "cpu"]) == 0
    assert [p.name for p in (tmp_path / "seg").iterdir()] == [f"{dna.name[:-5]}_labels.tiff"]
    plain = tmp_path / "plain.tiff"
    plain.write_bytes(dna.read_bytes())
    assert main(["segment", str(mc.path), str(plain), "-o", str(tmp_path / "seg2"), "--device", "cpu"]) == 1
    assert "give CPJUMP1 field files" in capsys.readouterr().err

    # segment-plate: the cells model fed its two channels
    run = PlateRun(models, root, tmp_path / "plate", device="cpu", cells_channel="DNA+RNA")
    assert run.models["Cells"].name == "demo-DNA+RNA" and run.model_inputs["Cells"] == [5, 3]
    res = run.run(max_fields=1)
    assert res.done == 1 and not res.failed and run.objects() > 0

    # models report: the multichannel row beside the single-channel one, against the fixture's true cells
    store = Path(root) / "cpg0000-jump-pilot" / "source_4" / GROUND_TRUTH_DIR
    capsys.readouterr()
    assert main(["models", "report", str(models), str(store), "--root", str(root), "--device", "cpu",
                 "-o", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "rep" / "report.csv", newline="") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"demo-DNA+RNA", "demo-RNA"} and rows["demo-DNA+RNA"]["channel"] == "DNA+RNA"
    assert all(r["held_out"] == "yes" and int(r["fields"]) >= 1 for r in rows.values())
    with capsys.disabled():
        print("\nmodels report on the fixture's held-out fields (true labels):\n" + printed)
    assert float(rows["demo-DNA+RNA"]["ap50"]) > 0.2
