"""``jump label --shard I/N``: three shards (real CLI processes) merged equal one run bit for bit; a shard never
writes the store; a merge names missing shards; a shard with other settings is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dinocell_core.cli import main
from dinocell_core.io.shards import shards_dir
from dinocell_core.labels.store import LabelStore
from dinocell_core.synthetic.fixture import make_jump_fixture

# the fixture's scale (see test_label_run.FIXTURE_PARAMS); --qc-fields 4 makes the merge draw the contact sheet too
OPTIONS = ["--param", "min_diameter=5", "--param", "nuclei_bounds=0.008,1", "--workers", "1", "--qc-fields", "4"]
#: manifest.json keys that say when and how long, not what: the only bytes a merge may not reproduce
TIMES = ("created", "updated")


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store, by relative path; the lock file (its holder's pid) left out."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".labels.lock"}


def manifest_facts(data: bytes) -> dict:
    m = json.loads(data)
    for key in TIMES:
        m.pop(key)
    m["last_run"].pop("seconds")  # a single run's wall time; the merge records the shards' sum
    return m


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dinocell_core.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_three_shards_merged_equal_one_run_bit_for_bit(tmp_path, capsys) -> None:
    fx = make_jump_fixture(tmp_path / "fx", plates=2, wells=2, sites=2, size=96, seed=5)
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    assert main(["jump", "label", str(fx.root), "-o", str(one), *OPTIONS]) == 0
    capsys.readouterr()

    for i in (3, 2):
        done = cli("jump", "label", str(fx.root), "-o", str(sharded), "--shard", f"{i}/3", *OPTIONS)
        assert done.returncode == 0, done.stderr
        assert "not merged yet" in done.stdout
    assert not sharded.exists()  # a shard writes its own part only (LABELS.shards/shard-I-of-3)
    assert sorted(p.name for p in shards_dir(sharded).iterdir()) == [
        ".merge.lock", "shard-2-of-3", "shard-2-of-3.json", "shard-3-of-3", "shard-3-of-3.json"]

    assert main(["jump", "label", str(fx.root), "-o", str(sharded), "--merge", *OPTIONS]) == 1
    assert "shard(s) 1/3 not finished" in capsys.readouterr().err
    other = [o if o != "min_diameter=5" else "min_diameter=6" for o in OPTIONS]
    assert main(["jump", "label", str(fx.root), "-o", str(sharded), "--shard", "1/3", *other]) == 1
    assert "other settings or inputs" in capsys.readouterr().err

    last = cli("jump", "label", str(fx.root), "-o", str(sharded), "--shard", "1/3", *OPTIONS)
    assert last.returncode == 0, last.stderr
    assert "every shard finished: merged" in last.stdout
    assert not shards_dir(sharded).exists()
    capsys.readouterr()
    assert main(["jump", "label", str(fx.root), "-o", str(sharded), "--merge", *OPTIONS]) == 0  # a queued merge step
    assert "already merged" in capsys.readouterr().out
    assert not shards_dir(sharded).exists()

    a, b = store_files(one), store_files(sharded)
    assert sorted(a) == sorted(b)
    assert len(LabelStore.open(one).rows) == 7 and "contact_sheet.png" in a  # the fixture: 7 complete fields
    assert manifest_facts(a.pop("manifest.json")) == manifest_facts(b.pop("manifest.json"))
    assert [k for k in a if a[k] != b[k]] == []  # masks, labels.csv, qc.csv, skipped.csv, contact sheet


@pytest.mark.parametrize("value", ["0/3", "4/3", "two/3"])
def test_a_bad_shard_is_refused_before_any_work(tmp_path, capsys, value: str) -> None:
    assert main(["jump", "label", str(tmp_path), "-o", str(tmp_path.parent / "L"), "--shard", value]) == 1
    assert "--shard" in capsys.readouterr().err
    assert not shards_dir(tmp_path.parent / "L").exists()
