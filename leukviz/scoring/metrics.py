"""Classification metrics for leukviz: one definition of each, scikit-learn underneath where it has one."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

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
    return float(skm.accuracy_score(y, pred))


def weighted_f1(y: Any, pred: Any) -> float:
    """The C-NMC 2019 challenge metric: `sklearn.metrics.f1_score(average="weighted")`.

    Per-class F1 averaged with weights = true support of each class. A class with no predictions
    scores 0 rather than raising a warning.
    """
    y, pred = _pair(y, pred)
    return float(skm.f1_score(y, pred, average="weighted", zero_division=0))


def balanced_accuracy(y: Any, pred: Any) -> float:
    """Mean recall over the classes present in y (`sklearn.metrics.balanced_accuracy_score`)."""
    y, pred = _pair(y, pred)
    with warnings.catch_warnings():
        # sklearn warns when pred holds a class absent from y; the mean over present classes is still right.
        warnings.simplefilter("ignore")
        return float(skm.balanced_accuracy_score(y, pred))


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
    return float(skm.roc_auc_score(is_pos, p[:, pos]))


def roc_curve_points(y: Any, prob: Any, pos: int) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of class `pos` against the rest; two empty arrays when the curve is undefined."""
    y, p = _probs(y, prob)
    is_pos = y == pos
    if is_pos.all() or not is_pos.any():
        return np.array([], dtype=float), np.array([], dtype=float)
    fpr, tpr, _ = skm.roc_curve(is_pos, p[:, pos])
    return fpr, tpr


def confusion(y: Any, pred: Any, n_classes: int) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class, always n_classes x n_classes."""
    y, pred = _pair(y, pred)
    return skm.confusion_matrix(y, pred, labels=list(range(n_classes)))


def brier_score(y: Any, prob: Any) -> float:
    """Multi-class Brier score: mean over cells of sum_k (prob_k - onehot_k)^2, lower is better.

    Ranges over [0, 2]: 0 for certain and right, 2 for certain and wrong. With two classes it is
    exactly 2 x sklearn's binary `brier_score_loss` (which scores only the positive column, range [0, 1]).
    """
    y, p = _probs(y, prob)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins over [0, 1]: bin i holds (i/n, (i+1)/n], with 0 itself in the first bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)


def reliability_bins(y: Any, prob: Any, n_bins: int = 15) -> pd.DataFrame:
    """Top-label reliability table, one row per equal-width confidence bin (empty bins included).

    Columns: bin_lower, bin_upper, confidence (mean top probability), accuracy (fraction whose top
    class is right), count. Empty bins have count 0 and NaN confidence and accuracy.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y, p = _probs(y, prob)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({"bin_lower": edges[:-1], "bin_upper": edges[1:], "confidence": mean_conf,
                         "accuracy": mean_acc, "count": count.astype(int)})


