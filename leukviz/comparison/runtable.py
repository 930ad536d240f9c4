"""Compare's per-run table: each run's scores, costs (training time, inference speed, size) and settings in
one row, and what the page draws per run (ROC curves, training histories)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from leukviz.comparison.answers import format_interval
from leukviz.comparison.evaluation import Evaluation
from leukviz.core.filenames import CHECKPOINT
from leukviz.runstore import runs
from leukviz.runstore.names import format_duration, run_name, split_text
from leukviz.scoring import metrics, registry


def training_seconds(run: runs.Run) -> float | None:
    """Time spent in epochs (training and validation), summed over resumes; None before the first epoch."""
    secs = [float(e.get("seconds") or 0) for e in run.epochs()]
    return sum(secs) if secs else None


# The registered scores (scoring/registry.py) Compare's per-run table shows beside accuracy and weighted F1.
RUN_SCORES = ("sensitivity", "specificity", "roc_auc")
COMPARE_COLUMNS = {
    "model": "Model", "val_accuracy": "Val. accuracy", "weighted_f1": "Weighted F1",
    "weighted_f1_ci": "Weighted F1 95 % CI",
    **{k: registry.column(k) for k in RUN_SCORES},
    "train_time": "Training time", "ms_per_image": "Inference (ms / image)", "params_m": "Parameters (M)",
    "checkpoint_mb": "Checkpoint (MB)", "weights": "Weights", "split": "Split", "image_size": "Image size",
    "epochs": "Epochs", "run_id": "Run",
}


def compare_row(ev: Evaluation, seconds_per_image: float | None = None) -> dict:
    """One row of the Compare table (keys of COMPARE_COLUMNS)."""
    run, s = ev.run, ev.summary
    cfg = run.config
    meta = run.meta()
    ckpt = run.dir / CHECKPOINT
    split = (meta.get("split") or {}).get("description") or split_text(cfg)
    return {
        "model": run_name(run), "val_accuracy": s["accuracy"], "weighted_f1": s["weighted_f1"],
        "weighted_f1_ci": format_interval(metrics.subject_bootstrap(
            ev.y, ev.probs, ev.classes, ev.val.subjects if ev.val else None, scores=("weighted_f1",),
            n_resamples=1000)["scores"]["weighted_f1"]),
        **{k: s[k] for k in RUN_SCORES},
        "train_time": format_duration(training_seconds(run)),
        "ms_per_image": None if seconds_per_image is None else seconds_per_image * 1000,
        "params_m": meta["params"] / 1e6 if meta.get("params") else None,
        "checkpoint_mb": ckpt.stat().st_size / 1e6 if ckpt.exists() else None,
        "weights": meta.get("weights_init", cfg.weights), "split": split, "image_size": cfg.image_size,
        "epochs": cfg.epochs, "run_id": run.run_id,
    }


def compare_table(rows: Sequence[dict]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(COMPARE_COLUMNS))


def roc_curves(evals: Sequence[Evaluation]) -> dict[str, tuple[np.ndarray, np.ndarray, float | None]]:
    out = {}
    for ev in evals:
        pos = metrics.positive_index(ev.classes)
        fpr, tpr = metrics.roc_curve_points(ev.y, ev.probs, pos)
        out[run_name(ev.run)] = (fpr, tpr, ev.summary["roc_auc"])
    return out


def histories(selected: Sequence[runs.Run]) -> dict[str, list[dict]]:
    return {run_name(r): r.events() for r in selected}


def time_per_image(lm: Any, repeats: int = 5, warmup: int = 2) -> float:
    """Seconds to predict one image with a loaded model (a batch of one): the median of `repeats` after
    `warmup` calls (the first calls pay for one-off kernel selection). What a user waits per dropped image,
    decoding aside."""
    from leukviz.serving import inference

    x = np.zeros((1, lm.image_size, lm.image_size, 3), np.uint8)
    for _ in range(warmup):
        inference.predict_arrays(lm, x)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        inference.predict_arrays(lm, x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))
