"""Temperature scaling: one scalar T, fitted on a run's validation predictions, that softens (T > 1) or
sharpens (T < 1) the model's probabilities without changing any prediction.

softmax(log(p) / T) equals softmax(logits / T) for a softmax model's probabilities p, so T is fitted on the
saved probabilities alone (no model pass). The fit and its report use the same validation cells, which also
chose the run's best epoch: the calibration error measured there after scaling is optimistic; cells the
run never saw give the honest figure.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukviz.core import storage
from leukviz.core.filenames import CALIBRATION, PREDICTIONS, SIDECAR
from leukviz.core.storage import atomic_write_json, read_json
from leukviz.scoring import predictions, reliability, scores  # not metrics: prediction needs no scipy

EPS = 1e-7  # probabilities are clipped to [EPS, 1] before the log: a saved 0 would be log(0) = -inf
T_BOUNDS = (0.05, 20.0)  # the fitted temperature stays within these
MIN_CELLS = 8  # fewer labelled validation cells than this fit nothing (T = 1)
VERSION = 2  # of calibration.json; a cache of another version is refitted (2: a fit at a bound is not applied)
BOUND_TOLERANCE = 0.02  # a fitted T within 2 % (in log) of a bound has hit it: the fit found no interior optimum


def _log_probs(probs: Any) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, n_classes), got shape {p.shape}")
    return np.log(np.clip(p, EPS, 1.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(y: Any, probs: Any) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at EPS)."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(probs, dtype=float)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))))


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) row by row: the same argmax, confidence pulled towards 1/C when T > 1.
    T = 1 returns the probabilities as given (a float array), unclipped."""
    p = np.asarray(probs, dtype=float)
    if temperature == 1.0:
        return p
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if p.ndim == 1:
        return apply_temperature(p[None], temperature)[0]
    return _softmax(_log_probs(p) / float(temperature))


