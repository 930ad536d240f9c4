"""The dataset record (Dataset: the index table and what reading it found), DataError, the index's sets, and
`listing` for messages: what the other modules of the dataset layer build on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from leukviz.core.errors import LeukvizError

STRAY_PREFIX = "?"  # the subject of a file whose name carries none, in a dataset whose other names do

class DataError(LeukvizError, ValueError):
    """A dataset or image that cannot be used; the message says why and what to do."""


# The index's `set` column. A split draws from POOL_SETS: "train", and "val" (a dataset's own validation
# folder, which split "given" keeps apart and the other splits pool with train). TEST_SETS are held out:
# "test" (a test/ folder beside train/) and "prelim" (C-NMC's labelled preliminary test set, and the
# demo's); their labelled rows are scored once, after training, and never choose anything. "final" is
# C-NMC's unlabelled final test set.
POOL_SETS = ("train", "val")
TEST_SETS = ("test", "prelim")


@dataclass
class Dataset:
    name: str  # what the user typed: "demo" or a path
    root: Path
    kind: str  # "demo", "cnmc", "folder" (one sub-folder per class) or "splits" (train/ [val/] [test/])
    classes: tuple[str, ...]
    index: pd.DataFrame  # columns: path, label, subject, fold, set
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    warnings: list[str] = field(default_factory=list)  # about the layout (a class missing from test/, ...)
    folders: dict[str, str] = field(default_factory=dict)  # kind "splits": set -> its folder's name
    digests: list[str] = field(default_factory=list)  # each row's content digest (empty for the demo)

    @property
    def train_rows(self) -> pd.DataFrame:
        """The labelled rows a split draws from: set "train", and "val" when the dataset has its own."""
        return self.index[self.index["set"].isin(POOL_SETS)]

    @property
    def has_val(self) -> bool:
        """Whether the dataset comes with its own validation set (split "given")."""
        return bool((self.index["set"] == "val").any())

    @property
    def test_rows(self) -> pd.DataFrame:
        """The labelled held-out test rows (sets "test" and "prelim"): scored once after training."""
        return self.index[self.index["set"].isin(TEST_SETS) & (self.index["label"] >= 0)]

    @property
    def has_subjects(self) -> bool:
        return bool((self.train_rows["subject"] != "").all()) and len(self.train_rows) > 0

    @property
    def positive(self) -> int:
        return self.classes.index("all") if "all" in self.classes else len(self.classes) - 1


def listing(names: Sequence[str], n: int = 5) -> str:
    """'a, b, c, d, e and 7 more': the first n names of a list, in a message."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
