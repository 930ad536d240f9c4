"""Run health: whether a finished run's kept model learnt anything, decided once here for every page and
command. A run can finish without error and still be useless: it calls every validation cell one class,
scores below the majority-class baseline, is no better than chance (chance_reason), or its calibration ends at
a bound (its confidence carries no information). Such a run stays `finished` with health `degenerate` and plain
reasons; the pages warn instead of congratulating, and Predict leaves it out of its defaults and of the ensemble.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leukviz.core import storage
from leukviz.core.filenames import PREDICTIONS
from leukviz.scoring import calibration, metrics

HEALTHY, DEGENERATE, UNKNOWN = "healthy", "degenerate", "unknown"


@dataclass(frozen=True)
class Health:
    """A run's health and, unless healthy, the plain reasons ("calls every validation cell hem")."""

    status: str
    reasons: tuple[str, ...] = ()

    @property
    def degenerate(self) -> bool:
        return self.status == DEGENERATE

    @property
    def text(self) -> str:
        """One sentence for a page: empty when healthy."""
        if self.status == HEALTHY:
            return ""
        head = "Degenerate model" if self.degenerate else "Health unknown"
        return f"{head}: " + "; ".join(self.reasons) + "."

    def to_dict(self) -> dict:
        """What --json outputs carry."""
        return {"health": self.status, "health_reasons": list(self.reasons)}


def majority_baseline(y: np.ndarray) -> tuple[float, int]:
    """(weighted F1, class) of calling every cell the most common true class."""
    y = np.asarray(y, dtype=int)
    majority = int(np.bincount(y).argmax())
    return metrics.weighted_f1(y, np.full_like(y, majority)), majority


# The subject bootstrap of the chance check: fewer resamples than Compare's (2000), since it runs once per run
# and only has to tell whether the interval reaches 0.5; seeded, so a run's verdict never changes between reads.
RESAMPLES = 1000
CHANCE_AUC = 0.5  # a coin
FAILED_AUC = 0.6  # the usual grading of a diagnostic test calls an AUC from 0.5 to 0.6 a failed one
ABOVE_MAJORITY_P = 0.05  # accuracy above the majority's share: one-sided binomial test over cells


def evidence(y: np.ndarray, probs: np.ndarray, classes: list[str], subjects: np.ndarray | None = None) -> dict:
    """The figures the chance check reads: accuracy, the majority class and its share, the one-sided binomial
    p-value of the accuracy being above that share (cells taken as independent: lenient, so a model it cannot
    tell from the majority is weak indeed), balanced accuracy, the positive class's ROC AUC with its 95 %
    interval over subjects (metrics.subject_bootstrap: whole subjects resampled; cells when subjects are
    unknown), and how many subjects. Needs both classes in y."""
    from scipy import stats

    y, probs = np.asarray(y, dtype=int), np.asarray(probs, dtype=float)
    pred = probs.argmax(1)
    counts = np.bincount(y, minlength=len(classes))
    share = float(counts.max() / len(y))
    right = int((pred == y).sum())
    boot = metrics.subject_bootstrap(y, probs, classes, subjects, scores=("roc_auc",), n_resamples=RESAMPLES)
    auc = boot["scores"]["roc_auc"]
    return {"accuracy": right / len(y), "majority": classes[int(counts.argmax())], "majority_share": share,
            "above_majority_p": float(stats.binomtest(right, len(y), min(share, 1.0), alternative="greater").pvalue),
            "balanced_accuracy": metrics.balanced_accuracy(y, pred), "positive": classes[metrics.positive_index(classes)],
            "auc": auc["value"], "auc_low": auc["low"], "auc_high": auc["high"], "unit": boot["unit"],
            "n_units": boot["n_units"]}


