from pathlib import Path

import pytest
import yaml

from dinocell_core.config import ConfigError, load_config, save_config
from tests.helpers.configs import Job


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_and_overrides_are_typed(tmp_path):
    path = write(tmp_path, {"model": {"patch_size": 16}, "optim": {"lr": 0.5}})
    cfg = load_config(Job, path, ["optim.lr=1e-4", "model.weights=/w.pth", "name=x"])
    assert cfg.model.patch_size == 16
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.model.weights == "/w.pth"
    assert cfg.optim.betas == (0.9, 0.999)


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = write(tmp_path, {"model": {"pretrained_weights": "x.pth"}})
    with pytest.raises(ConfigError) as exc:
        load_config(Job, path)
    assert "model.pretrained_weights" in str(exc.value)
    assert str(path) in str(exc.value)
    assert "unknown key" in str(exc.value)


def test_unknown_override_and_bad_value(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(Job, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="model.patch_size"):
        load_config(Job, None, ["model.patch_size=big"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(Job, None, ["optim.lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(Job, write(tmp_path, {"name": "a"}), ["name.x=1"])


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Job, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Job, bad)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(Job, None, ["optim.lr=0.25"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    assert load_config(Job, out) == cfg
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
