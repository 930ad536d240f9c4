"""Classification metrics for leukviz, one import for the callers: every public name of the scoring modules,
re-exported. Each concept lives in its own module: the scalar scores (scores.py), the score registry
(registry.py: which scores exist, their words and direction), calibration-like scores (reliability.py), subject
bootstrap intervals (bootstrap.py), paired tests (paired.py) and the words of a verdict (wording.py)."""

from __future__ import annotations

from leukviz.scoring.bootstrap import _interval, _known_subjects, _Tables, _Units, subject_bootstrap
from leukviz.scoring.paired import MCNEMAR_TEST, PERMUTATION_TEST, paired_comparison
from leukviz.scoring.registry import REGISTRY, SCORE_LABELS, SCORES, ScoreSpec, check_scores, score, summary
from leukviz.scoring.reliability import brier_score, expected_calibration_error, reliability_bins
from leukviz.scoring.scores import (
    POSITIVE_CLASS,
    _probs,
    accuracy,
    balanced_accuracy,
    confusion,
    mean_sd,
    nan_to_none,
    per_subject,
    positive_index,
    roc_auc,
    roc_curve_points,
    seed_spread,
    sensitivity_specificity,
    subject_vote,
    weighted_f1,
)
from leukviz.scoring.wording import CLEAR, UNCLEAR, WEAK, WEAK_P, p_text, signed, verdict, verdict_kind

_check_scores = check_scores

__all__ = ["CLEAR", "MCNEMAR_TEST", "PERMUTATION_TEST", "POSITIVE_CLASS", "REGISTRY", "SCORES", "SCORE_LABELS",
           "UNCLEAR", "WEAK", "WEAK_P", "ScoreSpec", "_Tables", "_Units", "_interval", "_known_subjects", "_probs",
           "accuracy", "balanced_accuracy", "brier_score", "check_scores", "confusion",
           "expected_calibration_error", "mean_sd", "nan_to_none", "p_text", "paired_comparison", "per_subject",
           "positive_index", "reliability_bins", "roc_auc", "roc_curve_points", "score", "seed_spread",
           "sensitivity_specificity", "signed", "subject_bootstrap", "subject_vote", "summary", "verdict",
           "verdict_kind", "weighted_f1"]
