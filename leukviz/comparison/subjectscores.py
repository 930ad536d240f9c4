"""The subject study's scorer and records: the scores of one model on its validation subjects (score_run), one
record per leukviz run or plain-loop fit with its cells kept for pairing, the study's summary over seeds and
folds (summarize_subjects), and the paired test over subjects of two methods (paired_test)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from leukviz.comparison.studyruns import Log
from leukviz.core import filenames, paths
from leukviz.datasets import data
from leukviz.runstore import runs
from leukviz.scoring import metrics

if TYPE_CHECKING:
    from leukviz.comparison.evaluation import Predictions

# The study's scores, by the key its records and table use -> the score registry's name ("hem_recall" is the
# specificity of C-NMC, whose negative class is hem).
STUDY_SCORES = {"weighted_f1": "weighted_f1", "accuracy": "accuracy", "hem_recall": "specificity", "roc_auc": "roc_auc"}
STUDY_METRICS = tuple(STUDY_SCORES)
LEUKVIZ, PLAIN = "leukviz", "plain"


def late_drop(f1s: list[float]) -> float:
    """The largest fall of validation weighted F1 from one epoch to the next in the last half of training
    (epochs e > E/2, each against the one before); 0 when it only rose."""
    pairs = [(f1s[e - 2], f1s[e - 1]) for e in range(max(2, len(f1s) // 2 + 1), len(f1s) + 1)]
    return max([0.0, *(a - b for a, b in pairs)])


def score_run(y: np.ndarray, prob: np.ndarray, subjects: np.ndarray, classes: Sequence[str]) -> dict:
    """The study's scores of one model on its validation subjects."""
    pred = prob.argmax(1)
    return {**{key: metrics.score(name, y, prob, classes) for key, name in STUDY_SCORES.items()},
            "per_subject": {str(s): float(np.mean(pred[subjects == s] == y[subjects == s]))
                            for s in sorted(set(subjects))}}


def leukviz_record(run: runs.Run, classes: Sequence[str]) -> dict:
    from leukviz.comparison.evaluation import read_predictions

    # Every cell of a subject-grouped split has its subject, so p.subjects is known.
    p = read_predictions(run.dir / filenames.PREDICTIONS, classes)
    f1s = [float(e["val_f1"]) for e in run.epochs()]
    return {"method": LEUKVIZ, "run_id": run.run_id, "epoch_f1": f1s, "late_drop": late_drop(f1s),
            "kept_epoch": run.final_metrics().get("best_epoch"),
            **score_run(p.y, p.probs, p.subjects, classes), "_cells": p}


def plain_cells(classes: Sequence[str], paths: Sequence[str], y: np.ndarray, prob: np.ndarray,
           subjects: np.ndarray) -> Predictions:
    """The plain loop's validation cells as evaluation.Predictions, in the order of their keys like a run's
    (evaluation.read_predictions), so two models scored on the same fold line up cell for cell. Kept for the
    paired tests; not part of the study's JSON."""
    from leukviz.comparison.evaluation import Predictions, cell_keys

    keys = cell_keys(paths)
    order = np.argsort(keys, kind="stable")
    return Predictions(list(classes), keys[order], np.asarray(y)[order], np.asarray(prob, dtype=float)[order],
                       np.asarray(subjects).astype(str)[order])


def plain_record(ds: data.Dataset, train_rows: np.ndarray, val_rows: np.ndarray, run, log: Log) -> dict:
    """The plain loop (plain.PlainRun run) on these rows, trained or from its cache, scored as a leukviz run."""
    from leukviz.training import plain

    idx = ds.index
    part = lambda rows: ([str(p) for p in idx["path"].to_numpy()[rows]],  # noqa: E731
                         [int(v) for v in idx["label"].to_numpy()[rows]])
    res = plain.cached_fit(paths.cache_root(), run, ds.fingerprint, part(train_rows), part(val_rows), log)
    f1s = [float(e["val_f1"]) for e in res["epochs"]]
    y, prob, subjects = idx["label"].to_numpy()[val_rows], np.asarray(res["probs"]), idx["subject"].to_numpy()[val_rows]
    return {"method": PLAIN, "run_id": None, "epoch_f1": f1s, "late_drop": late_drop(f1s), "kept_epoch": run.epochs,
            **score_run(y, prob, subjects, ds.classes),
            "_cells": plain_cells(ds.classes, [str(p) for p in idx["path"].to_numpy()[val_rows]], y, prob, subjects)}


