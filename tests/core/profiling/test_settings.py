"""The profiling settings models: strict keys, one home per default (shared with the pretraining ``eval:`` section),
the per-channel read-out as every ViT's default, recorded beside the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinocell_core.config import ConfigError, load_config
from dinocell_core.jump.channels import FMEAN
from dinocell_core.profiling.normalize import NORMALIZATIONS
from dinocell_core.profiling.settings import (
    BENCHMARK_NULL_SIZE,
    EACH,
    QUICK_NULL_SIZE,
    TEACHER,
    EmbedSettings,
    EvalSettings,
    ReadoutSettings,
    ScoreSettings,
    default_channels,
)
from dinocell_core.profiling.table import ProfileError, readout_text, table_readout
from dinocell_core.ssl.config import EvalSection, PretrainConfig


@pytest.mark.parametrize("model", [EmbedSettings, EvalSettings, ReadoutSettings, ScoreSettings])
def test_an_unknown_key_is_an_error_naming_it(model):
    with pytest.raises(ProfileError, match=r"unknown setting 'tyle' \(settings: .*"):
        model(tyle=32)
    with pytest.raises(ProfileError, match="unknown setting 'tyle'"):
        model.model_validate({"tyle": 32})


def test_assignment_is_validated_too():
    s = EmbedSettings()
    with pytest.raises(ProfileError, match="tile: Input should be greater than or equal to 8"):
        s.tile = 4


def test_the_eval_section_names_an_unknown_key_as_a_config_error():
    with pytest.raises(ConfigError, match=r"eval\.tyle: unknown key"):
        load_config(PretrainConfig, None, ["eval.tyle=32"])
    with pytest.raises(ConfigError, match=r"eval\.normalize: .*unknown normalisation 'z'"):
        load_config(PretrainConfig, None, ["eval.normalize=z"])
    with pytest.raises(ConfigError, match="unknown setting 'tyle'"):
        EvalSection(tyle=32)


def test_bad_values_keep_their_messages():
    for kwargs, says in [({"tokens": "x"}, "tokens must be one of"), ({"units": "nuclei"}, "units must be one of"),
                         ({"units": "cells"}, "needs a labels store"), ({"channels": "bogus"}, "channels: unknown"),
                         ({"well_aggregation": "max"}, "well_aggregation must be one of"),
                         ({"tile": "abc"}, "tile: Input should be a valid integer")]:
        with pytest.raises(ProfileError, match=says):
            EmbedSettings(**kwargs)
    for kwargs, says in [({"normalize": "z"}, "unknown normalisation 'z'; use one of negcon_mad"),
                         ({"null_size": 0}, r"null_size must lie in \[1, "),
                         ({"threshold": 1.5}, r"threshold must lie in \(0, 1\)")]:
        with pytest.raises(ProfileError, match=says):
            EvalSettings(**kwargs)


def test_the_eval_section_is_built_from_the_profiling_models():
    """One home per default: the section's read-out and scoring keys are profile embed's and profile evaluate's
    fields; only the null differs, by a named default."""
    assert issubclass(EvalSection, ReadoutSettings) and issubclass(EvalSection, ScoreSettings)
    section, embed, score = EvalSection(), EmbedSettings(backbone=TEACHER), EvalSettings()
    for name in ReadoutSettings.model_fields:
        assert EvalSection.model_fields[name].default == EmbedSettings.model_fields[name].default, name
        assert getattr(section, name) == getattr(embed, name), name
    assert section.normalize == score.normalize == "negcon_mad" and NORMALIZATIONS[0] == "negcon_mad"
    assert section.null_size == QUICK_NULL_SIZE < score.null_size == BENCHMARK_NULL_SIZE == 100_000
    assert section.channels == EACH  # the teacher is a ViT
    assert PretrainConfig().eval == section


def test_every_vit_backbone_defaults_to_each_and_the_baseline_to_the_mean():
    assert EmbedSettings().channels == FMEAN == default_channels("baseline")
    for backbone in ("random", "runs/pretrain-demo", "dinov3_vits16.pth", "step_00000004.safetensors", TEACHER):
        s = EmbedSettings(backbone=backbone)
        assert s.channels == EACH == default_channels(backbone)
        assert [v for v, _ in s.views()] == ["Mito", "AGP", "RNA", "ER", "DNA"]
    assert EmbedSettings(backbone="random", channels=FMEAN).views() == [("fmean", (1, 2, 3, 4, 5))]
    assert EmbedSettings(channels=EACH).channels == EACH  # the baseline per stain, when asked


def test_table_readout_of_older_or_foreign_tables(tmp_path: Path):
    table = tmp_path / "p.csv"
    assert table_readout(table) is None and readout_text(table).startswith("not recorded (no p.csv.json")
    (tmp_path / "p.csv.json").write_text(json.dumps({"settings": {"channels": FMEAN, "tokens": "cls"}}))
    assert table_readout(table) == {"channels": FMEAN, "tokens": "cls"}
    assert readout_text(table) == "fluorescent_mean · cls"


def test_cli_vit_default_is_each_recorded_beside_the_table(tmp_path: Path, capsys):
    """``profile embed`` with a random ViT and no --channels: five views, and OUT.json says so; ``key=value``
    overrides reach settings that have no option, and an unknown one is a one-line error naming it."""
    pytest.importorskip("torch")
    from dinocell_core.cli import main
    from dinocell_core.synthetic.fixture import make_jump_fixture

    root = make_jump_fixture(tmp_path / "fx", plates=1, wells=2, sites=1, size=64, seed=3, edge_cases=False).root
    out = tmp_path / "vit.csv"
    base = ["--backbone", "random", "--arch", "vit_test", "--model-kwargs", '{"depth": 1}', "--no-metadata",
            "--quiet", "--device", "cpu"]
    assert main(["profile", "embed", str(root), "tile=32", "otsu_factor=0.5", "-o", str(out), *base]) == 0
    info = json.loads((tmp_path / "vit.csv.json").read_text())
    assert info["readout"] == {"channels": EACH, "views": ["Mito", "AGP", "RNA", "ER", "DNA"], "tokens": "cls"}
    assert info["settings"]["channels"] == EACH and info["settings"]["tile"] == 32
    assert info["settings"]["otsu_factor"] == 0.5
    header = out.read_text().splitlines()[0].split(",")
    feats = [c for c in header if not c.startswith("Metadata_")]
    assert feats[0] == "Mito_cls_0000" and feats[-1].startswith("DNA_cls_") and len(feats) % 5 == 0
    assert readout_text(out) == "each (Mito, AGP, RNA, ER, DNA) · cls"
    capsys.readouterr()
    assert main(["profile", "embed", str(root), "tyle=32", "-o", str(tmp_path / "x.csv"), *base]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown setting 'tyle'" in err[0]
    assert main(["profile", "evaluate", str(out), "nul_size=5", "-o", str(tmp_path / "ev")]) == 1
    assert "unknown setting 'nul_size'" in capsys.readouterr().err
