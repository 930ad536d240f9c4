"""The score registry, as the backbone registry is for models: one ScoreSpec per score (its name, its words,
its scalar function, its form on confusion counts, its direction). score(), summary(), the resampled tables
of intervals and paired tests (bootstrap.py, paired.py), the pages' columns, the study and the CLI all read
it, so adding a score is one entry here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from leukviz.scoring import scores as s
from leukviz.scoring.reliability import expected_calibration_error


class Scored(NamedTuple):
    """One evaluation as every scalar score reads it: labels, probabilities, predictions (their argmax), the
    positive class's index and the calibration bins."""

    y: np.ndarray
    prob: np.ndarray
    pred: np.ndarray
    pos: int
    n_bins: int = 15


class Counts:
    """Summed confusion matrices of B resamples, (B, K, K) rows true and columns predicted, and what the scores'
    confusion-count forms share: total, diagonal, support (true counts), said (predicted counts)."""

    def __init__(self, c: np.ndarray, pos: int) -> None:
        self.c, self.pos, self.k = c, pos, c.shape[1]
        self.total = c.sum(axis=(1, 2))
        self.tp = np.diagonal(c, axis1=1, axis2=2)
        self.support, self.said = c.sum(axis=2), c.sum(axis=1)
        self.rest = np.arange(self.k) != pos


def _f1_counts(n: Counts) -> np.ndarray:
    both = n.support + n.said
    f1 = np.where(both > 0, 2 * n.tp / np.maximum(both, 1e-300), 0.0)
    return np.sum(n.support * f1, axis=1) / n.total


@dataclass(frozen=True)
class ScoreSpec:
    """Everything about one score. scalar: its value on one evaluation (NaN where undefined). counts: the same
    score from summed confusion counts, vectorised over resamples, or None; ranked: it is ROC AUC's weighted
    Mann-Whitney form instead. interval: resampled in comparisons (in SCORES; needs counts or ranked).
    side: "positive" / "negative" when the score is about one side of the positive class (its words name it).
    percent: shown as a percentage (else 3 decimals)."""

    name: str
    label: str  # in a sentence: "weighted F1"
    short: str  # a narrow column's header: "F1"
    help: str  # that header's help
    scalar: Callable[[Scored], float]
    counts: Callable[[Counts], np.ndarray] | None = None
    ranked: bool = False
    interval: bool = False
    higher_is_better: bool = True
    side: str = ""
    percent: bool = False
    note: str = ""  # said after its value by the CLI: "the C-NMC metric"


SPECS: tuple[ScoreSpec, ...] = (
    ScoreSpec("accuracy", "accuracy", "Acc.", "Accuracy", lambda e: s.accuracy(e.y, e.pred),
              counts=lambda n: n.tp.sum(axis=1) / n.total, interval=True, percent=True),
    ScoreSpec("weighted_f1", "weighted F1", "F1", "Weighted F1 (C-NMC's metric)",
              lambda e: s.weighted_f1(e.y, e.pred), counts=_f1_counts, interval=True, note="the C-NMC metric"),
    ScoreSpec("balanced_accuracy", "balanced accuracy", "Bal. acc.", "Balanced accuracy: mean recall of the classes",
              lambda e: s.balanced_accuracy(e.y, e.pred), percent=True),
    ScoreSpec("sensitivity", "sensitivity", "Sens.", "Sensitivity: recall of `all`",
              lambda e: s.sensitivity_specificity(e.y, e.pred, e.pos)[0],
              counts=lambda n: n.tp[:, n.pos] / n.support[:, n.pos], interval=True, side="positive", percent=True),
    ScoreSpec("specificity", "specificity", "Spec.", "Specificity: recall of `hem`",
              lambda e: s.sensitivity_specificity(e.y, e.pred, e.pos)[1],
              counts=lambda n: n.c[:, n.rest][:, :, n.rest].sum(axis=(1, 2)) / n.support[:, n.rest].sum(axis=1),
              interval=True, side="negative", percent=True),
    ScoreSpec("roc_auc", "ROC AUC", "AUC", "ROC AUC", lambda e: s.roc_auc(e.y, e.prob, e.pos), ranked=True,
              interval=True),
    ScoreSpec("ece", "ECE", "ECE", "Expected calibration error (lower is better)",
              lambda e: expected_calibration_error(e.y, e.prob, e.n_bins), higher_is_better=False),
)
REGISTRY: dict[str, ScoreSpec] = {spec.name: spec for spec in SPECS}
# The scores of intervals and paired tests: those with a resampled form.
SCORES: tuple[str, ...] = tuple(spec.name for spec in SPECS if spec.interval)
SCORE_LABELS: dict[str, str] = {spec.name: spec.label for spec in SPECS}


