"""The scalar scores of one evaluation, torch-free: input checks, accuracy, the C-NMC weighted F1, balanced
accuracy, sensitivity and specificity, ROC AUC, the confusion matrix, per-subject scores and the subject vote,
and the mean ± sd over repeats. scikit-learn underneath where it has one. Which of them a page, the CLI or a
comparison shows, and how each is worded, is the registry's (registry.py)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def _skm():
    """sklearn.metrics, imported when a score is computed: a process that only predicts (calibration reads
    this module) does not pay for scikit-learn."""
    from sklearn import metrics

    return metrics


POSITIVE_CLASS = "all"


def positive_index(classes: Sequence[str]) -> int:
    """Index of the positive class: `all` (leukemia blast) when present, otherwise the last class."""
    classes = list(classes)
    if not classes:
        raise ValueError("classes is empty: need at least one class name")
    return classes.index(POSITIVE_CLASS) if POSITIVE_CLASS in classes else len(classes) - 1


def _labels(y: Any, name: str = "y") -> np.ndarray:
    """1-D int array, refusing empty input (every metric is undefined on it)."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: metrics need at least one labelled example")
    return arr.astype(int)


def _pair(y: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    y, pred = _labels(y, "y_true"), _labels(pred, "y_pred")
    if len(y) != len(pred):
        raise ValueError(f"y_true has {len(y)} labels but y_pred has {len(pred)}")
    return y, pred


def _probs(y: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y, "y_true")
    p = np.asarray(prob, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"prob must be 2-D (N, n_classes), got shape {p.shape}")
    if p.shape[0] != len(y):
        raise ValueError(f"y_true has {len(y)} labels but prob has {p.shape[0]} rows")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1} (one per prob column); "
                         f"got {y.min()}..{y.max()} (unlabelled images are -1: drop them first)")
    return y, p


def accuracy(y: Any, pred: Any) -> float:
    """Fraction of predictions equal to the true label."""
    y, pred = _pair(y, pred)
    return float(_skm().accuracy_score(y, pred))


def weighted_f1(y: Any, pred: Any) -> float:
    """The C-NMC 2019 challenge metric: `sklearn.metrics.f1_score(average="weighted")`.

    Per-class F1 averaged with weights = true support of each class. A class with no predictions
    scores 0 rather than raising a warning.
    """
    y, pred = _pair(y, pred)
    return float(_skm().f1_score(y, pred, average="weighted", zero_division=0))


def balanced_accuracy(y: Any, pred: Any) -> float:
    """Mean recall over the classes present in y (`sklearn.metrics.balanced_accuracy_score`)."""
    y, pred = _pair(y, pred)
    with warnings.catch_warnings():
        # sklearn warns when pred holds a class absent from y; the mean over present classes is still right.
        warnings.simplefilter("ignore")
        return float(_skm().balanced_accuracy_score(y, pred))


def sensitivity_specificity(y: Any, pred: Any, pos: int) -> tuple[float, float]:
    """(sensitivity, specificity): recall of class `pos`, and recall of "not pos" (all other classes
    pooled). Either is NaN when y has no example of its side."""
    y, pred = _pair(y, pred)
    is_pos, said_pos = y == pos, pred == pos
    sens = float(np.mean(said_pos[is_pos])) if is_pos.any() else math.nan
    spec = float(np.mean(~said_pos[~is_pos])) if (~is_pos).any() else math.nan
    return sens, spec


def roc_auc(y: Any, prob: Any, pos: int) -> float:
    """Area under the ROC curve of class `pos` against the rest, scored by prob[:, pos].

    NaN (not an exception) when y holds only one side, where the AUC is undefined.
    """
    y, p = _probs(y, prob)
    is_pos = y == pos
    if is_pos.all() or not is_pos.any():
        return math.nan
    return float(_skm().roc_auc_score(is_pos, p[:, pos]))


def roc_curve_points(y: Any, prob: Any, pos: int) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of class `pos` against the rest; two empty arrays when the curve is undefined."""
    y, p = _probs(y, prob)
    is_pos = y == pos
    if is_pos.all() or not is_pos.any():
        return np.array([], dtype=float), np.array([], dtype=float)
    fpr, tpr, _ = _skm().roc_curve(is_pos, p[:, pos])
    return fpr, tpr


def confusion(y: Any, pred: Any, n_classes: int) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class, always n_classes x n_classes."""
    y, pred = _pair(y, pred)
    return _skm().confusion_matrix(y, pred, labels=list(range(n_classes)))


def _majority(labels: np.ndarray) -> int:
    # Ties go to the smaller label index; in C-NMC every subject has one class, so ties do not occur.
    return int(np.bincount(labels).argmax())


def _subjects(subjects: Any, n: int) -> np.ndarray:
    s = np.asarray(subjects).astype(str)
    if s.shape != (n,):
        raise ValueError(f"subjects must have one entry per example ({n}), got shape {s.shape}")
    return s


def per_subject(y: Any, pred: Any, subjects: Any) -> pd.DataFrame:
    """Per-subject cell accuracy: columns subject, label (majority true label), n, accuracy;
    sorted by accuracy ascending (worst subjects first), ties by subject id."""
    y, pred = _pair(y, pred)
    s = _subjects(subjects, len(y))
    rows = []
    for subject in np.unique(s):
        mask = s == subject
        rows.append({"subject": str(subject), "label": _majority(y[mask]), "n": int(mask.sum()),
                     "accuracy": float(np.mean(y[mask] == pred[mask]))})
    df = pd.DataFrame(rows, columns=["subject", "label", "n", "accuracy"])
    return df.sort_values(["accuracy", "subject"], kind="stable").reset_index(drop=True)


def subject_vote(y: Any, prob: Any, subjects: Any) -> dict[str, Any]:
    """Subject-level scores: each subject is diagnosed once, by the argmax of the mean class
    probability over its cells, and compared with its majority true label.

    Returns {"subject_accuracy", "subject_weighted_f1", "n_subjects"}; these count subjects, not cells.
    """
    y, p = _probs(y, prob)
    s = _subjects(subjects, len(y))
    truth, voted = [], []
    for subject in np.unique(s):
        mask = s == subject
        truth.append(_majority(y[mask]))
        voted.append(int(p[mask].mean(axis=0).argmax()))
    return {"subject_accuracy": accuracy(truth, voted), "subject_weighted_f1": weighted_f1(truth, voted),
            "n_subjects": len(truth)}


def nan_to_none(obj: Any) -> Any:
    """Copy of obj made JSON-friendly: NaN/inf -> None, numpy scalars/arrays -> Python numbers/lists,
    tuples -> lists, DataFrames -> lists of record dicts."""
    if isinstance(obj, dict):
        return {str(k): nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, pd.DataFrame):
        return nan_to_none(obj.to_dict(orient="records"))
    if isinstance(obj, np.ndarray):
        return nan_to_none(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    """The one mean ± sd over repeats (seeds, folds) of every page, the CLI and the studies: the mean and the
    sample standard deviation (ddof=1) of the finite values, "n" of them; sd is None with fewer than two
    (one run says nothing about the spread), and both are None with none."""
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(a) == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else None, "n": int(len(a))}


def seed_spread(values: Sequence[float]) -> dict[str, Any]:
    """Spread of one score over repeated runs (seeds): mean_sd's {"mean", "sd", "n"} and the "values"; a NaN
    value (a score one seed cannot have) makes mean and sd None rather than a mean of the others."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("seed_spread needs at least one value")
    spread = mean_sd(vals) if all(np.isfinite(vals)) else {"mean": None, "sd": None, "n": len(vals)}
    return {**spread, "values": vals}
