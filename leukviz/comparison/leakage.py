"""The leakage study: the same model and recipe split by image (leaky: cells of one person on both sides) and
by subject, side by side, and the inflation (image minus subject)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from leukviz.comparison.studyruns import Log, Progress, run_scores, train_group
from leukviz.models import config
from leukviz.models.config import RunConfig
from leukviz.runstore import runs

LEAKAGE_SPLITS = ("image", "subject")


def leakage_configs(cfg_base: RunConfig) -> dict[str, RunConfig]:
    """The two runs of the leakage study: the same config, split by image (leaky) and by subject."""
    out = {}
    for split in LEAKAGE_SPLITS:
        cfg = dataclasses.replace(cfg_base, split=split)
        config.validate(cfg)
        out[split] = cfg
    return out


def leakage_runs(cfg_base: RunConfig, runs_dir: str | Path | None = None) -> dict[str, runs.Run]:
    """The study's two run folders, created but not trained: a page launches them (supervisor.launch) and
    shows leakage_summary as they finish."""
    return {split: runs.run_for(cfg, runs_dir) for split, cfg in leakage_configs(cfg_base).items()}


def leakage_summary(image_run: runs.Run, subject_run: runs.Run) -> dict:
    """Side by side scores of the two runs and the inflation (image minus subject); None where a run
    has not finished."""
    cfg = subject_run.config
    image, subject = run_scores(image_run), run_scores(subject_run)
    inflation = {k: (image[f"val_{k}"] - subject[f"val_{k}"]
                     if image[f"val_{k}"] is not None and subject[f"val_{k}"] is not None else None)
                 for k in ("acc", "f1")}
    return {"study": "leakage", "backbone": cfg.backbone, "data": cfg.data, "weights": cfg.weights,
            "image_size": cfg.image_size, "epochs": cfg.epochs, "preset": cfg.preset,
            "image": image, "subject": subject,
            "inflation": {"accuracy": inflation["acc"], "weighted_f1": inflation["f1"]},
            "note": "split=image puts cells of one person on both sides (leaky); split=subject holds whole "
                    "subjects out. The runs differ only in the split; inflation = image minus subject."}

def leakage(cfg_base: RunConfig, runs_dir: str | Path | None = None, log: Log = print,
            progress: Progress | None = None, device: str = "auto", envs: Sequence[dict] = ({},)) -> dict:
    """Train (or reuse) cfg_base with split=image and split=subject (both at once with two pool workers) and
    compare them."""
    image, subject = train_group(list(leakage_configs(cfg_base).values()), runs_dir, log=log, progress=progress,
                                 device=device, envs=envs)
    return leakage_summary(image, subject)
