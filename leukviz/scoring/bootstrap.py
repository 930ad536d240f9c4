"""Honest intervals, torch-free: a cluster bootstrap that resamples whole subjects (stratified by class), every
resample scored at once from per-subject confusion counts and ranks (the registry's resampled forms)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from leukviz.scoring import registry
from leukviz.scoring.registry import SCORES
from leukviz.scoring.scores import _majority, _probs, nan_to_none, positive_index


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
        """{name: (B,) array} for the resamples whose unit weights are the rows of w: each score's registered
        form on the summed confusion counts, or the weighted rank form (ROC AUC)."""
        specs = [registry.get(n) for n in names]
        counts = registry.Counts(self.confusion(w), self.pos) if any(sp.counts for sp in specs) else None
        with np.errstate(invalid="ignore", divide="ignore"):
            return {sp.name: self.auc(w) if sp.ranked else sp.counts(counts) for sp in specs}


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

        # imported here: scipy.stats is about 0.6 s of every command's start-up, and most commands never resample
        from scipy import stats

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
    names = registry.check_scores(scores)
    _check_confidence(confidence, n_resamples)
    units = _Units(y, subjects, list(classes))
    tables = _Tables(y, p, units.unit, units.n, positive_index(classes))
    dist = units.resample(lambda w: np.stack(list(tables.scores(w, names).values())), n_resamples, seed)
    notes = list(units.notes)
    out = {}
    for name, d in zip(names, dist):
        value = registry.score(name, y, p, classes)
        low, high = _interval(value, d, confidence, name, notes)
        out[name] = {"value": value, "low": low, "high": high}
    return nan_to_none({"unit": units.kind, "n_units": units.n, "n_resamples": n_resamples,
                        "confidence": confidence, "notes": notes, "scores": out})
