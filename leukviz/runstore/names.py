"""How runs, datasets, splits, settings and durations are named: one wording for every page, the CLI and the
report ('GoogLeNet · 1a2b3c', 'built-in demo', 'by subject (20 % validation, seed 0)', '2 min 05 s')."""

from __future__ import annotations

import math
from pathlib import Path

from leukviz.datasets import data
from leukviz.models import backbones
from leukviz.models.config import RunConfig
from leukviz.runstore import runs

# The split words, one place for each method (config.SPLITS): in a sentence, and as a choice on the Data page
# (in the order data.SPLIT_METHODS offers them).
SPLIT_TEXT = {"subject": "by subject", "groups": "subject-grouped folds", "folds": "official folds",
              "image": "by image (leaky)", "given": "the dataset's own validation folder"}
SPLIT_CHOICE = {"given": "Given: the dataset's own validation folder", "subject": "By subject (recommended)",
                "groups": "Subject-grouped folds", "folds": "Official folds", "image": "By image (leaky)"}
FINETUNE_TEXT = {"full": "the whole network", "last": "last stage + head", "head": "head only",
                 "staged": "head first, then all (lower rates early)"}


def dataset_label(spec: str) -> str:
    """Short name of a dataset spec: 'demo' or the last parts of its path."""
    if spec == "demo":
        return "built-in demo"
    uploaded = data.upload_name(spec)
    if uploaded:
        return f"{uploaded} (uploaded)"
    p = Path(spec)
    return str(Path(*p.parts[-2:])) if len(p.parts) > 2 else str(p)


def format_duration(seconds: float | None, short: bool = False) -> str:
    """'2 min 05 s'; short (for a metric's narrow column): '125 s', '12.5 min', '3.2 h'."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if short:
        return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def backbone_title(name: str) -> str:
    try:
        return backbones.get_spec(name).title
    except ValueError:
        return name


def model_name(backbone: str, run_id: str) -> str:
    """A trained model as every page, the CLI and the report name it: 'GoogLeNet · 1a2b3c'."""
    return f"{backbone_title(backbone)} · {run_id[:6]}"


def run_name(run: runs.Run) -> str:
    """A run's model_name."""
    return model_name(run.config.backbone, run.run_id)


def describe_config(cfg: RunConfig) -> str:
    epochs = f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"
    return (f"{backbone_title(cfg.backbone)}, {cfg.preset} preset, weights {cfg.weights}, "
            f"{cfg.image_size} px, {epochs}, batch {cfg.batch_size}, "
            f"lr {cfg.lr:g}, fine-tune {FINETUNE_TEXT.get(cfg.finetune, cfg.finetune)}"
            + (f" ({cfg.head_epochs} head-only epoch{'s' if cfg.head_epochs != 1 else ''})"
               if cfg.finetune == "staged" else "") + ", "
            f"split {SPLIT_TEXT.get(cfg.split, cfg.split)}"
            + (f", early stopping after {cfg.patience} epochs without a better F1" if cfg.patience else ""))


def split_text(cfg: RunConfig, sp: data.Split | dict | None = None) -> str:
    """The split in words; with the split made (sp, or its summary as a run's sidecar keeps it), the
    validation share it really holds (a subject split takes whole people, so it lands near val_fraction, not
    on it)."""
    if cfg.split == "folds":
        return f"official folds (fold {cfg.val_fold} for validation)"
    if cfg.split == "groups":
        return f"subject-grouped folds (fold {cfg.val_fold} for validation)"
    if cfg.split == "given":
        return "the dataset's own validation folder"
    share = f"{cfg.val_fraction:.0%} validation"
    counts = (len(sp.train), len(sp.val)) if isinstance(sp, data.Split) else \
        (sp.get("n_train"), sp.get("n_val")) if isinstance(sp, dict) else (None, None)
    if all(isinstance(c, int) for c in counts):
        n = counts[0] + counts[1]
        share = f"{counts[1]} of {n} images, {counts[1] / max(1, n):.0%}, for validation"
    if cfg.split == "image":
        return f"by image, LEAKY ({share}, seed {cfg.split_rng_seed})"
    return f"by subject ({share}, seed {cfg.split_rng_seed})"

