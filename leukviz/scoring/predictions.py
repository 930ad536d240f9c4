"""A run's predictions file (filenames.PREDICTIONS, filenames.TEST_PREDICTIONS): one writer and one reader of its
columns, path, subject, label, pred and prob_<class> per class. Torch-free."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leukviz.core import storage

PROB = "prob_"


def prob_column(cls: str) -> str:
    return f"{PROB}{cls}"


@dataclass(frozen=True)
class Table:
    """A predictions file as arrays, one row per cell in the file's order. y is float: NaN where a cell's label
    is missing or not a number; probs has one column per class, in `classes` order."""

    paths: np.ndarray
    subjects: np.ndarray
    y: np.ndarray
    probs: np.ndarray
    classes: list[str]

    def labelled(self) -> np.ndarray:
        """The rows with a label of one of the classes and finite probabilities."""
        y = self.y
        return np.isfinite(y) & (y >= 0) & (y < len(self.classes)) & np.isfinite(self.probs).all(axis=1)


def frame(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], paths: Sequence[str],
          subjects: Sequence[str]) -> pd.DataFrame:
    """The file's table for the writer (the training engine): path, subject, label, pred, prob_<class>..."""
    df = pd.DataFrame({"path": np.asarray(paths), "subject": np.asarray(subjects), "label": np.asarray(y),
                       "pred": np.asarray(probs).argmax(1)})
    for i, c in enumerate(classes):
        df[prob_column(c)] = np.asarray(probs)[:, i]
    return df


def read(src: str | Path | bytes, classes: Sequence[str] | None = None) -> Table:
    """The file (a path, or its bytes). classes: their order (a run's sidecar), used when the file has exactly
    those prob_ columns; otherwise the file's own order. ValueError when it lacks a label or two prob_ columns."""
    if not isinstance(src, bytes):  # a path: opened only when it is a regular file (a FIFO never hangs)
        src = storage.read_bytes(src)
    df = pd.read_csv(io.BytesIO(src), dtype={"subject": str, "path": str},
                     keep_default_na=False)
    found = [c.removeprefix(PROB) for c in df.columns if c.startswith(PROB)]
    order = list(classes) if classes and set(classes) == set(found) else found
    if "label" not in df.columns or len(order) < 2:
        raise ValueError("the predictions file lacks a label column or prob_<class> columns")
    n = len(df)
    text = lambda col: df[col].astype(str).to_numpy() if col in df.columns else np.full(n, "", dtype=object)  # noqa: E731
    y = pd.to_numeric(df["label"], errors="coerce").to_numpy(dtype=float)
    probs = df[[prob_column(c) for c in order]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return Table(text("path"), text("subject"), y, probs, order)
