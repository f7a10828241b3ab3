"""``--shard I/N``: parsing, a split by the item's identity alone, and the finished-shard markers a merge checks."""

from __future__ import annotations

import json
import random

import pytest

from dinocell_core.io.shards import (
    AlreadyMerged,
    Shard,
    ShardError,
    ShardParts,
    shards_dir,
    torchrun_shard,
    unfinished,
)


@pytest.mark.parametrize("text", ["0/4", "5/4", "x", "3", "1/0", "-1/4", "1/4/2", ""])
def test_bad_shard_values_name_the_option(text: str) -> None:
    with pytest.raises(ShardError, match="--shard"):
        Shard.parse(text)


def test_parse_and_slurm_form() -> None:
    assert Shard.parse("1/4") == Shard(1, 4)
    assert Shard.parse(" 4 / 4 ") == Shard(4, 4)
    assert str(Shard(3, 4)) == "3/4" and Shard(3, 4).name == "shard-3-of-4"
    with pytest.raises(ShardError, match="SLURM_ARRAY_TASK_ID"):  # --array=0-3 gives task 0: the message says how
        Shard.parse("0/4")


def test_every_key_has_exactly_one_shard_whatever_the_listing_order() -> None:
    keys = [f"BR{p}/r0{r}c0{c}/{s}/1" for p in range(3) for r in range(1, 4) for c in range(1, 4) for s in range(1, 10)]
    shards = [Shard(i, 5) for i in range(1, 6)]
    split = {s: [k for k in keys if s.owns(k)] for s in shards}
    assert sorted(k for part in split.values() for k in part) == sorted(keys)  # a partition
    assert all(split.values())  # 243 keys over 5 shards: none empty
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    assert {s: sorted(k for k in shuffled if s.owns(k)) for s in shards} == {s: sorted(v) for s, v in split.items()}
    assert all(Shard(1, 1).owns(k) for k in keys)


def test_torchrun_ranks_split_a_shard_further() -> None:
    assert torchrun_shard(None, {}) is None
    assert torchrun_shard(Shard(2, 3), {"WORLD_SIZE": "1"}) == Shard(2, 3)
    assert torchrun_shard(None, {"WORLD_SIZE": "4", "RANK": "2"}) == Shard(3, 4)
    # Slurm task 2 of 3, each with 4 GPUs: 12 shards, this node runs 5..8
    assert [torchrun_shard(Shard(2, 3), {"WORLD_SIZE": "4", "RANK": str(r)}) for r in range(4)] == \
        [Shard(i, 12) for i in range(5, 9)]


def test_markers_missing_shards_other_settings_and_the_merge_lock(tmp_path) -> None:
    out = tmp_path / "table.csv"
    parts = ShardParts(out, "aaaa")
    parts.start(Shard(1, 3))
    merged: list[dict] = []
    assert parts.finish_and_merge(Shard(1, 3), {"n": 1}, lambda m: merged.append(m)) is None  # 2 and 3 missing
    assert json.loads(parts.marker(Shard(1, 3)).read_text()) == {"shard": "1/3", "digest": "aaaa", "n": 1}
    with pytest.raises(ShardError, match=r"shard\(s\) 2/3, 3/3 not finished .*--shard I/3"):
        parts.merge(lambda m: m)
    assert unfinished(out, 3) == [Shard(2, 3), Shard(3, 3)]

    with pytest.raises(ShardError, match="other settings or inputs"):
        ShardParts(out, "bbbb").start(Shard(2, 3))
    with pytest.raises(ShardError, match="a shard of 3, this run splits into 4"):
        ShardParts(out, "aaaa").start(Shard(2, 4))

    parts.start(Shard(2, 3))
    parts.finish(Shard(2, 3), {"n": 2})
    parts.start(Shard(2, 3))  # running a shard again withdraws its marker until it finishes again
    assert not parts.marker(Shard(2, 3)).exists()
    parts.finish(Shard(2, 3), {"n": 2})

    def merge(markers: dict) -> str:
        parts.clear()
        return ",".join(f"{s}:{info['n']}" for s, info in markers.items())

    assert parts.finish_and_merge(Shard(3, 3), {"n": 3}, merge) == "1/3:1,2/3:2,3/3:3"
    assert not shards_dir(out).exists()  # the merge cleared it
    with pytest.raises(ShardError, match="nothing to merge"):
        parts.merge(merge)
    assert not shards_dir(out).exists()  # a refused merge leaves nothing behind
    out.write_text("merged table")  # what the last shard's merge wrote: a later --merge has nothing left to do
    with pytest.raises(AlreadyMerged, match="already merged"):
        parts.merge(merge)
    assert not shards_dir(out).exists()
