"""The Compare page's numbers: a finished run's evaluation, comparable groups, the comparison table, ROC
curves and histories, inference speed, the error gallery and exports; no Streamlit in here."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukviz import metrics, runs
from leukviz.dashboard import dataset_label, format_duration, run_name, split_text
from leukviz.layout import CHECKPOINT, PREDICTIONS, SIDECAR
from leukviz.preprocess import Preprocess
from leukviz.storage import read_json


@dataclass
class Evaluation:
    """A finished run's validation predictions and their metrics."""

    run: runs.Run
    classes: list[str]
    y: np.ndarray
    probs: np.ndarray
    summary: dict


def evaluate_run(run: runs.Run) -> Evaluation:
    """Metrics of a finished run, from its val_predictions.csv (the best epoch's), via metrics.summary."""
    meta = read_json(run.dir / SIDECAR, {}) or {}
    df = pd.read_csv(run.dir / PREDICTIONS, dtype={"subject": str}, keep_default_na=False)
    classes = meta.get("classes") or [c.removeprefix("prob_") for c in df.columns if c.startswith("prob_")]
    probs = df[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    y = df["label"].to_numpy(dtype=int)
    subjects = df["subject"].to_numpy(dtype=str)
    summ = metrics.summary(y, probs, classes, subjects if len(subjects) and (subjects != "").all() else None)
    return Evaluation(run, list(classes), y, probs, summ)


def group_key(run: runs.Run) -> str:
    """Runs are comparable when they saw the same dataset content and the same validation split."""
    cfg = run.config
    fp = run.info.get("dataset_fingerprint", "?")
    if cfg.split == "folds":
        return f"{fp}|folds|{cfg.val_fold}"
    if cfg.split == "groups":  # the same folds for every seed
        return f"{fp}|groups|{cfg.n_folds}|{cfg.val_fold}"
    return f"{fp}|{cfg.split}|{cfg.val_fraction}|{cfg.split_rng_seed}"


@dataclass
class Group:
    key: str
    label: str
    runs: list[runs.Run] = field(default_factory=list)

    @property
    def datasets(self) -> set[str]:
        return {r.config.data for r in self.runs}


def comparable_groups(candidates: Sequence[runs.Run]) -> dict[str, Group]:
    """Finished runs grouped by dataset fingerprint and split, the biggest group first."""
    groups: dict[str, Group] = {}
    for r in candidates:
        key = group_key(r)
        if key not in groups:
            fp = key.split("|", 1)[0]
            label = f"{dataset_label(r.config.data)} · split {split_text(r.config)} · data {fp[:8]}"
            groups[key] = Group(key, label)
        groups[key].runs.append(r)
    for g in groups.values():
        g.label += f" · {len(g.runs)} run{'s' if len(g.runs) != 1 else ''}"
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1].runs)))


def training_seconds(run: runs.Run) -> float | None:
    """Time spent in epochs (training and validation), summed over resumes; None before the first epoch."""
    secs = [float(e.get("seconds") or 0) for e in run.epochs()]
    return sum(secs) if secs else None


COMPARE_COLUMNS = {
    "model": "Model", "val_accuracy": "Val. accuracy", "weighted_f1": "Weighted F1",
    "sensitivity": "Sensitivity (all)", "specificity": "Specificity", "roc_auc": "ROC AUC",
    "train_time": "Training time", "ms_per_image": "Inference (ms / image)", "params_m": "Parameters (M)",
    "checkpoint_mb": "Checkpoint (MB)", "weights": "Weights", "split": "Split", "image_size": "Image size",
    "epochs": "Epochs", "run_id": "Run",
}


def compare_row(ev: Evaluation, seconds_per_image: float | None = None) -> dict:
    """One row of the Compare table (keys of COMPARE_COLUMNS)."""
    run, s = ev.run, ev.summary
    cfg = run.config
    meta = read_json(run.dir / SIDECAR, {}) or {}
    ckpt = run.dir / CHECKPOINT
    split = (meta.get("split") or {}).get("description") or split_text(cfg)
    return {
        "model": run_name(run), "val_accuracy": s["accuracy"], "weighted_f1": s["weighted_f1"],
        "sensitivity": s["sensitivity"], "specificity": s["specificity"], "roc_auc": s["roc_auc"],
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
    from leukviz import inference

    x = np.zeros((1, lm.image_size, lm.image_size, 3), np.uint8)
    for _ in range(warmup):
        inference.predict_arrays(lm, x)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        inference.predict_arrays(lm, x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))



# ---------------------------------------------------------------------------------------------- error gallery, export

@dataclass
class GalleryCell:
    image: np.ndarray | None
    caption: str  # plain text: true, predicted, confidence, subject
    error: str = ""


def error_gallery(run: runs.Run, k: int = 8) -> list[GalleryCell]:
    """The run's most confidently wrong validation images (then the highest-loss right ones), each loaded
    at the model's input size, as explain.top_losses orders them."""
    from leukviz import explain

    meta = read_json(run.dir / SIDECAR) or {}
    pre = Preprocess.of_checkpoint({"backbone": run.config.backbone, "image_size": run.config.image_size,
                                    "crop": True, **meta})
    cells = []
    for row in explain.top_losses(run.dir, k=k).itertuples(index=False):
        verdict = "wrong" if not row.correct else "right"
        caption = (f"true {row.true} · predicted {row.predicted} ({row.confidence:.0%}, {verdict}) · "
                   f"subject {row.subject}")
        try:
            cells.append(GalleryCell(pre.decode(row.path), caption))
        except (data.ImageError, OSError) as e:
            cells.append(GalleryCell(None, caption, str(e)))
    return cells


def export_onnx(run: runs.Run, folder: Path) -> tuple[bytes, dict]:
    """Export the run to ONNX in folder (export.export_run, checked against PyTorch): (file bytes, result)."""
    from leukviz import export

    folder.mkdir(parents=True, exist_ok=True)
    res = export.export_run(run.dir, "onnx", folder / f"{run.config.backbone}-{run.run_id}.onnx")
    return Path(res["path"]).read_bytes(), res


def export_text(res: dict) -> str:
    verdict = "agrees" if res.get("agrees") else "DISAGREES"
    return (f"ONNX opset {res.get('opset')}, {res.get('bytes', 0) / 1e6:.1f} MB; {verdict} with PyTorch on "
            f"{res.get('check_images')} images: max probability difference {res.get('max_abs_diff', float('nan')):.2e} "
            f"(tolerance {res.get('tolerance', float('nan')):g}).")


def checkpoint_bytes(run: runs.Run) -> bytes:
    return (run.dir / CHECKPOINT).read_bytes()