def get(name: str) -> ScoreSpec:
    """The spec of a score; a ValueError naming the valid ones for an unknown name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown score {name!r}: choose from {tuple(REGISTRY)}") from None


def text(name: str, classes: Sequence[str] = ("hem", "all")) -> str:
    """A score in words, with the class it is about when it is about one side: 'sensitivity (all)'."""
    spec = get(name)
    if not spec.side:
        return spec.label
    pos = s.positive_index(classes)
    side = classes[pos] if spec.side == "positive" else "/".join(c for i, c in enumerate(classes) if i != pos)
    return f"{spec.label} ({side})"


def column(name: str, classes: Sequence[str] = ("hem", "all")) -> str:
    """A score as a table's column header: 'Sensitivity (all)'."""
    words = text(name, classes)
    return words[0].upper() + words[1:]


def number_format(name: str) -> str:
    """How a table shows the score's values: "percent" or "%.3f" (a Streamlit NumberColumn's format)."""
    return "percent" if get(name).percent else "%.3f"


def evaluation(y: Any, prob: Any, classes: Sequence[str], n_bins: int = 15) -> Scored:
    """(y, prob) checked, with its predictions (argmax) and positive class, as the scalar scores read it."""
    y, p = s._probs(y, prob)
    return Scored(y, p, p.argmax(axis=1), s.positive_index(classes), n_bins)


def score(name: str, y: Any, prob: Any, classes: Sequence[str]) -> float:
    """One registered score on (y, prob), predictions = argmax of prob; sensitivity is the recall of the
    positive class (`all`, see positive_index), specificity the recall of the others. NaN where undefined."""
    spec = REGISTRY.get(name) if name in SCORES else None
    if spec is None:
        raise ValueError(f"unknown score {name!r}: choose from {SCORES}")
    return spec.scalar(evaluation(y, prob, classes))


def check_scores(names: Sequence[str]) -> tuple[str, ...]:
    """names as a tuple, each one of SCORES (a ValueError naming them otherwise)."""
    unknown = [n for n in names if n not in SCORES]
    if unknown or not names:
        raise ValueError(f"unknown scores {unknown}: choose from {SCORES}")
    return tuple(names)


def summary(y: Any, prob: Any, classes: Sequence[str], subjects: Any = None,
            n_bins: int = 15) -> dict[str, Any]:
    """Every registered score of one evaluation in a JSON-serialisable dict (NaN written as None).

    Keys: n, classes, positive_class, one per registered score (accuracy, weighted_f1, balanced_accuracy,
    sensitivity, specificity, roc_auc, ece), confusion (list of lists); with subjects also per_subject (list
    of dicts) and subject_vote (dict). Predictions are the argmax of prob.
    """
    classes = list(classes)
    e = evaluation(y, prob, classes, n_bins)
    if e.prob.shape[1] != len(classes):
        raise ValueError(f"prob has {e.prob.shape[1]} columns but {len(classes)} classes were given: {classes}")
    out: dict[str, Any] = {"n": len(e.y), "classes": classes, "positive_class": classes[e.pos]}
    out.update({spec.name: spec.scalar(e) for spec in SPECS})
    out["confusion"] = s.confusion(e.y, e.pred, len(classes))
    if subjects is not None:
        out["per_subject"] = s.per_subject(e.y, e.pred, subjects)
        out["subject_vote"] = s.subject_vote(e.y, e.prob, subjects)
    return s.nan_to_none(out)


def scores_text(res: dict, fmt: Callable[[Any], str]) -> str:
    """Every registered score of a summary in one line, as the CLI prints it: 'accuracy 0.91, weighted F1 0.90
    (the C-NMC metric), ...'."""
    return ", ".join(f"{spec.label} {fmt(res.get(spec.name))}" + (f" ({spec.note})" if spec.note else "")
                     for spec in SPECS)
