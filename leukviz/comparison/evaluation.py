"""A finished run's predictions read for comparison: each file's cells in one fixed order (their keys), so two
models scored on the same cells line up row for row, and a run's evaluation (validation and held-out test)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukviz.core.filenames import PREDICTIONS, TEST_PREDICTIONS
from leukviz.runstore import runs
from leukviz.scoring import metrics, predictions


@dataclass
class Predictions:
    """One model's predictions on one set of cells, in a fixed cell order (sorted by path), so two models
    scored on the same cells line up row for row."""

    classes: list[str]
    paths: np.ndarray  # cell_keys: the identity of each cell, comparable between runs
    y: np.ndarray
    probs: np.ndarray
    subjects: np.ndarray | None  # None when any cell's subject is unknown

    @property
    def summary(self) -> dict:
        return metrics.summary(self.y, self.probs, self.classes, self.subjects)


def cell_keys(paths: Sequence[str]) -> np.ndarray:
    """Each image's identity across runs: the shortest tail of its path (file name, then class folder and
    file name, ...) that is unique among these paths. Not the whole path: one dataset given as a relative
    path to one run and as an absolute path to another is the same cells."""
    parts = [str(p).replace("\\", "/").split("/") for p in paths]
    for k in range(1, max((len(x) for x in parts), default=1) + 1):
        keys = ["/".join(x[-k:]) for x in parts]
        if len(set(keys)) == len(keys):
            return np.array(keys, dtype=str)
    return np.array([str(p) for p in paths], dtype=str)


def read_predictions(path: Path, classes: Sequence[str] | None = None) -> Predictions:
    """A val_predictions.csv / test_predictions.csv (path, subject, label, prob_<class>...), its cells in
    the order of their keys (cell_keys), which `paths` holds."""
    t = predictions.read(path, classes)
    keys = cell_keys(t.paths.tolist())
    order = np.argsort(keys, kind="stable")
    subjects = t.subjects[order].astype(str)
    known = bool(len(subjects)) and bool((subjects != "").all())
    return Predictions(t.classes, keys[order], t.y[order].astype(int), t.probs[order], subjects if known else None)


def concat(parts: Sequence[Predictions], sort: bool = False) -> Predictions:
    """Predictions stacked (sort: in the order of their cell keys, so folds of a seed line up with another
    seed's)."""
    if len(parts) == 1:
        return parts[0]
    subjects = None if any(p.subjects is None for p in parts) else np.concatenate([p.subjects for p in parts])
    out = Predictions(parts[0].classes, np.concatenate([p.paths for p in parts]),
                      np.concatenate([p.y for p in parts]), np.concatenate([p.probs for p in parts]), subjects)
    if sort:
        order = np.argsort(out.paths, kind="stable")
        out = Predictions(out.classes, out.paths[order], out.y[order], out.probs[order],
                          None if out.subjects is None else out.subjects[order])
    return out


def same_cells(a: Predictions, b: Predictions) -> bool:
    """Whether two models' predictions are of the same cells, in the same order."""
    return a.classes == b.classes and len(a.paths) == len(b.paths) and bool((a.paths == b.paths).all())


@dataclass
class Evaluation:
    """A finished run's validation predictions (the kept epoch's) and their metrics; its held-out test
    predictions when the dataset has a test set (scored once, never used to choose anything)."""

    run: runs.Run
    classes: list[str]
    y: np.ndarray
    probs: np.ndarray
    summary: dict
    val: Predictions | None = None
    test: Predictions | None = None


def evaluate_run(run: runs.Run) -> Evaluation:
    """Metrics of a finished run, from its val_predictions.csv (the kept epoch's), via metrics.summary, and
    its test_predictions.csv when there is one."""
    meta = run.meta()
    val = read_predictions(run.dir / PREDICTIONS, meta.get("classes"))
    test_file = run.dir / TEST_PREDICTIONS
    test = read_predictions(test_file, val.classes) if test_file.exists() else None
    return Evaluation(run, val.classes, val.y, val.probs, val.summary, val, test)
