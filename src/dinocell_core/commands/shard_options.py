"""``--shard I/N`` and ``--merge``, as ``jump label``, ``segment-plate`` and ``profile embed`` share them
(:mod:`dinocell_core.io.shards`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dinocell_core.io.shards import Shard


def add_shard_options(p: argparse.ArgumentParser, part: str, output: str,
                      split: str = "fields split by a hash of their key", extra: str = "") -> None:
    """The two options; ``part``: where a shard writes, ``output``: what the merge writes, ``split``: what is split."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shard", default=None, metavar="I/N",
                   help=f"do shard I of N only (numbered 1..N; {split}) into {part}; the shard that finishes last "
                        f"merges every part into {output}, the same bytes one run writes. Slurm: --array=1-N and "
                        f"--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT{extra}")
    g.add_argument("--merge", action="store_true",
                   help=f"only merge the finished shards' parts into {output} (give the shards' options); refused, "
                        "naming them, while a shard is missing or was run with other options; 'already merged' "
                        "(exit 0) when the last shard merged them")


def shard_line(shard: Shard, merged: bool, waiting: Sequence[str], output: str, finished: bool = True) -> str:
    """What a shard's run ends with: not finished, merged, waiting for others, or left to another merging process."""
    if not finished:
        return f"shard {shard} not finished (run it again)"
    if merged:
        return f"shard {shard} done; every shard finished: merged into {output}"
    if waiting:
        return f"shard {shard} done; not merged yet: waiting for shard(s) {', '.join(waiting[:10])}"
    return f"shard {shard} done; every shard finished: another process is merging them (or run --merge)"
