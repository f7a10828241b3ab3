"""``profile embed --shard I/N`` and under torchrun: shards merged equal one run bit for bit (the table, OUT.json,
OUT.fields.csv), for the tile embedders and for ``--backbone cellprofiler``; the last shard leaves the merge to
another process holding the merge lock, and ``--merge`` then writes it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dinocell_core.cli import main
from dinocell_core.io.shards import ShardParts, shards_dir
from dinocell_core.labels.store import GROUND_TRUTH_DIR
from dinocell_core.synthetic.fixture import make_jump_fixture

OUTPUTS = ("", ".json", ".fields.csv")
HOLD_LOCK = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
             "print('held', flush=True); time.sleep(300)")  # the table and what `profile embed` writes beside it


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """2 plates × 4 wells × 2 sites, 64 px, and its true masks (for --backbone cellprofiler)."""
    return make_jump_fixture(tmp_path_factory.mktemp("embed_shards"), plates=2, wells=4, sites=2, size=64, seed=0)


def embed_args(fx, backbone: str) -> list[str]:
    if backbone == "cellprofiler":
        return ["--backbone", "cellprofiler", "--features", "minimal", "--labels",
                str(fx.source_root / GROUND_TRUTH_DIR)]
    return ["--tile", "32", "--chunk-sites", "3"]  # the baseline; 6 chunks of 3 sites


def same_outputs(a: Path, b: Path) -> None:
    written = [suffix for suffix in OUTPUTS if Path(f"{a}{suffix}").is_file()]  # cellprofiler: no fields.csv
    assert written[:2] == ["", ".json"]
    for suffix in OUTPUTS:
        assert Path(f"{b}{suffix}").is_file() == (suffix in written), suffix
    for suffix in written:
        assert Path(f"{a}{suffix}").read_bytes() == Path(f"{b}{suffix}").read_bytes(), suffix


@contextmanager
def merge_lock_taken_when_a_shard_finishes(monkeypatch) -> Iterator[None]:
    """Another process takes the merge lock right after a shard records itself finished (as a shard finishing
    at the same moment would), and holds it until the block ends."""
    holders: list[subprocess.Popen] = []
    finish = ShardParts.finish

    def finish_then_lock(self: ShardParts, shard, info) -> None:
        finish(self, shard, info)
        holders.append(subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(self.folder / ".merge.lock")],
                                        stdout=subprocess.PIPE, text=True))
        assert holders[-1].stdout is not None and holders[-1].stdout.readline().strip() == "held"

    monkeypatch.setattr(ShardParts, "finish", finish_then_lock)
    try:
        yield
    finally:
        monkeypatch.undo()
        for p in holders:
            p.kill()
            p.wait()


@pytest.mark.parametrize("backbone", ["baseline", "cellprofiler"])
def test_three_shards_merged_equal_one_run_bit_for_bit(fx, tmp_path, capsys, monkeypatch, backbone: str) -> None:
    run = ["profile", "embed", str(fx.root), "--quiet", *embed_args(fx, backbone)]
    one, sharded = tmp_path / "one.csv", tmp_path / "sharded.csv"
    assert main([*run, "-o", str(one)]) == 0
    for i in (2, 1):
        assert main([*run, "-o", str(sharded), "--shard", f"{i}/3"]) == 0
    assert not sharded.exists()
    assert main([*run, "-o", str(sharded), "--merge"]) == 1
    assert "shard(s) 3/3 not finished" in capsys.readouterr().err

    with merge_lock_taken_when_a_shard_finishes(monkeypatch):
        assert main([*run, "-o", str(sharded), "--shard", "3/3"]) == 0
    assert "another process is merging" in capsys.readouterr().out  # so this shard left the merge to it
    assert not sharded.exists()
    assert main([*run, "-o", str(sharded), "--merge"]) == 0
    assert not shards_dir(sharded).exists()
    same_outputs(one, sharded)


@pytest.mark.slow
def test_torchrun_ranks_write_the_one_run_table(fx, tmp_path) -> None:
    """Two CPU ranks under torchrun (each its own shard, the later one merges) = one run."""
    run = ["profile", "embed", str(fx.root), "--quiet", *embed_args(fx, "baseline")]
    one, ranks = tmp_path / "one.csv", tmp_path / "ranks.csv"
    assert main([*run, "-o", str(one)]) == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "dinocell_core.cli", *run,
                           "-o", str(ranks)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shard 1/2 done" in done.stdout and "shard 2/2 done" in done.stdout
    assert "merged into" in done.stdout
    same_outputs(one, ranks)