def fit_temperature(y: Any, probs: Any) -> float:
    """The temperature that minimises the negative log-likelihood of softmax(log(p) / T) on (y, probs):
    a bounded scalar search over log T, T within T_BOUNDS. Fit it on validation cells, never on test ones."""
    from scipy.optimize import minimize_scalar

    y, p = scores._probs(y, probs)
    z = _log_probs(p)
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[rows, y]))

    res = minimize_scalar(loss, bounds=tuple(np.log(T_BOUNDS)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def _scores(y: np.ndarray, p: np.ndarray, n_bins: int) -> dict[str, float]:
    return {"ece": reliability.expected_calibration_error(y, p, n_bins), "brier": reliability.brier_score(y, p),
            "nll": nll(y, p)}


def report(y: Any, probs: Any, temperature: float, n_bins: int = 15) -> dict[str, Any]:
    """ECE, Brier score and NLL before and after scaling, and both reliability tables, JSON-friendly:
    {"temperature", "n", "before": {ece, brier, nll}, "after": {...}, "reliability_before": [bins],
    "reliability_after": [bins]}. On the cells T was fitted on, "after" is optimistic."""
    y, p = scores._probs(y, probs)
    scaled = apply_temperature(p, temperature)
    return scores.nan_to_none({
        "temperature": float(temperature), "n": len(y),
        "before": _scores(y, p, n_bins), "after": _scores(y, scaled, n_bins),
        "reliability_before": reliability.reliability_bins(y, p, n_bins),
        "reliability_after": reliability.reliability_bins(y, scaled, n_bins)})


def not_calibrated(reason: str, **extra: Any) -> dict[str, Any]:
    """What a run without a usable fit carries: T = 1 (the raw probabilities), and why."""
    return {"version": VERSION, "temperature": 1.0, "calibrated": False, "fitted_on": None, "n": 0,
            "note": f"not calibrated: {reason}", "report": None, **extra}


def at_bound(temperature: float) -> bool:
    """Whether a fitted temperature sits on one of T_BOUNDS: the likelihood kept improving past it (a model
    whose confidence carries no information, or one class only), so scaling by it would mislead."""
    t = float(temperature)
    return any(abs(np.log(t / b)) <= BOUND_TOLERANCE for b in T_BOUNDS)


def unusable_fit(y: np.ndarray, n_classes: int) -> str | None:
    """Why labelled validation cells cannot calibrate (None when they can): too few, or one class only."""
    if len(y) < MIN_CELLS:
        return f"{len(y)} labelled validation cells (need {MIN_CELLS})"
    present = len(np.unique(y))
    if present < min(2, n_classes):
        return "every validation cell is of one class, so a temperature fitted on them means nothing"
    return None


def cache_problem(cached: Any) -> str | None:
    """What is wrong with a calibration.json whose key matches (None when nothing): a temperature that is not
    a finite number, one outside T_BOUNDS or at a bound yet marked calibrated, or a not-calibrated one other
    than 1. Such a file is never applied; run_calibration fits again and says so, naming the file."""
    t, calibrated = cached.get("temperature"), cached.get("calibrated")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t):
        return f"its temperature {t!r} is not a number"
    if not isinstance(calibrated, bool):
        return f"its \"calibrated\" is {calibrated!r}, not true or false"
    if calibrated and not (T_BOUNDS[0] < t < T_BOUNDS[1]) or calibrated and at_bound(t):
        return f"its temperature {t:g} is outside its own bounds ({T_BOUNDS[0]:g} to {T_BOUNDS[1]:g})"
    if not calibrated and t != 1.0:
        return f"it is not calibrated, yet its temperature is {t:g}, not 1"
    return None


def validation_cells(run_dir: Path, src: Path | bytes, subjects: bool = False) -> tuple:
    """(labels, probabilities, classes) of the labelled rows of a run's validation predictions (a path or the
    file's bytes), columns in the sidecar's class order when it has one; with subjects, their subject ids
    too (a fourth item). ValueError when the table lacks its columns."""
    t = predictions.read(src, (read_json(run_dir / SIDECAR, {}) or {}).get("classes"))
    keep = t.labelled()
    out = (t.y[keep].astype(int), t.probs[keep], t.classes)
    return (*out, t.subjects[keep]) if subjects else out


def fit_run(run_dir: Path, blob: bytes) -> dict[str, Any]:
    """Fit and report on the bytes of a run's validation predictions (run_calibration caches this)."""
    try:
        y, p, _ = validation_cells(run_dir, blob)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        return not_calibrated(f"the validation predictions cannot be read ({e})")
    why = unusable_fit(y, p.shape[1])
    if why:
        return not_calibrated(why, n=len(y))
    t = fit_temperature(y, p)
    if at_bound(t):
        return not_calibrated(f"the fitted temperature reached its bound (T = {t:.2f}, allowed "
                              f"{T_BOUNDS[0]:g} to {T_BOUNDS[1]:g}): the raw confidence is shown", n=len(y),
                              fitted_temperature=t, at_bound=True)
    return {"version": VERSION, "temperature": t, "calibrated": True, "fitted_on": "validation", "n": len(y),
            "note": f"calibrated on {len(y)} validation cells, T = {t:.2f} (the cells that also chose the "
                    "best epoch: the error after scaling measured on them is optimistic)",
            "report": report(y, p, t)}


def run_calibration(run_dir: str | Path) -> dict[str, Any]:
    """A run's temperature, fitted on its validation predictions (filenames.PREDICTIONS) and cached in
    filenames.CALIBRATION under the predictions file's content hash: a retrained run (new predictions) is
    refitted, an unchanged one read back. Never raises for a run's contents: without usable validation
    predictions it gives T = 1 and a note saying "not calibrated". The report's "after" numbers are
    measured on the cells T was fitted on, so they are optimistic."""
    run_dir = Path(run_dir)
    try:
        blob = storage.read_bytes(run_dir / PREDICTIONS)
    except OSError:
        return not_calibrated(f"the run has no validation predictions ({PREDICTIONS})")
    key = hashlib.sha256(blob).hexdigest()
    cached = read_json(run_dir / CALIBRATION, None)
    damaged = None
    if isinstance(cached, dict) and cached.get("key") == key and cached.get("version") == VERSION:
        damaged = cache_problem(cached)
        if damaged is None:
            return cached
    out = {**fit_run(run_dir, blob), "key": key, "source": PREDICTIONS}
    try:
        if storage.is_regular_or_missing(run_dir / CALIBRATION):  # a pipe in its place is named, not replaced
            atomic_write_json(run_dir / CALIBRATION, out)
    except OSError:
        pass  # a read-only run folder: the fit is cheap, the next load fits again
    if damaged:  # a hand-edited or damaged file: never applied; fitted again (and rewritten), named this once
        out["note"] = f"{CALIBRATION} was not applied ({damaged}), so it was fitted again: {out['note']}"
    return json.loads(json.dumps(out))
