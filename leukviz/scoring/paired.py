"""Paired comparisons of two models on the same cells, torch-free: the difference of each score with its paired
subject-bootstrap interval, and its p-value by a paired permutation over subjects (or, without subjects, the
exact McNemar test on cells)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from leukviz.scoring import registry
from leukviz.scoring.bootstrap import _check_confidence, _interval, _Tables, _Units
from leukviz.scoring.scores import _probs, nan_to_none, positive_index

PERMUTATION_TEST = "paired permutation over subjects"


MCNEMAR_TEST = "exact McNemar test on cells"


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

    from scipy import stats  # here, not at import (start-up time: see scoring/bootstrap.py)

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
    from scipy import stats

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
    names = registry.check_scores(scores)
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
        value = registry.score(name, y, pa, classes) - registry.score(name, y, pb, classes)
        low, high = _interval(value, d, confidence, name, notes)
        out[name] = {"difference": value, "low": low, "high": high, "p_value": p_value}
    return nan_to_none({"unit": units.kind, "n_units": units.n, "test": test, "n_resamples": n_resamples,
                        "confidence": confidence, "notes": notes, "scores": out})
