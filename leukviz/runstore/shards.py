"""Splitting a group of runs (a study, a seeds group) between processes that share one runs folder: shard I of N
takes every N-th run of the group's fixed order, starting at the I-th, so a Slurm job array (I =
$SLURM_ARRAY_TASK_ID) or N machines train disjoint parts and nothing twice; the run lock makes a second starter
of one run attach instead of training it again. A last call without a shard trains nothing that the shards
finished: it finds every run cached and gathers the results (docs/SCALING.md)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

T = TypeVar("T")


class Shard(NamedTuple):
    index: int  # 1-based, as a job array numbers its tasks
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def mine(self, position: int) -> bool:
        """Whether the run at this position of the group's order (0-based) is this shard's."""
        return position % self.count == self.index - 1


def parse(text: str) -> Shard:
    """'I/N' (1 <= I <= N): an argparse type, so a wrong shard fails before anything trains."""
    try:
        i, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard: give I/N, as 1/4 (the first of four)") from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"shard {text}: I is from 1 to N (here from 1 to {max(n, 1)})")
    return Shard(i, n)


def pick(items: Sequence[T], shard: Shard | None) -> list[T]:
    """This shard's items of a group (all of them without a shard), in the group's order."""
    return list(items) if shard is None else [x for k, x in enumerate(items) if shard.mine(k)]
