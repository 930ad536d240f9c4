"""Run health: whether a finished run's kept model learnt anything, decided once here for every page and
command. A run can finish without error and still be useless: it calls every validation cell one class,
scores below the majority-class baseline, or its calibration ends at a bound (its confidence carries no
information). Such a run stays `finished` with health `degenerate` and plain reasons; the pages warn
instead of congratulating, and Predict leaves it out of its defaults and of the ensemble.
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


def assess(y: np.ndarray, probs: np.ndarray, classes: list[str], cal: dict | None = None) -> Health:
    """The health of a model from its validation labels and probabilities (and its calibration dict,
    calibration.run_calibration's): degenerate when every cell gets one class, when its weighted F1 is
    below the majority-class baseline, or when its temperature fit ended at a bound."""
    y, probs = np.asarray(y, dtype=int), np.asarray(probs, dtype=float)
    if len(y) == 0:
        return Health(UNKNOWN, ("the run has no labelled validation cells to judge it on",))
    pred = probs.argmax(1)
    reasons = []
    called = np.unique(pred)
    if len(called) == 1 and len(classes) > 1:
        reasons.append(f"calls every validation cell {classes[int(called[0])]}")
    f1 = metrics.weighted_f1(y, pred)
    base, majority = majority_baseline(y)
    if len(np.unique(y)) > 1 and f1 < base - 1e-9:
        reasons.append(f"its validation weighted F1 ({f1:.3f}) is below the {base:.3f} of calling every cell "
                       f"{classes[majority]}")
    if cal and cal.get("at_bound"):
        reasons.append(f"its confidence calibration reached its bound (T = {float(cal['fitted_temperature']):.2f}): "
                       "its confidences carry no information")
    if reasons:
        return Health(DEGENERATE, tuple(reasons))
    if len(np.unique(y)) < 2:
        return Health(UNKNOWN, (f"every validation cell is {classes[int(y[0])]}, so it cannot show whether the "
                                "model tells the classes apart",))
    return Health(HEALTHY)


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
            y, p, classes = calibration.validation_cells(run_dir, blob)
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            return Health(UNKNOWN, (f"its validation predictions cannot be read ({e})",))
        _CACHE[key] = assess(y, p, classes, calibration.run_calibration(run_dir))
    return _CACHE[key]
