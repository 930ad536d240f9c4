"""Calibration-like scores of probabilities, torch-free: the multi-class Brier score, the top-label reliability
table and the expected calibration error (the temperature fitted on them is calibration.py's)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from leukviz.scoring.scores import _probs


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
