"""How runs, datasets, splits, settings and durations are named: one wording for every page, the CLI and the
report ('GoogLeNet · 1a2b3c', 'built-in demo', 'by subject (20 % validation, seed 0)', '2 min 05 s')."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from leukviz.core.durations import format_duration  # noqa: F401 - re-exported: names.format_duration
from leukviz.datasets import data
from leukviz.models import backbones
from leukviz.models.config import RunConfig
from leukviz.runstore.runfolder import Run

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


def backbone_title(name: str) -> str:
    try:
        return backbones.get_spec(name).title
    except ValueError:
        return name


def model_name(backbone: str, run_id: str) -> str:
    """A trained model as every page, the CLI and the report name it: 'GoogLeNet · 1a2b3c'."""
    return f"{backbone_title(backbone)} · {run_id[:6]}"


def run_name(run: Run) -> str:
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


# ---------------------------------------------------------------------------------------------- settings in words

def _epochs(n: Any) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


# How one setting reads where configurations of one backbone are told apart (Compare's labels, the report):
# "32 px, 1 epoch", not "image_size 32, epochs 1". A setting not named here reads "name value".
SETTING_WORDS: dict[str, Callable[[Any], str]] = {
    "image_size": lambda v: f"{v} px",
    "epochs": _epochs,
    "lr": lambda v: f"lr {v:g}" if isinstance(v, (int, float)) else f"lr {v}",
    "batch_size": lambda v: f"batch {v}",
    "weights": lambda v: {"imagenet": "ImageNet weights", "none": "from scratch"}.get(str(v), f"weights {Path(str(v)).name}"),
    "finetune": lambda v: {"full": "whole network trained", "last": "last stage + head trained",
                           "head": "head only trained", "staged": "staged fine-tuning"}.get(v, f"fine-tune {v}"),
    "split": lambda v: SPLIT_TEXT.get(v, str(v)),
    "preset": lambda v: f"{v} preset",
    "optimizer": lambda v: {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}.get(v, str(v)),
    "scheduler": lambda v: "cosine schedule" if v == "cosine" else "constant rate" if v == "none" else f"schedule {v}",
    "augment": lambda v: "no augmentation" if v == "none" else f"{v} augmentation",
    "weight_decay": lambda v: f"weight decay {v:g}" if isinstance(v, (int, float)) else f"weight decay {v}",
    "val_fraction": lambda v: f"{v:.0%} validation" if isinstance(v, (int, float)) else f"validation {v}",
    "crop": lambda v: "cropped to the cell" if v else "whole frame",
    "class_balance": lambda v: "weighted loss" if v == "weighted_loss" else "unweighted loss",
    "freeze_bn": lambda v: "BatchNorm frozen" if v else "BatchNorm trained",
    "average": lambda v: "weight average (EMA)" if v == "ema" else "no weight average",
    "select": lambda v: "best epoch kept" if v == "best" else "last epoch kept",
    "bn_stats": lambda v: "BatchNorm statistics recomputed" if v == "recomputed" else "running BatchNorm statistics",
    "precision": lambda v: f"precision {v}",
    "patience": lambda v: f"early stop after {v}" if v else "no early stop",
    "head_epochs": lambda v: f"{_epochs(v)} head only",
    "n_folds": lambda v: f"{v} folds" if v else "automatic folds",
    "val_fold": lambda v: f"fold {v}",
    "momentum": lambda v: f"momentum {v:g}" if isinstance(v, (int, float)) else f"momentum {v}",
}


def setting_text(name: str, value: Any) -> str:
    """One setting in words ('32 px', '1 epoch', 'lr 0.0003', 'from scratch')."""
    words = SETTING_WORDS.get(name)
    try:
        return words(value) if words else f"{name.replace('_', ' ')} {value}"
    except (TypeError, ValueError):
        return f"{name.replace('_', ' ')} {value}"


# ---------------------------------------------------------------------------------------------- verdicts

# One vocabulary for what a paired difference supports (metrics.verdict_kind's kinds: "clear", "weak",
# "unclear"), the same in Compare's answer, its matrix, the words list (metrics.verdict) and the report.
VERDICT_MARK = {"clear": "\u2713", "weak": "~", "unclear": "="}
VERDICT_WORDS = {"clear": "better", "weak": "weak evidence", "unclear": "no clear difference"}


def verdict_legend() -> str:
    """The matrix's key: '✓ better (the sign says which), ~ weak evidence, = no clear difference'."""
    return (f"{VERDICT_MARK['clear']} {VERDICT_WORDS['clear']} (the sign says which), "
            f"{VERDICT_MARK['weak']} {VERDICT_WORDS['weak']}, {VERDICT_MARK['unclear']} {VERDICT_WORDS['unclear']}")


def lead_text(kind: str, other: str) -> str:
    """The answer's clause about the best model against another, in VERDICT_WORDS (as metrics.verdict words
    the pair: 'X is better', 'weak evidence that X is better', 'no clear difference')."""
    return {"clear": f"it is {VERDICT_WORDS['clear']} than {other}",
            "weak": f"{VERDICT_WORDS['weak']} that it is better than {other}",
            "unclear": f"{VERDICT_WORDS['unclear']} from {other}"}[kind]


def smallest_p(n_subjects: int) -> float:
    """The smallest two-sided p a paired permutation over n subjects can give: 2 / 2**n (1 with one)."""
    return 1.0 if n_subjects < 2 else min(1.0, 2 / 2 ** n_subjects)


def few_subjects_text(n_subjects: int, where: str = "validation") -> str:
    """What a paired test over few subjects can say, and what would help; empty when it can reach p < 0.05."""
    p = smallest_p(n_subjects)
    if p < 0.05:
        return ""
    return (f"with {n_subjects} {where} subject{'s' if n_subjects != 1 else ''}, a paired permutation test cannot "
            f"give p below {p:.3g}, so no difference here can be significant whatever its size; more subjects "
            "would help: a dataset with more people, or subject-grouped folds (every subject validated once)")


def zero_width_text(one_subject: Sequence[str]) -> str:
    """Why an interval has no width: a class with one validation subject, whom every resample draws."""
    if one_subject:
        return (f"the interval has no width because {' and '.join(one_subject)} "
                f"{'has' if len(one_subject) == 1 else 'have'} one validation subject, drawn in every resample, so "
                "the bootstrap has nothing to vary; it says nothing about other people")
    return ("the interval has no width: every resample gives the same value (too few subjects to vary); "
            "it says nothing about other people")


# ---------------------------------------------------------------------------------------------- subjects

def subject_sort_key(subject: Any) -> tuple:
    """Subject ids in the order people read them: numbers as numbers (2, 16, 23, not 16, 2, 23), 'h3'
    before 'h12', then text."""
    parts = re.split(r"(\d+)", str(subject))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p != "")


def sorted_subjects(subjects: Iterable[Any]) -> list:
    return sorted(set(subjects), key=subject_sort_key)
