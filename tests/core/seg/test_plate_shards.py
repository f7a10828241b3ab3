"""``segment-plate --shard I/N``: two shards merged equal one run bit for bit (labels, per-field parts, plate
tables); a shard cut short by --max-fields is not finished; no plate table before the merge; --merge names the
missing shard."""

from __future__ import annotations

import json
from pathlib import Path

from dinocell_core.cli import main
from dinocell_core.io.shards import shards_dir
from dinocell_core.jump.index import load_index
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers.bundles import crafted_bundle


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_shards_merged_equal_one_run_bit_for_bit(tmp_path, capsys) -> None:
    root = make_jump_fixture(tmp_path / "data", plates=2, wells=2, sites=1, size=64, seed=4).root
    models = tmp_path / "models"
    crafted_bundle(models / "tiny-DNA.safetensors", {"name": "tiny-DNA"})
    crafted_bundle(models / "tiny-AGP.safetensors", {"name": "tiny-AGP", "channel": "AGP"})
    run = ["segment-plate", str(models), str(root), "--device", "cpu", "--batch-size", "4"]
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    assert main([*run, "-o", str(one)]) == 0
    capsys.readouterr()

    assert main([*run, "-o", str(sharded), "--shard", "2/2", "--max-fields", "0"]) == 0
    assert "shard 2/2 not finished" in capsys.readouterr().out
    assert main([*run, "-o", str(sharded), "--shard", "2/2"]) == 0
    assert "waiting for shard(s) 1/2" in capsys.readouterr().out
    assert not list(sharded.glob("*.parquet"))  # a shard writes per-field files only, never a plate table
    assert main([*run, "-o", str(sharded), "--merge"]) == 1
    assert "shard(s) 1/2 not finished" in capsys.readouterr().err
    assert main([*run, "-o", str(sharded), "--shard", "1/2"]) == 0
    printed = capsys.readouterr().out
    assert "every shard finished: merged" in printed and printed.count("plate table ") == 2
    assert not shards_dir(sharded).exists()

    a, b = files(one), files(sharded)
    assert sorted(a) == sorted(b) and len([k for k in a if k.startswith("measurements/")]) == len(load_index(root))
    manifests = [json.loads(x.pop("segment-plate.json")) for x in (a, b)]
    for m in manifests:
        m.pop("created_at")  # when the folder was made: the only bytes a merge may not reproduce
    assert manifests[0] == manifests[1]
    assert [k for k in a if a[k] != b[k]] == []
