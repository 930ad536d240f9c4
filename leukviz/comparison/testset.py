"""The held-out test set of a finished run, scored once: the backfill for runs that finished before training
scored it itself (checkpoints.score_test_set).

The same rows (Dataset.test_rows: a test/ folder, C-NMC's labelled preliminary set), the same file
(filenames.TEST_PREDICTIONS), the same code (checkpoints.score_test_rows) and the model the checkpoint holds, with the
run's own preprocessing. Nothing here chooses anything: the run's epoch was chosen on validation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from leukviz.core import storage
from leukviz.core.filenames import CONFIG, TEST_PREDICTIONS
from leukviz.datasets import data
from leukviz.runstore import runs
from leukviz.runstore.names import run_name


def score_run(run_dir: str | Path, cache_dir: Path | None = None) -> Path | None:
    """Write run_dir's filenames.TEST_PREDICTIONS and return its path; the existing file when it is newer than
    the checkpoint (idempotent). None when the run's dataset cannot be opened, is no longer the one the run
    was trained on (its fingerprint changed: its test rows might now hold training images), or has no
    labelled test rows. A run without a checkpoint raises FileNotFoundError (inference.load_model)."""
    from leukviz.serving import inference  # torch: only when a run is scored, not when a page imports this
    from leukviz.training import checkpoints

    run_dir = Path(run_dir)
    out = run_dir / TEST_PREDICTIONS
    if checkpoints.test_is_scored(run_dir):
        return out
    info = json.loads(storage.read_text(run_dir / CONFIG))
    try:
        ds = data.open_dataset(info["config"]["data"], cache_dir)
    except (data.DataError, OSError):
        return None
    expected = info.get("dataset_fingerprint")
    rows = ds.test_rows.index.to_numpy()
    if (expected and ds.fingerprint != expected) or len(rows) == 0:
        return None
    lm = inference.load_model(run_dir)
    if list(lm.classes) != list(ds.classes):
        raise data.DataError(f"dataset classes {list(ds.classes)} differ from the model's {lm.classes}")
    images, ok = lm.preprocess.cache(ds, cache_dir)
    scored = checkpoints.score_test_rows(run_dir, ds, images, ok, lambda x: inference.predict_arrays(lm, x))
    return out if scored is not None else None


def backfill_test(candidates: Sequence[runs.Run], cache_dir: Path | None = None) -> list[str]:
    """Score on its dataset's held-out test set (score_run) every run that finished before runs were scored
    on it; each dataset opened once to see whether it has one. Returns what went wrong."""
    has_test: dict[str, bool] = {}
    problems = []
    for run in candidates:
        if (run.dir / TEST_PREDICTIONS).exists():
            continue
        where = run.config.data
        if where not in has_test:
            try:
                has_test[where] = len(data.open_dataset(where, cache_dir).test_rows) > 0
            except (data.DataError, OSError):
                has_test[where] = False
        if has_test[where]:
            try:
                score_run(run.dir, cache_dir)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                problems.append(f"{run_name(run)} not scored on the test set: {e}")
    return problems