def chance_reason(e: dict) -> str | None:
    """Why a model is no better than chance (None when it is better), from evidence(): the rule, in words.

    - It ranks no better than a coin: ROC AUC at or below 0.5 (a blast scored above a normal cell no more
      often than not), whatever its threshold does.
    - Or its decisions are not measurably better than calling every cell the majority class (accuracy not
      above the majority's share, binomial p >= 0.05 over cells) AND its ranking is not shown to beat a coin:
      AUC under 0.6 (a failed test in the usual grading) or its 95 % interval over subjects reaching 0.5.
    A model with a badly placed threshold but a real ranking (accuracy under the majority, AUC clear of both) is
    not flagged: its scores still carry information; nor is a weak model whose accuracy is above the
    majority's. docs/HEALTH.md measures the rule both ways."""
    auc, low = e["auc"], e["auc_low"]
    if auc is None:
        return None
    if auc <= CHANCE_AUC:
        return (f"no better than chance: it ranks cells no better than a coin (ROC AUC of {e['positive']} "
                f"{auc:.2f}, 0.5 is chance)")
    weak_ranking = auc < FAILED_AUC or (low is not None and low <= CHANCE_AUC)
    if e["above_majority_p"] >= ABOVE_MAJORITY_P and weak_ranking:
        over = f"{e['n_units']} subjects" if e["unit"] == "subjects" else f"{e['n_units']} cells"
        interval = f"95 % interval over {over} {low:.2f} to {e['auc_high']:.2f}" if low is not None else "no interval"
        return (f"no better than chance: its accuracy ({e['accuracy']:.1%}) is not measurably above the "
                f"{e['majority_share']:.1%} of calling every cell {e['majority']} (p = {e['above_majority_p']:.2f}), "
                f"and its ROC AUC ({auc:.2f}; {interval}) is "
                + ("under 0.6" if auc < FAILED_AUC else "not clear of 0.5"))
    return None


def assess(y: np.ndarray, probs: np.ndarray, classes: list[str], cal: dict | None = None,
           subjects: np.ndarray | None = None) -> Health:
    """The health of a model from its validation labels and probabilities (their subjects, for the chance
    check's interval; and its calibration dict, calibration.run_calibration's): degenerate when every cell gets
    one class, when its weighted F1 is below the majority-class baseline, when it is no better than chance
    (chance_reason), or when its temperature fit ended at its upper bound. Unknown when its validation holds one
    class: its scores cannot judge it."""
    y, probs = np.asarray(y, dtype=int), np.asarray(probs, dtype=float)
    if len(y) == 0:
        return Health(UNKNOWN, ("the run has no labelled validation cells to judge it on",))
    if len(np.unique(y)) < 2:  # whatever it calls them, one class cannot show whether it tells classes apart
        return Health(UNKNOWN, (ONE_CLASS.format(cls=classes[int(y[0])]),))
    pred = probs.argmax(1)
    reasons = []
    called = np.unique(pred)
    if len(called) == 1 and len(classes) > 1:
        reasons.append(f"calls every validation cell {classes[int(called[0])]}")
    f1 = metrics.weighted_f1(y, pred)
    base, majority = majority_baseline(y)
    if f1 < base - 1e-9:
        reasons.append(f"its validation weighted F1 ({f1:.3f}) is below the {base:.3f} of calling every cell "
                       f"{classes[majority]}")
    if len(called) > 1:  # one class called already says it all
        chance = chance_reason(evidence(y, probs, classes, subjects))
        if chance:
            reasons.append(chance)
    # Only the upper bound says the confidences are noise (the fit flattens them all it may); a fit at the lower
    # bound asks for sharper confidences than allowed: a timid model whose decisions passed the checks above
    # (calibration's own note says its raw confidence is shown). docs/HEALTH.md: VGG16, 1 epoch, 88.8 %.
    if cal and cal.get("at_bound") and float(cal["fitted_temperature"]) >= calibration.T_BOUNDS[1] * 0.999:
        reasons.append(f"its confidence calibration reached its bound (T = {float(cal['fitted_temperature']):.2f}): "
                       "its confidences carry no information")
    if reasons:
        return Health(DEGENERATE, tuple(reasons))
    return Health(HEALTHY)


# The one sentence for a run whose validation holds one class (pages, the CLI and `runs list` say it alike).
ONE_CLASS = "its validation has one class (every cell is {cls}): its scores cannot judge it"


_CACHE: dict[tuple, Health] = {}


def of_run_dir(run_dir: str | Path) -> Health:
    """The health of a finished run from its validation predictions (the kept model's) and calibration;
    remembered per predictions file (path, size, mtime), so pages may ask on every rerun."""
    run_dir = Path(run_dir)
    path = run_dir / PREDICTIONS
    try:
        st = path.stat()
    except OSError:
        return Health(UNKNOWN, (f"the run has no validation predictions ({PREDICTIONS})",))
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        try:
            blob = storage.read_bytes(path)  # a FIFO in its place: NotRegularFile, never a hang
            y, p, classes, subjects = calibration.validation_cells(run_dir, blob, subjects=True)
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            return Health(UNKNOWN, (f"its validation predictions cannot be read ({e})",))
        _CACHE[key] = assess(y, p, classes, calibration.run_calibration(run_dir), subjects)
    return _CACHE[key]
