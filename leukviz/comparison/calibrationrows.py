"""Each compared run's calibration: its temperature and what it does to ECE, Brier and NLL on validation and
the held-out test set, as Compare's table and as `compare --json` carries it."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from leukviz.comparison.evaluation import Evaluation
from leukviz.runstore.names import run_name


def calibration_of(ev: Evaluation) -> dict:
    """A run's temperature (fitted on its validation predictions) and what it does: ECE and Brier score
    before and after on validation (optimistic: the cells it was fitted on) and, when the run has test
    predictions, on the held-out test set (the honest check), with both reliability tables."""
    from leukviz.scoring import calibration

    cal = calibration.run_calibration(ev.run.dir)
    out = {"model": run_name(ev.run), "run_id": ev.run.run_id, "temperature": cal["temperature"],
           "calibrated": cal["calibrated"], "note": cal.get("note"), "val": cal.get("report"), "test": None}
    if ev.test is not None:
        out["test"] = calibration.report(ev.test.y, ev.test.probs, cal["temperature"])
    return out


def calibration_table(cals: Sequence[dict]) -> pd.DataFrame:
    """One row per run: T, then ECE and Brier score raw → calibrated, on validation and (when there) test."""
    rows = []
    for c in cals:
        row = {"Model": c["model"], "Temperature": c["temperature"] if c["calibrated"] else None}
        for which, label in (("val", "validation"), ("test", "test")):
            rep = c.get(which)
            for k, name in (("ece", "ECE"), ("brier", "Brier")):
                row[f"{name} {label}"] = (f"{rep['before'][k]:.3f} → {rep['after'][k]:.3f}"
                                          if rep and rep["before"][k] is not None and rep["after"][k] is not None
                                          else "–")
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.drop(columns=[c for c in table.columns if c.endswith(" test") and (table[c] == "–").all()])


def calibration_summary(cal: dict) -> dict:
    """calibration_of without its reliability tables: T, whether it is applied and why not, and ECE, Brier
    and NLL before and after on validation (and test, where there is one): what `compare --json` carries."""
    out = {k: cal.get(k) for k in ("model", "run_id", "temperature", "calibrated", "note")}
    for which in ("val", "test"):
        rep = cal.get(which)
        out[which] = None if not rep else {"n": rep.get("n"), "before": rep["before"], "after": rep["after"]}
    return out