def summarize_subjects(records: list[dict]) -> dict:
    """Per method and backbone: each metric averaged over the folds of one seed (a cross-validated score),
    then mean and sd over seeds; late_drop averaged over runs; per-subject accuracy averaged over seeds."""
    out: dict = {}
    for key in dict.fromkeys((r["method"], r["backbone"]) for r in records):
        mine = [r for r in records if (r["method"], r["backbone"]) == key]
        seeds = sorted({r["seed"] for r in mine})
        entry = {m: metrics.mean_sd([float(np.mean([r[m] for r in mine if r["seed"] == s])) for s in seeds])
                 for m in STUDY_METRICS}
        entry["per_seed_f1"] = {str(s): float(np.mean([r["weighted_f1"] for r in mine if r["seed"] == s]))
                                for s in seeds}
        entry["late_drop"] = metrics.mean_sd([r["late_drop"] for r in mine])
        subjects = sorted({s for r in mine for s in r["per_subject"]})
        entry["per_subject"] = {s: float(np.mean([r["per_subject"][s] for r in mine if s in r["per_subject"]]))
                                for s in subjects}
        entry["n_runs"] = len(mine)
        out.setdefault(key[1], {})[key[0]] = entry
    for name, per in out.items():
        mine = [r for r in records if r["backbone"] == name]
        if LEUKVIZ in per and PLAIN in per:
            per["difference"] = _paired_difference(mine, LEUKVIZ, PLAIN)
        variants = [m for m in methods_of(per) if m not in (LEUKVIZ, PLAIN)]
        if LEUKVIZ in per and variants:
            per["variant_differences"] = {m: _paired_difference(mine, m, LEUKVIZ) for m in variants}
    return out


def methods_of(per: dict) -> list[str]:
    """The rows of one backbone's summary: leukviz, its variants, the plain loop (in that order)."""
    rows = [m for m, e in per.items() if isinstance(e, dict) and "n_runs" in e]
    return sorted(rows, key=lambda m: (m == PLAIN, m != LEUKVIZ))


def _paired_difference(records: list[dict], a_method: str = LEUKVIZ, b_method: str = PLAIN) -> dict:
    """a minus b, on the seeds both ran (each seed's mean over folds): mean over those seeds, and the
    seeds' differences."""
    def per_seed(method: str, m: str) -> dict[int, float]:
        seeds = sorted({r["seed"] for r in records if r["method"] == method})
        return {s: float(np.mean([r[m] for r in records if r["method"] == method and r["seed"] == s])) for s in seeds}

    out: dict = {}
    for m in STUDY_METRICS:
        a, b = per_seed(a_method, m), per_seed(b_method, m)
        common = [s for s in a if s in b and np.isfinite(a[s]) and np.isfinite(b[s])]
        out[m] = float(np.mean([a[s] - b[s] for s in common])) if common else None
        if m == "weighted_f1":
            out["per_seed_f1"] = {str(s): a[s] - b[s] for s in common}
    out["seeds"] = sorted({r["seed"] for r in records if r["method"] == b_method}
                          & {r["seed"] for r in records if r["method"] == a_method})
    return out


def paired_test(records: list[dict], backbone: str, a_method: str, b_method: str, classes: Sequence[str],
                n_resamples: int = 2000) -> dict | None:
    """a − b for one backbone, cell for cell on every (seed, fold) both ran, pooled: the difference of
    weighted F1 and accuracy with a paired subject-bootstrap interval and a paired permutation test over
    subjects (metrics.paired_comparison), and its verdict in words. None when they share no cells."""
    def cells(method: str) -> dict:
        return {(r["seed"], r["fold"]): r["_cells"] for r in records
                if r["backbone"] == backbone and r["method"] == method}

    ca, cb = cells(a_method), cells(b_method)
    common = sorted(set(ca) & set(cb))
    if not common or any(not np.array_equal(ca[k].paths, cb[k].paths) for k in common):
        return None
    cat = lambda side, f: np.concatenate([getattr(side[k], f) for k in common])  # noqa: E731
    res = metrics.paired_comparison(cat(ca, "y"), cat(ca, "probs"), cat(cb, "probs"), classes, cat(ca, "subjects"),
                                    scores=("weighted_f1", "accuracy"), n_resamples=n_resamples)
    return {"a": a_method, "b": b_method, "seeds": sorted({s for s, _ in common}), **res,
            "verdict": metrics.verdict(a_method, b_method, "weighted_f1", res)}
