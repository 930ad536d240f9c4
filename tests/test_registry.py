"""The score registry: every registered score is consistent with itself (scalar and resampled forms), and the
tables, words and keys the rest of leukviz shows are derived from it, so adding a score is one entry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from leukviz.scoring import metrics, registry

CLASSES = ["hem", "all"]


def _evaluation(seed: int = 0, n: int = 120):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logits = rng.normal(size=(n, 2)) + np.eye(2)[y] * 0.8
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, np.round(prob, 2), rng.integers(0, 10, n)


@pytest.mark.parametrize("spec", registry.SPECS, ids=lambda s: s.name)
def test_every_score_is_complete_and_its_resampled_form_equals_its_scalar(spec: registry.ScoreSpec) -> None:
    y, prob, unit = _evaluation()
    assert spec.label and spec.short and spec.help and spec.name in registry.SCORE_LABELS
    value = spec.scalar(registry.evaluation(y, prob, CLASSES))
    assert np.isfinite(value)
    assert metrics.summary(y, prob, CLASSES)[spec.name] == pytest.approx(value)
    if not spec.interval:
        assert spec.name not in registry.SCORES
        return
    assert spec.counts is not None or spec.ranked, "a resampled score needs its counts or rank form"
    tables = metrics._Tables(y, prob, unit, 10, pos=1)
    assert tables.scores(np.ones((1, 10)), [spec.name])[spec.name][0] == pytest.approx(value)
    assert metrics.score(spec.name, y, prob, CLASSES) == pytest.approx(value)


def test_a_new_registered_score_reaches_summary_intervals_and_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """What "adding a score touches one place" means: a spec added to the registry alone is in the summary,
    the resampled intervals, the verdict's words and the CLI's line."""
    error = registry.ScoreSpec("error_rate", "error rate", "Err.", "Fraction wrong",
                               lambda e: float(np.mean(e.pred != e.y)),
                               counts=lambda n: 1 - n.tp.sum(axis=1) / n.total, interval=True,
                               higher_is_better=False, percent=True)
    specs = (*registry.SPECS, error)
    monkeypatch.setattr(registry, "SPECS", specs)
    monkeypatch.setattr(registry, "REGISTRY", {s.name: s for s in specs})
    monkeypatch.setattr(registry, "SCORES", (*registry.SCORES, "error_rate"))
    y, prob, unit = _evaluation(1)
    res = metrics.summary(y, prob, CLASSES)
    assert res["error_rate"] == pytest.approx(1 - res["accuracy"])
    boot = metrics.subject_bootstrap(y, prob, CLASSES, unit.astype(str), scores=("error_rate",), n_resamples=200)
    entry = boot["scores"]["error_rate"]
    assert entry["low"] <= entry["value"] <= entry["high"]
    assert "error rate" in registry.scores_text(res, lambda v: f"{v:.3f}")
    # lower is better: a negative difference whose interval excludes 0 makes the first model the better one
    result = {"confidence": 0.95, "scores": {"error_rate": {"difference": -0.1, "low": -0.2, "high": -0.05,
                                                            "p_value": 0.001}}}
    assert metrics.verdict("A", "B", "error_rate", result).endswith("A is better")
    assert metrics.verdict("A", "B", "accuracy", {**result, "scores": {"accuracy": result["scores"]["error_rate"]}}
                           ).endswith("B is better")


def test_words_name_the_side_of_the_positive_class() -> None:
    assert registry.text("sensitivity") == "sensitivity (all)"
    assert registry.text("specificity") == "specificity (hem)"
    assert registry.column("roc_auc") == "ROC AUC"
    assert registry.text("sensitivity", ["all", "hem"]) == "sensitivity (all)"
    assert registry.number_format("accuracy") == "percent" and registry.number_format("roc_auc") == "%.3f"
    with pytest.raises(ValueError, match="choose from"):
        registry.get("f2")


def test_what_other_layers_show_derives_from_the_registry() -> None:
    from leukviz.comparison import answers, subjectscores
    from leukviz.serving import inference

    assert set(answers.SCORE_TEXT) == set(registry.SCORES)
    assert set(inference.TTA_KEYS) >= set(registry.REGISTRY)
    assert set(subjectscores.STUDY_SCORES.values()) <= set(registry.SCORES)
    assert all(dataclasses.is_dataclass(s) for s in registry.SPECS)