def expected_calibration_error(y: Any, prob: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error: sum over equal-width bins of
    (bin count / N) * |accuracy - mean confidence|."""
    bins = reliability_bins(y, prob, n_bins)
    full = bins[bins["count"] > 0]
    weight = full["count"] / full["count"].sum()
    return float((weight * (full["accuracy"] - full["confidence"]).abs()).sum())


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


def summary(y: Any, prob: Any, classes: Sequence[str], subjects: Any = None,
            n_bins: int = 15) -> dict[str, Any]:
    """Every scalar metric of one evaluation in a JSON-serialisable dict (NaN written as None).

    Keys: n, classes, positive_class, accuracy, weighted_f1, balanced_accuracy, sensitivity,
    specificity, roc_auc, ece, confusion (list of lists); with subjects also per_subject (list of
    dicts) and subject_vote (dict). Predictions are the argmax of prob.
    """
    classes = list(classes)
    y, p = _probs(y, prob)
    if p.shape[1] != len(classes):
        raise ValueError(f"prob has {p.shape[1]} columns but {len(classes)} classes were given: {classes}")
    pos = positive_index(classes)
    pred = p.argmax(axis=1)
    sens, spec = sensitivity_specificity(y, pred, pos)
    out: dict[str, Any] = {
        "n": len(y),
        "classes": classes,
        "positive_class": classes[pos],
        "accuracy": accuracy(y, pred),
        "weighted_f1": weighted_f1(y, pred),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "sensitivity": sens,
        "specificity": spec,
        "roc_auc": roc_auc(y, p, pos),
        "ece": expected_calibration_error(y, p, n_bins),
        "confusion": confusion(y, pred, len(classes)),
    }
    if subjects is not None:
        out["per_subject"] = per_subject(y, pred, subjects)
        out["subject_vote"] = subject_vote(y, p, subjects)
    return nan_to_none(out)


# --- Honest comparisons: intervals and tests that resample whole subjects -------------------------

SCORES = ("accuracy", "weighted_f1", "sensitivity", "specificity", "roc_auc")
SCORE_LABELS = {"accuracy": "accuracy", "weighted_f1": "weighted F1", "sensitivity": "sensitivity",
                "specificity": "specificity", "roc_auc": "ROC AUC"}
PERMUTATION_TEST = "paired permutation over subjects"
MCNEMAR_TEST = "exact McNemar test on cells"


def score(name: str, y: Any, prob: Any, classes: Sequence[str]) -> float:
    """One of SCORES on (y, prob), predictions = argmax of prob; sensitivity is the recall of the
    positive class (`all`, see positive_index), specificity the recall of the others. NaN where undefined."""
    y, p = _probs(y, prob)
    pos = positive_index(classes)
    pred = p.argmax(axis=1)
    if name == "accuracy":
        return accuracy(y, pred)
    if name == "weighted_f1":
        return weighted_f1(y, pred)
    if name in ("sensitivity", "specificity"):
        return sensitivity_specificity(y, pred, pos)[name == "specificity"]
    if name == "roc_auc":
        return roc_auc(y, p, pos)
    raise ValueError(f"unknown score {name!r}: choose from {SCORES}")


def _check_scores(scores: Sequence[str]) -> tuple[str, ...]:
    unknown = [s for s in scores if s not in SCORES]
    if unknown or not scores:
        raise ValueError(f"unknown scores {unknown}: choose from {SCORES}")
    return tuple(scores)


class _Tables:
    """Per-unit summaries of one model's predictions, so that a resample, given as unit weights
    W (B, U) (how often each unit is drawn), is scored for all B resamples at once:
    confusion = W @ per-unit confusion counts; ROC AUC by weighted Mann-Whitney (a cell weighs what
    its unit weighs), from the scores sorted once."""

    SMALL = 256  # up to this many units, AUC is a quadratic form in W; beyond it, cumulative sums

    def __init__(self, y: np.ndarray, prob: np.ndarray, unit: np.ndarray, n_units: int, pos: int) -> None:
        self.k, self.pos, self.n_units = prob.shape[1], pos, n_units
        pred = prob.argmax(axis=1)
        flat = (unit * self.k + y) * self.k + pred
        self.conf = np.bincount(flat, minlength=n_units * self.k ** 2).reshape(n_units, -1).astype(float)
        s, is_pos = prob[:, pos], y == pos
        neg_order = np.argsort(s[~is_pos], kind="stable")
        neg_s, self.neg_unit, self.pos_unit = s[~is_pos][neg_order], unit[~is_pos][neg_order], unit[is_pos]
        # For each positive cell: how many negatives score below it, and up to ties.
        self.left = np.searchsorted(neg_s, s[is_pos], side="left")
        self.right = np.searchsorted(neg_s, s[is_pos], side="right")
        self.ties = not np.array_equal(self.left, self.right)
        self.pairs = None
        if n_units <= self.SMALL and n_units * len(neg_s) <= 20_000_000:
            # pairs[u, v]: pairs (positive cell of u, negative cell of v) ranked right, ties 1/2.
            neg_cum = np.zeros((n_units, len(neg_s) + 1))
            neg_cum[self.neg_unit, np.arange(1, len(neg_s) + 1)] = 1.0
            neg_cum = np.cumsum(neg_cum, axis=1)
            credit = 0.5 * (neg_cum[:, self.left] + neg_cum[:, self.right])  # (U, n_pos)
            self.pairs = np.zeros((n_units, n_units))
            np.add.at(self.pairs, self.pos_unit, credit.T)
        self.n_pos = np.bincount(self.pos_unit, minlength=n_units).astype(float)
        self.n_neg = np.bincount(self.neg_unit, minlength=n_units).astype(float)

    def auc(self, w: np.ndarray) -> np.ndarray:
        """(B,) weighted ROC AUC of the positive class, ties counted 1/2; NaN without both sides."""
        if self.pairs is not None:
            num = np.einsum("bu,uv,bv->b", w, self.pairs, w, optimize=True)
        else:
            # Units along rows (w.T), so that picking cells copies whole rows of B weights.
            wt = np.ascontiguousarray(w.T)
            cum = np.zeros((len(self.neg_unit) + 1, len(w)))
            np.cumsum(wt[self.neg_unit], axis=0, out=cum[1:])
            below = 0.5 * (cum[self.left] + cum[self.right]) if self.ties else cum[self.left]
            num = np.einsum("ib,ib->b", wt[self.pos_unit], below)
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / ((w @ self.n_pos) * (w @ self.n_neg))

    def confusion(self, w: np.ndarray) -> np.ndarray:
        """(B, K, K) summed confusion matrices, rows true, columns predicted."""
        return (w @ self.conf).reshape(-1, self.k, self.k)

    def scores(self, w: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """{name: (B,) array} for the resamples whose unit weights are the rows of w."""
        c = self.confusion(w) if set(names) - {"roc_auc"} else None
        out = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            if c is not None:
                total = c.sum(axis=(1, 2))
                tp = np.diagonal(c, axis1=1, axis2=2)
                support, said = c.sum(axis=2), c.sum(axis=1)
                f1 = np.where(support + said > 0, 2 * tp / np.maximum(support + said, 1e-300), 0.0)
                rest = np.arange(self.k) != self.pos
                out = {"accuracy": tp.sum(axis=1) / total,
                       "weighted_f1": np.sum(support * f1, axis=1) / total,
                       "sensitivity": tp[:, self.pos] / support[:, self.pos],
                       "specificity": c[:, rest][:, :, rest].sum(axis=(1, 2)) / support[:, rest].sum(axis=1)}
            if "roc_auc" in names:
                out["roc_auc"] = self.auc(w)
        return {n: out[n] for n in names}


def _known_subjects(subjects: Any, n: int) -> np.ndarray | None:
    """Subject ids as strings, or None when they are not given or any is unknown ("", None, NaN)."""
    if subjects is None:
        return None
    raw = np.asarray(subjects, dtype=object)
    if raw.shape != (n,):
        raise ValueError(f"subjects must have one entry per example ({n}), got shape {raw.shape}")
    text = np.array(["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip()
                     for v in raw])
    return None if (text == "").any() else text


class _Units:
    """The resampling units (subjects, or cells where subjects are unknown), each with its class.

    unit[i] is the unit of cell i; strata[c] the units of class c (a subject's class is the majority
    label of its cells). draw(*samples) turns scipy's resampled unit indices, one sample per stratum
    of two or more units, into unit weights W (B, U); a stratum of one unit is always drawn once.
    """

    def __init__(self, y: np.ndarray, subjects: Any, classes: Sequence[str]) -> None:
        known = _known_subjects(subjects, len(y))
        self.kind = "cells" if known is None else "subjects"
        self.notes: list[str] = []
        if known is None:
            self.unit, label = np.arange(len(y)), y
            which = "some subjects are" if subjects is not None else "subjects are"
            self.notes = [f"{which} unknown, so cells were resampled; cells of one person are not "
                          "independent, so this interval is too narrow"]
        else:
            ids, self.unit = np.unique(known, return_inverse=True)
            label = np.array([_majority(y[self.unit == u]) for u in range(len(ids))])
            mixed = sum(len(np.unique(y[self.unit == u])) > 1 for u in range(len(ids)))
            if mixed:
                self.notes.append(f"{mixed} subject(s) have cells of more than one class; each was "
                                  "resampled with the class of most of its cells")
        self.n = len(label)
        self.strata = [np.flatnonzero(label == c) for c in np.unique(label)]
        self.fixed = np.concatenate([s for s in self.strata if len(s) == 1] or [np.array([], int)])
        self.samples = [s for s in self.strata if len(s) > 1]
        if self.kind == "subjects":
            for c in np.unique(label[self.fixed]):
                self.notes.append(f"class {classes[c]!r} has one subject in this set: the interval does "
                                  f"not cover variation between {classes[c]} subjects")

    def draw(self, *samples: np.ndarray) -> np.ndarray:
        """(B, U) weights from resampled unit indices, each sample of shape (B, n_c)."""
        b = samples[0].shape[0] if samples else 1
        rows = np.arange(b)[:, None] * self.n
        flat = np.concatenate([(rows + s).ravel() for s in samples] or [np.array([], int)])
        w = np.bincount(flat, minlength=b * self.n).reshape(b, self.n).astype(float)
        w[:, self.fixed] += 1.0
        return w

    def resample(self, fn: Any, n_resamples: int, seed: int) -> np.ndarray:
        """(S, n_resamples) bootstrap distribution of fn(W) -> (S, B), stratified by class, through
        scipy.stats.bootstrap (one sample per stratum, paired=False); constant when no stratum varies."""
        if not self.samples:
            return fn(self.draw())[:, [0] * n_resamples]

        def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
            lead = samples[0].shape[:-1]
            flat = [s.reshape(-1, s.shape[-1]).astype(int) for s in samples]
            return fn(self.draw(*flat)).reshape(-1, *lead)

        with warnings.catch_warnings():
            # scipy warns when a score is NaN in some resamples; _interval deals with those.
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            res = stats.bootstrap(self.samples, statistic, n_resamples=n_resamples, vectorized=True,
                                  paired=False, method="percentile", rng=np.random.default_rng(seed))
        return np.asarray(res.bootstrap_distribution)


def _interval(value: float, dist: np.ndarray, confidence: float, name: str,
              notes: list[str]) -> tuple[float, float]:
    """Percentile interval of a bootstrap distribution, at resample values (the lower end rounds
    down, the upper end up, so on a coarse lattice of subject resamples the interval is never
    narrower than the data allow). Resamples where the score is undefined (NaN) are left out, and
    a note says how many; an undefined value gives an undefined interval."""
    if not math.isfinite(value):
        notes.append(f"{name} is undefined on these cells (one side of the positive class is missing)")
        return math.nan, math.nan
    ok = dist[np.isfinite(dist)]
    if len(ok) < len(dist):
        notes.append(f"{name} is undefined in {len(dist) - len(ok)} of {len(dist)} resamples; "
                     "its interval is over the others")
    if not len(ok):
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    return float(np.quantile(ok, alpha, method="lower")), float(np.quantile(ok, 1 - alpha, method="higher"))


def _check_confidence(confidence: float, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def subject_bootstrap(y: Any, prob: Any, classes: Sequence[str], subjects: Any = None,
                      scores: Sequence[str] = SCORES, n_resamples: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> dict[str, Any]:
    """Cluster-bootstrap percentile intervals of `scores`: whole subjects (with all their cells) are
    resampled, the subjects of each class separately, so every resample keeps both classes
    (scipy.stats.bootstrap, one sample per class, paired=False). Without subjects, or with any
    unknown (""), cells are resampled instead, stratified by class, and a note says the interval is
    too narrow. A score undefined in some resamples (NaN) is left out of those (noted).

    Returns {"unit": "subjects" | "cells", "n_units", "n_resamples", "confidence", "notes": [str],
    "scores": {name: {"value", "low", "high"}}}, NaN written as None.
    """
    y, p = _probs(y, prob)
    names = _check_scores(scores)
    _check_confidence(confidence, n_resamples)
    units = _Units(y, subjects, list(classes))
    tables = _Tables(y, p, units.unit, units.n, positive_index(classes))
    dist = units.resample(lambda w: np.stack(list(tables.scores(w, names).values())), n_resamples, seed)
    notes = list(units.notes)
    out = {}
    for name, d in zip(names, dist):
        value = score(name, y, p, classes)
        low, high = _interval(value, d, confidence, name, notes)
        out[name] = {"value": value, "low": low, "high": high}
    return nan_to_none({"unit": units.kind, "n_units": units.n, "n_resamples": n_resamples,
                        "confidence": confidence, "notes": notes, "scores": out})


def _one_hot_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) counts of each value 0..n-1 in each row of idx (B, m)."""
    rows = np.arange(len(idx))[:, None] * n
    return np.bincount((rows + idx).ravel(), minlength=len(idx) * n).reshape(len(idx), n).astype(float)


def _permutation_p(y: np.ndarray, pa: np.ndarray, pb: np.ndarray, units: _Units, pos: int,
                   names: tuple[str, ...], n_resamples: int, seed: int, notes: list[str]) -> np.ndarray:
    """Two-sided p-values of a - b, one per score, by swapping the two models' predictions for whole
    subjects (scipy.stats.permutation_test, permutation_type="samples"; exact when 2**U <= n_resamples).
    Index u stands for model a's predictions on subject u, u + U for model b's."""
    n = units.n
    if n < 2:
        notes.append("one subject: swapping the models' predictions cannot tell them apart (p = 1)")
        return np.ones(len(names))
    both = _Tables(np.r_[y, y], np.r_[pa, pb], np.r_[units.unit, units.unit + n], 2 * n, pos)

    def statistic(x: np.ndarray, other: np.ndarray, axis: int = -1) -> np.ndarray:
        lead = x.shape[:-1]
        wx = _one_hot_counts(x.reshape(-1, n).astype(int), 2 * n)
        wy = _one_hot_counts(other.reshape(-1, n).astype(int), 2 * n)
        sx, sy = both.scores(wx, names), both.scores(wy, names)
        return np.stack([sx[k] - sy[k] for k in names], axis=-1).reshape(*lead, len(names))

    res = stats.permutation_test((np.arange(n), np.arange(n) + n), statistic, permutation_type="samples",
                                 vectorized=True, n_resamples=n_resamples, alternative="two-sided",
                                 rng=np.random.default_rng(seed))
    exact = 2 ** n <= n_resamples
    notes.append(f"p-value exact, over all 2^{n} = {2 ** n} ways to swap the models per subject" if exact
                 else f"p-value from {n_resamples} random swaps of the models per subject (of 2^{n})")
    return np.where(np.isfinite(res.statistic), res.pvalue, np.nan)


def _mcnemar_p(y: np.ndarray, pa: np.ndarray, pb: np.ndarray, notes: list[str]) -> float:
    """Exact McNemar test: of the cells where exactly one model is right, is "a right" a fair coin?"""
    right_a, right_b = pa.argmax(axis=1) == y, pb.argmax(axis=1) == y
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    notes.append(f"McNemar: {only_a} cells only the first model gets right, {only_b} only the second; "
                 "it tests accuracy and its p-value is given for every score; it treats cells as "
                 "independent, so the p-value is too small")
    return 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_comparison(y: Any, prob_a: Any, prob_b: Any, classes: Sequence[str], subjects: Any = None,
                      scores: Sequence[str] = ("weighted_f1", "accuracy"), n_resamples: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Models a and b scored on the SAME cells: the difference a - b of each score, its interval by
    a paired bootstrap over subjects (both models' predictions resampled together, stratified by
    class, as in subject_bootstrap), and its two-sided p-value by a paired permutation over subjects.
    Without known subjects: a cell bootstrap and the exact McNemar test, which the result names.

    Returns {"unit", "n_units", "test": "paired permutation over subjects" | "exact McNemar test on
    cells", "n_resamples", "confidence", "notes", "scores": {name: {"difference", "low", "high",
    "p_value"}}}, NaN written as None.
    """
    if np.shape(prob_a) != np.shape(prob_b):
        raise ValueError(f"the two models' probabilities differ in shape ({np.shape(prob_a)} vs "
                         f"{np.shape(prob_b)}): a paired comparison needs both scored on the same cells")
    y, pa = _probs(y, prob_a)
    _, pb = _probs(y, prob_b)
    names = _check_scores(scores)
    _check_confidence(confidence, n_resamples)
    units, pos = _Units(y, subjects, list(classes)), positive_index(classes)
    ta, tb = (_Tables(y, p, units.unit, units.n, pos) for p in (pa, pb))

    def diff(w: np.ndarray) -> np.ndarray:
        sa, sb = ta.scores(w, names), tb.scores(w, names)
        return np.stack([sa[k] - sb[k] for k in names])

    dist = units.resample(diff, n_resamples, seed)
    notes = list(units.notes)
    if units.kind == "subjects":
        test = PERMUTATION_TEST
        p_values = _permutation_p(y, pa, pb, units, pos, names, n_resamples, seed, notes)
    else:
        test, p_values = MCNEMAR_TEST, np.full(len(names), _mcnemar_p(y, pa, pb, notes))
    out = {}
    for name, d, p_value in zip(names, dist, p_values):
        value = score(name, y, pa, classes) - score(name, y, pb, classes)
        low, high = _interval(value, d, confidence, name, notes)
        out[name] = {"difference": value, "low": low, "high": high, "p_value": p_value}
    return nan_to_none({"unit": units.kind, "n_units": units.n, "test": test, "n_resamples": n_resamples,
                        "confidence": confidence, "notes": notes, "scores": out})


def signed(x: float) -> str:
    """'+0.012' or '−0.021' (a true minus sign): a difference as verdicts and tables print it."""
    return f"{x:+.3f}".replace("-", "\u2212")


def p_text(p: float) -> str:
    """'p < 0.001', 'p = 0.004' or 'p = 0.62': a p-value as verdicts and tables print it."""
    return "p < 0.001" if p < 0.001 else "p = " + (f"{p:.3f}" if p < 0.01 else f"{p:.2f}")



CLEAR, WEAK, UNCLEAR = "clear", "weak", "unclear"


def verdict_kind(entry: dict[str, Any], confidence: float = 0.95) -> str:
    """What a paired difference (one score's entry of paired_comparison) supports, from its interval and
    its test together: CLEAR (the interval excludes 0 and p < 1 - confidence), WEAK (the interval excludes
    0, p below WEAK_P) or UNCLEAR (the interval includes 0, or the test sees nothing). verdict() words it."""
    low, high, p = entry.get("low"), entry.get("high"), entry.get("p_value")
    if low is None or high is None or math.isnan(low) or math.isnan(high) or low <= 0 <= high:
        return UNCLEAR
    if p is not None and math.isfinite(p) and p >= WEAK_P:
        return UNCLEAR
    if p is not None and math.isfinite(p) and p >= 1 - confidence:
        return WEAK
    return CLEAR


def verdict(name_a: str, name_b: str, score_name: str, result: dict[str, Any],
            confidence: float = 0.95) -> str:
    """A paired_comparison result in plain words, e.g. "ResNet50 − GoogLeNet: +0.012 weighted F1,
    95 % CI −0.021 to +0.045 (p = 0.62): no clear difference". A model "is better" when the interval
    excludes 0 and the p-value is below 1 - confidence; when only the interval excludes 0 the words
    say the evidence is weak, and with p at or above WEAK_P that there is no clear difference. The confidence printed is the result's own (the argument is the
    fallback for a result without one). Every score in SCORES is higher-is-better."""
    confidence = float(result.get("confidence", confidence))
    entry = result["scores"][score_name]
    label = SCORE_LABELS.get(score_name, score_name)
    head = f"{name_a} \u2212 {name_b}"
    diff, low, high, p = (entry.get(k) for k in ("difference", "low", "high", "p_value"))
    if diff is None or (isinstance(diff, float) and math.isnan(diff)):
        return f"{head}: {label} is undefined on these cells"
    text = f"{head}: {signed(diff)} {label}"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{text} (no interval): no clear difference"
    text += f", {100 * confidence:g} % CI {signed(low)} to {signed(high)}"
    if p is not None and math.isfinite(p):
        text += f" ({p_text(p)})"
    kind = verdict_kind(entry, confidence)
    if low <= 0 <= high:
        return f"{text}: no clear difference"
    better = name_a if low > 0 else name_b
    if kind == UNCLEAR:  # the interval excludes 0, the test sees nothing: the words follow the test
        return f"{text}: no clear difference (the interval excludes 0, but the paired test cannot tell them apart)"
    if kind == WEAK:
        return f"{text}: weak evidence that {better} is better (the interval excludes 0, the test does not)"
    return f"{text}: {better} is better"


# At or above this p-value the paired test sees no sign of a difference at all: a verdict never calls it
# evidence, whatever the interval says (few subjects make the interval narrow and the test blunt).
WEAK_P = 0.5


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
