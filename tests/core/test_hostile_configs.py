"""Hostile configs (issue 25 rows 2 and 11): a tiny file whose aliases expand to billions of values, recursive or
deeply nested YAML, and sizes that would allocate terabytes are each a configuration error naming the file and the
key, before anything is built or written."""

from __future__ import annotations

import pytest

from dinocell_core.cli import main
from dinocell_core.config import MAX_YAML_VALUES, ConfigError, load_config
from dinocell_core.ssl.config import PretrainConfig
from tests.helpers.pretrain import DEMO


def _alias_bomb(levels: int = 29) -> str:
    """~1 KB: an unknown key holding nested mappings of three aliases each, 3²⁹ values once expanded."""
    text = "name: bomb\nbogus:\n  l0: &l0 {x: 1, y: 1}\n"
    for i in range(1, levels + 1):
        text += f"  l{i}: &l{i} {{p: *l{i - 1}, q: *l{i - 1}, r: *l{i - 1}}}\n"
    return text


@pytest.mark.hostile(row=2, case="1 KB config whose unknown key holds a mapping-alias bomb (pretrain --plan)")
def test_alias_bomb_in_a_config_is_refused_at_once(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(_alias_bomb())
    assert cfg.stat().st_size < 1500
    plan = tmp_path / "x.json"
    assert main(["pretrain", str(cfg), "--plan", str(plan)]) == 2
    err = capsys.readouterr().err
    assert f"config file {cfg}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} values" in err
    assert not plan.exists()


@pytest.mark.hostile(row=2, case="merge-key bomb, recursive alias, 5000-deep nesting, non-UTF-8 and 2 MB configs")
@pytest.mark.parametrize("text, says", [
    ("a: &a {x: 1}\n" + "".join(f"m{i}: &m{i} {{<<: [*{'a' if i == 0 else f'm{i - 1}'}], k{i}: [*a, *a, *a]}}\n"
                                for i in range(40)) + "big: [" + ", ".join(["*m39"] * 4000) + "]\n",
     "aliases expand to more than"),
    ("a: &a [*a]\n", "a recursive alias"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    (b"name: \xff\xfe\n", "is not UTF-8 text"),
    ("name: x\n" + "# padding\n" * 200_000, "more than the 1,000,000 a config may have"),
])
def test_unbounded_yaml_is_a_config_error_naming_the_file(tmp_path, text, says):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=f"config file {cfg}.*{says}"):
        load_config(PretrainConfig, cfg)


def test_an_alias_bomb_in_an_override_is_refused():
    value = "[" + ", ".join(["&a [1, 2]"] + ["*a"] * 40_000) + "]"  # 120,004 values once expanded
    with pytest.raises(ConfigError, match="^override eval.plates=…: its YAML aliases expand to more than"):
        load_config(PretrainConfig, DEMO, [f"eval.plates={value}"])


@pytest.mark.hostile(row=11, case="train.batch_size=10¹², data.global_size=10⁶, 10¹² steps, steps_per_epoch=10²³")
@pytest.mark.parametrize("override, says", [
    ("train.batch_size=1000000000000", "train.batch_size: Input should be less than or equal to 4096"),
    ("data.global_size=1000000", "data.global_size: Input should be less than or equal to 4096"),
    ("train.epochs=1000000000000", "more than the 10,000,000 a run may have"),
    ("train.steps_per_epoch=100000000000000000000000", "train.steps_per_epoch: Input should be less than or equal"),
    ("heads.out_dim=10000000000", "heads.out_dim: Input should be less than or equal to 262144"),
])
def test_sizes_that_would_allocate_terabytes_are_config_errors(tmp_path, capsys, override, says):
    plan = tmp_path / "x.json"
    assert main(["pretrain", str(DEMO), override, "--plan", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "configuration error" in err and says in err
    assert not plan.exists()
