"""Tests for leukviz.metrics: hand-computed values on fixed small arrays, edge cases, JSON output."""

import itertools
import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn import metrics as skm

from leukviz.scoring import metrics as m

# Unbalanced binary case, worked by hand: cm = [[4, 0], [1, 1]].
Y = np.array([0, 0, 0, 0, 1, 1])
PRED = np.array([0, 0, 0, 0, 0, 1])


def test_positive_index() -> None:
    assert m.positive_index(("hem", "all")) == 1
    assert m.positive_index(["all", "hem"]) == 0
    assert m.positive_index(["cat", "dog", "eel"]) == 2
    with pytest.raises(ValueError, match="empty"):
        m.positive_index([])


def test_binary_metrics_by_hand() -> None:
    assert m.accuracy(Y, PRED) == pytest.approx(5 / 6)
    # class 0: P = 4/5, R = 1, F1 = 8/9; class 1: P = 1, R = 1/2, F1 = 2/3; supports 4 and 2.
    assert m.weighted_f1(Y, PRED) == pytest.approx((4 * 8 / 9 + 2 * 2 / 3) / 6)
    assert m.weighted_f1(Y, PRED) != pytest.approx(skm.f1_score(Y, PRED, average="macro"))
    assert m.balanced_accuracy(Y, PRED) == pytest.approx((1 + 0.5) / 2)
    assert m.sensitivity_specificity(Y, PRED, pos=1) == pytest.approx((0.5, 1.0))
    assert m.sensitivity_specificity(Y, PRED, pos=0) == pytest.approx((1.0, 0.5))
    np.testing.assert_array_equal(m.confusion(Y, PRED, 2), [[4, 0], [1, 1]])


def test_weighted_f1_matches_sklearn_on_multiclass() -> None:
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    assert m.weighted_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m.balanced_accuracy(y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_confusion_is_always_square_and_rows_are_true() -> None:
    cm = m.confusion([0, 1, 2, 2, 1], [0, 2, 2, 1, 1], n_classes=4)
    np.testing.assert_array_equal(cm, [[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    # One true 0 predicted as 1: row 0 (true), column 1 (predicted).
    np.testing.assert_array_equal(m.confusion([0], [1], 2), [[0, 1], [0, 0]])


def test_multiclass_sensitivity_specificity_pools_the_rest() -> None:
    sens, spec = m.sensitivity_specificity([0, 1, 2, 2, 1], [0, 2, 2, 1, 1], pos=2)
    assert (sens, spec) == pytest.approx((1 / 2, 2 / 3))


def test_roc_auc_and_curve_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    prob = np.column_stack([1 - np.array([0.1, 0.4, 0.35, 0.8]), [0.1, 0.4, 0.35, 0.8]])
    # Positive scores 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ranked right.
    assert m.roc_auc(y, prob, pos=1) == pytest.approx(0.75)
    assert m.roc_auc(y, prob, pos=0) == pytest.approx(0.75)
    fpr, tpr = m.roc_curve_points(y, prob, pos=1)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
    # A tie between the only positive and the only negative is worth half a pair.
    assert m.roc_auc([0, 1], [[0.5, 0.5], [0.5, 0.5]], pos=1) == pytest.approx(0.5)


def test_roc_auc_one_vs_rest_on_three_classes() -> None:
    y = np.array([0, 1, 2, 2])
    prob = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    # Class 2 scores: positives 0.7, 0.4; negatives 0.1, 0.3 -> all 4 pairs right.
    assert m.roc_auc(y, prob, pos=2) == pytest.approx(1.0)


def test_single_class_gives_nan_auc_not_an_exception() -> None:
    y = np.array([1, 1, 1])
    prob = np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert math.isnan(m.roc_auc(y, prob, pos=1))
    fpr, tpr = m.roc_curve_points(y, prob, pos=1)
    assert fpr.size == 0 and tpr.size == 0
    sens, spec = m.sensitivity_specificity(y, prob.argmax(1), pos=1)
    assert sens == pytest.approx(2 / 3) and math.isnan(spec)


def test_ece_by_hand() -> None:
    y = np.array([0, 1, 1, 0])
    prob = np.array([[0.9, 0.1], [0.25, 0.75], [0.7, 0.3], [0.45, 0.55]])
    # Top confidences 0.9 (right), 0.75 (right), 0.7 (wrong), 0.55 (wrong); 5 bins of width 0.2:
    # (0.8, 1]: 1 image, |1 - 0.9| = 0.1; (0.6, 0.8]: 2 images, |0.5 - 0.725| = 0.225;
    # (0.4, 0.6]: 1 image, |0 - 0.55| = 0.55.  ECE = (0.1 + 2 * 0.225 + 0.55) / 4.
    assert m.expected_calibration_error(y, prob, n_bins=5) == pytest.approx(0.275)
    # One bin: |mean accuracy - mean confidence| = |0.5 - 0.725|.
    assert m.expected_calibration_error(y, prob, n_bins=1) == pytest.approx(0.225)
    certain = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert m.expected_calibration_error([0, 1], certain) == pytest.approx(0.0)
    assert m.expected_calibration_error([1, 0], certain) == pytest.approx(1.0)


def test_reliability_bins_table() -> None:
    y = np.array([0, 1, 1, 0])
    prob = np.array([[0.9, 0.1], [0.25, 0.75], [0.7, 0.3], [0.45, 0.55]])
    bins = m.reliability_bins(y, prob, n_bins=5)
    assert list(bins.columns) == ["bin_lower", "bin_upper", "confidence", "accuracy", "count"]
    assert len(bins) == 5 and bins["count"].tolist() == [0, 0, 1, 2, 1]
    row = bins.iloc[3]
    assert (row.bin_lower, row.bin_upper) == pytest.approx((0.6, 0.8))
    assert (row.confidence, row.accuracy) == pytest.approx((0.725, 0.5))
    assert bins.iloc[0][["confidence", "accuracy"]].isna().all()


def test_bin_edges_are_lower_open_upper_closed() -> None:
    bins = m.reliability_bins([0, 0], [[0.5, 0.5], [1.0, 0.0]], n_bins=2)
    assert bins["count"].tolist() == [1, 1]


def test_per_subject_values_and_order() -> None:
    y = [0, 0, 0, 1, 1, 1, 1]
    pred = [0, 1, 0, 1, 1, 0, 0]
    subjects = ["h3", "h3", "h3", "11", "11", "7", "7"]
    df = m.per_subject(y, pred, subjects)
    assert list(df.columns) == ["subject", "label", "n", "accuracy"]
    assert df["subject"].tolist() == ["7", "h3", "11"]
    assert df["label"].tolist() == [1, 0, 1]
    assert df["n"].tolist() == [2, 3, 2]
    assert df["accuracy"].tolist() == pytest.approx([0.0, 2 / 3, 1.0])


def test_per_subject_ties_sorted_by_subject_and_ids_kept_as_strings() -> None:
    df = m.per_subject([0, 0, 1], [0, 0, 1], [12, 3, "H10"])
    assert df["subject"].tolist() == ["12", "3", "H10"]
    assert (df["accuracy"] == 1.0).all()


def test_subject_vote_differs_from_cell_accuracy() -> None:
    y = np.array([1, 1, 1, 0, 0, 0])
    p_all = np.array([0.9, 0.9, 0.3, 0.6, 0.6, 0.0])
    prob = np.column_stack([1 - p_all, p_all])
    subjects = ["A", "A", "A", "B", "B", "B"]
    # Cells: A gets 2 of 3 right, B 1 of 3 -> 0.5. Means: A 0.7 -> all (right), B 0.4 -> hem (right).
    assert m.accuracy(y, prob.argmax(1)) == pytest.approx(0.5)
    vote = m.subject_vote(y, prob, subjects)
    assert vote == {"subject_accuracy": 1.0, "subject_weighted_f1": 1.0, "n_subjects": 2}
    # Subject A's mean drops below 0.5: the vote is now wrong on A only.
    prob2 = np.column_stack([1 - p_all * 0.6, p_all * 0.6])
    vote2 = m.subject_vote(y, prob2, subjects)
    assert vote2["subject_accuracy"] == pytest.approx(0.5)


def test_summary_is_json_and_complete() -> None:
    y = np.array([0, 0, 1, 1])
    prob = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    out = m.summary(y, prob, ("hem", "all"), subjects=["a", "a", "b", "c"])
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    for key in ("accuracy", "weighted_f1", "balanced_accuracy", "sensitivity", "specificity", "roc_auc",
                "ece", "confusion", "n", "per_subject", "subject_vote"):
        assert key in out
    assert out["n"] == 4 and isinstance(out["n"], int)
    assert out["positive_class"] == "all"
    assert out["confusion"] == [[1, 1], [1, 1]]
    assert out["accuracy"] == pytest.approx(0.5) and out["roc_auc"] == pytest.approx(0.75)
    assert out["ece"] == pytest.approx(m.expected_calibration_error(y, prob))
    assert out["per_subject"][0] == {"subject": "c", "label": 1, "n": 1, "accuracy": 0.0}
    assert out["subject_vote"]["n_subjects"] == 3
    assert all(type(v) is float for k, v in out.items() if k in ("accuracy", "weighted_f1", "ece"))


def test_summary_single_class_uses_none_for_nan() -> None:
    out = m.summary([1, 1], [[0.2, 0.8], [0.6, 0.4]], ("hem", "all"))
    assert out["roc_auc"] is None and out["specificity"] is None
    assert out["accuracy"] == pytest.approx(0.5) and out["sensitivity"] == pytest.approx(0.5)
    assert out["confusion"] == [[0, 0], [1, 1]]
    json.dumps(out, allow_nan=False)


def test_empty_input_raises_value_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        m.summary(np.array([], dtype=int), np.zeros((0, 2)), ("hem", "all"))
    with pytest.raises(ValueError, match="empty"):
        m.accuracy([], [])
    with pytest.raises(ValueError, match="empty"):
        m.expected_calibration_error([], np.zeros((0, 2)))


def test_bad_shapes_and_labels_raise_value_error() -> None:
    with pytest.raises(ValueError, match="labels"):
        m.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="3 classes"):
        m.summary([0, 1], [[0.5, 0.5], [0.5, 0.5]], ("a", "b", "c"))
    with pytest.raises(ValueError, match="-1"):
        m.summary([0, -1], [[0.5, 0.5], [0.5, 0.5]], ("hem", "all"))
    with pytest.raises(ValueError, match="subjects"):
        m.per_subject([0, 1], [0, 1], ["a"])


def test_nan_to_none() -> None:
    obj = {"a": float("nan"), "b": np.float32(0.5), "c": np.array([1, 2]), "d": (np.int64(3), None),
           "e": [np.inf, np.bool_(True)]}
    assert m.nan_to_none(obj) == {"a": None, "b": 0.5, "c": [1, 2], "d": [3, None], "e": [None, True]}
    json.dumps(m.nan_to_none(obj), allow_nan=False)


# --- Honest comparisons: subject bootstrap, paired tests, verdicts ---------------------------------

CLASSES = ["hem", "all"]  # positive class `all` is column 1


def _cells(sizes: list[int], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(y, subjects) for subjects s0, s1, ... with the given cell counts and classes."""
    y = np.repeat(labels, sizes)
    subjects = np.repeat([f"s{i}" for i in range(len(sizes))], sizes)
    return y, subjects


def _confident(y: np.ndarray, right: np.ndarray, p: float = 0.9) -> np.ndarray:
    """Two-column probabilities that put p on the true class where right, on the other where not."""
    said = np.where(right, y, 1 - y)
    prob = np.full((len(y), 2), 1 - p)
    prob[np.arange(len(y)), said] = p
    return prob


def _random_probs(n: int, k: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(k), size=n)


def test_brier_score_by_hand_and_twice_sklearn_binary() -> None:
    y = np.array([0, 1, 1])
    prob = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # right, right, certain and wrong
    assert m.brier_score(y, prob) == pytest.approx(2 / 3)
    prob = _random_probs(50, seed=3)
    y = np.random.default_rng(4).integers(0, 2, 50)
    assert m.brier_score(y, prob) == pytest.approx(2 * skm.brier_score_loss(y, prob[:, 1]))
    assert m.brier_score([0, 1, 2], np.eye(3)) == 0.0


def test_score_uses_the_positive_class_whatever_its_column() -> None:
    y = np.array([0, 0, 0, 1, 1])  # classes ("all", "hem"): `all` is column 0
    prob = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    classes = ["all", "hem"]
    assert m.score("sensitivity", y, prob, classes) == pytest.approx(2 / 3)
    assert m.score("specificity", y, prob, classes) == pytest.approx(1 / 2)
    assert m.score("roc_auc", y, prob, classes) == pytest.approx(m.roc_auc(y, prob, 0))
    with pytest.raises(ValueError, match="unknown score"):
        m.score("f2", y, prob, classes)


def test_vectorised_scores_equal_the_plain_functions_with_weights() -> None:
    rng = np.random.default_rng(1)
    for k in (2, 3):
        n = 300
        y = rng.integers(0, k, n)
        prob = np.round(_random_probs(n, k, seed=k), 1)  # rounded: many tied scores
        unit = rng.integers(0, 12, n)
        tables = m._Tables(y, prob, unit, 12, pos=1)
        w = rng.integers(0, 4, (5, 12)).astype(float)
        got = tables.scores(w, m.SCORES)
        pred = prob.argmax(axis=1)
        for b in range(len(w)):
            sw = w[b, unit]
            assert got["accuracy"][b] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=sw))
            assert got["weighted_f1"][b] == pytest.approx(
                skm.f1_score(y, pred, average="weighted", sample_weight=sw, zero_division=0))
            assert got["sensitivity"][b] == pytest.approx(
                skm.recall_score(y == 1, pred == 1, sample_weight=sw))
            assert got["specificity"][b] == pytest.approx(
                skm.recall_score(y != 1, pred != 1, sample_weight=sw))
            assert got["roc_auc"][b] == pytest.approx(skm.roc_auc_score(y == 1, prob[:, 1], sample_weight=sw))
        ones = tables.scores(np.ones((1, 12)), m.SCORES)
        for name in m.SCORES:
            assert ones[name][0] == pytest.approx(m.score(name, y, prob, ["a", "all", "c"][:k]))


def test_weighted_auc_of_many_units_equals_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    for small, digits in itertools.product((0, 10_000), (2, 12)):
        # cumulative-sum path (cell resampling) and quadratic-form path; with and without ties
        monkeypatch.setattr(m._Tables, "SMALL", small)
        prob = np.round(_random_probs(400, seed=5), digits)
        tables = m._Tables(y, prob, np.arange(400), 400, pos=1)
        assert (tables.pairs is None) == (small == 0) and tables.ties == (digits == 2)
        w = rng.integers(0, 3, (3, 400)).astype(float)
        for b, auc in enumerate(tables.auc(w)):
            assert auc == pytest.approx(skm.roc_auc_score(y, prob[:, 1], sample_weight=w[b]))


def test_identical_models_differ_by_nothing() -> None:
    y, subjects = _cells([30, 40, 50, 20, 35, 45], [0, 0, 0, 1, 1, 1])
    prob = _random_probs(len(y), seed=7)
    for subj, test in ((subjects, m.PERMUTATION_TEST), (None, m.MCNEMAR_TEST)):
        res = m.paired_comparison(y, prob, prob.copy(), CLASSES, subj, scores=m.SCORES, n_resamples=500)
        assert res["test"] == test
        for name, entry in res["scores"].items():
            assert entry["difference"] == 0, name
            assert entry["low"] <= 0 <= entry["high"], name
            assert entry["p_value"] >= 0.99, name
        assert "no clear difference" in m.verdict("A", "B", "accuracy", res)


def test_one_subject_wrong_gives_its_share_and_the_exact_permutation_p() -> None:
    sizes = [10, 20, 30, 15, 25, 40]
    y, subjects = _cells(sizes, [0, 0, 0, 1, 1, 1])
    a = _confident(y, np.ones(len(y), bool))
    b = _confident(y, subjects != "s1")  # wrong on every cell of s1 (20 hem cells)
    res = m.paired_comparison(y, a, b, CLASSES, subjects, scores=("accuracy",), n_resamples=2000)
    acc = res["scores"]["accuracy"]
    assert res["unit"] == "subjects" and res["n_units"] == 6
    assert acc["difference"] == pytest.approx(20 / 140)
    # A resample draws s1 0..3 times among the 3 hem draws: the most it can weigh is 3 x 20 cells
    # against the 3 smallest `all` draws (3 x 15).
    assert 0 <= acc["low"] <= acc["difference"] <= acc["high"] <= 60 / 105
    # Exact: 2^6 = 64 swaps; those that swap s1 (half) give -20/140, the rest +20/140, so
    # P(stat >= observed) = 1/2, P(stat <= observed) = 1 and the two-sided p = min(1, 2 * 1/2) = 1.
    assert acc["p_value"] == pytest.approx(1.0)
    assert any("exact" in n for n in res["notes"])
    # b wrong on every cell of all 6 subjects: only "swap nothing" reaches +1 and only "swap all"
    # -1, so the two-sided p is 2 / 2^6 = 1/2^5.
    res = m.paired_comparison(y, a, _confident(y, np.zeros(len(y), bool)), CLASSES, subjects,
                              scores=("accuracy",))
    assert res["scores"]["accuracy"]["difference"] == pytest.approx(1.0)
    assert res["scores"]["accuracy"]["p_value"] == pytest.approx(1 / 2 ** 5)
    # Without subjects: the exact McNemar test on the 20 cells only a gets right.
    res = m.paired_comparison(y, a, b, CLASSES, None, scores=("accuracy",))
    assert res["test"] == m.MCNEMAR_TEST and res["unit"] == "cells"
    assert res["scores"]["accuracy"]["p_value"] == pytest.approx(2 * 0.5 ** 20)


def test_bootstrap_resamples_subjects_not_cells() -> None:
    # 5 hem and 5 all subjects of 20 cells each, every subject entirely right or entirely wrong.
    y, subjects = _cells([20] * 10, [0] * 5 + [1] * 5)
    right = np.isin(subjects, ["s0", "s1", "s2", "s5", "s6", "s7", "s8"])
    prob = _confident(y, right)
    by_subject = m.subject_bootstrap(y, prob, CLASSES, subjects, scores=("accuracy",))["scores"]["accuracy"]
    by_cell = m.subject_bootstrap(y, prob, CLASSES, None, scores=("accuracy",))["scores"]["accuracy"]
    assert by_subject["value"] == pytest.approx(0.7)
    # A subject resample has accuracy (right hem draws + right all draws) / 10: a lattice of 1/10.
    for end in (by_subject["low"], by_subject["high"]):
        assert end * 10 == pytest.approx(round(end * 10))
    assert not all(end * 10 == pytest.approx(round(end * 10)) for end in (by_cell["low"], by_cell["high"]))
    assert by_subject["high"] - by_subject["low"] > 2.5 * (by_cell["high"] - by_cell["low"])


def test_every_resample_keeps_both_classes() -> None:
    # 2 hem subjects among 10: an unstratified draw of 10 would miss both in about 11 % of resamples.
    y, subjects = _cells([15] * 10, [0, 0] + [1] * 8)
    units = m._Units(y, subjects, CLASSES)
    hem, pos = units.strata
    draws = units.resample(lambda w: np.stack([w[:, hem].sum(axis=1), w[:, pos].sum(axis=1)]), 2000, 0)
    assert (draws[0] == 2).all() and (draws[1] == 8).all()
    prob = _random_probs(len(y), seed=9)
    res = m.subject_bootstrap(y, prob, CLASSES, subjects)
    assert res["notes"] == []
    for name in ("sensitivity", "specificity", "roc_auc"):
        entry = res["scores"][name]
        assert entry["low"] is not None and entry["low"] <= entry["value"] <= entry["high"]


def test_one_subject_in_a_class_is_said_plainly() -> None:
    y, subjects = _cells([20, 20, 20, 20], [0, 1, 1, 1])
    res = m.subject_bootstrap(y, _random_probs(len(y)), CLASSES, subjects, n_resamples=200)
    assert "class 'hem' has one subject in this set: the interval does not cover variation between " \
           "hem subjects" in res["notes"]
    assert res["scores"]["accuracy"]["low"] <= res["scores"]["accuracy"]["high"]
    # One subject per class: nothing can vary, the interval is the value itself.
    y, subjects = _cells([20, 20], [0, 1])
    res = m.subject_bootstrap(y, _random_probs(len(y)), CLASSES, subjects, n_resamples=50)
    acc = res["scores"]["accuracy"]
    assert acc["low"] == pytest.approx(acc["value"]) == pytest.approx(acc["high"])


def test_unknown_subjects_fall_back_to_cells_and_say_so() -> None:
    y, subjects = _cells([20, 30, 25, 25], [0, 0, 1, 1])
    subjects = subjects.astype(object)
    subjects[3] = ""
    prob = _random_probs(len(y), seed=11)
    res = m.subject_bootstrap(y, prob, CLASSES, subjects, n_resamples=300)
    assert res["unit"] == "cells" and res["n_units"] == len(y)
    assert any("not independent" in n and "too narrow" in n for n in res["notes"])
    res = m.paired_comparison(y, prob, _random_probs(len(y), seed=12), CLASSES, subjects, n_resamples=300)
    assert res["test"] == "exact McNemar test on cells" and res["unit"] == "cells"
    right_a = prob.argmax(axis=1) == y
    right_b = _random_probs(len(y), seed=12).argmax(axis=1) == y
    k, n = int(np.sum(right_a & ~right_b)), int(np.sum(right_a != right_b))
    assert res["scores"]["accuracy"]["p_value"] == pytest.approx(binomtest(k, n).pvalue)
    json.dumps(res)


def test_undefined_scores_do_not_crash() -> None:
    y, subjects = _cells([10, 12, 9], [1, 1, 1])  # no hem cell: specificity and AUC undefined
    prob = _random_probs(len(y), seed=13)
    res = m.subject_bootstrap(y, prob, CLASSES, subjects, n_resamples=200)
    assert res["scores"]["specificity"] == {"value": None, "low": None, "high": None}
    assert res["scores"]["sensitivity"]["low"] is not None
    assert any("specificity is undefined" in n for n in res["notes"])
    res = m.paired_comparison(y, prob, _random_probs(len(y), seed=14), CLASSES, subjects,
                              scores=("roc_auc", "accuracy"), n_resamples=200)
    assert res["scores"]["roc_auc"]["difference"] is None and res["scores"]["roc_auc"]["p_value"] is None
    assert res["scores"]["accuracy"]["p_value"] is not None
    assert m.verdict("A", "B", "roc_auc", res) == "A \u2212 B: ROC AUC is undefined on these cells"
    json.dumps(res)


def test_paired_comparison_refuses_different_shapes() -> None:
    y = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="same cells"):
        m.paired_comparison(y, _random_probs(3), _random_probs(4), CLASSES)


def test_verdict_words() -> None:
    def result(diff: float, low: float, high: float, p: float) -> dict:
        return {"confidence": 0.95, "scores": {"weighted_f1": {"difference": diff, "low": low, "high": high,
                                                                "p_value": p}}}
    assert m.verdict("ResNet50", "GoogLeNet", "weighted_f1", result(0.012, -0.021, 0.045, 0.62)) == (
        "ResNet50 \u2212 GoogLeNet: +0.012 weighted F1, 95 % CI \u22120.021 to +0.045 (p = 0.62): "
        "no clear difference")
    assert m.verdict("ResNet50", "GoogLeNet", "weighted_f1", result(0.03, 0.01, 0.05, 0.004)).endswith(
        "(p = 0.004): ResNet50 is better")
    assert m.verdict("ResNet50", "GoogLeNet", "weighted_f1", result(-0.03, -0.05, -0.01, 0.0001)).endswith(
        "(p < 0.001): GoogLeNet is better")
    assert "weak evidence that GoogLeNet is better" in m.verdict(
        "ResNet50", "GoogLeNet", "weighted_f1", result(-0.03, -0.05, -0.01, 0.2))
    # an interval that excludes 0 beside a test that sees nothing (p = 1.00): never "evidence"
    words = m.verdict("ResNet50", "Ensemble of 4", "weighted_f1", result(-0.075, -0.083, -0.068, 1.0))
    assert "evidence" not in words and words.endswith("(p = 1.00): no clear difference (the interval excludes 0, "
                                                      "but the paired test cannot tell them apart)")


def test_seed_spread() -> None:
    out = m.seed_spread([0.8, 0.9, 1.0])
    assert out["mean"] == pytest.approx(0.9) and out["sd"] == pytest.approx(0.1) and out["n"] == 3
    assert out["values"] == [0.8, 0.9, 1.0]
    assert m.seed_spread([0.7]) == {"mean": 0.7, "sd": None, "n": 1, "values": [0.7]}
    with pytest.raises(ValueError):
        m.seed_spread([])


def test_one_mean_and_sd_over_repeats_everywhere():
    """Pages, the CLI's cross-validation and the studies share one definition: the sample sd (ddof=1), None
    for a single run (it says nothing about the spread), non-finite values left out."""
    out = m.mean_sd([0.8, 0.9, 1.0])
    assert out == {"mean": pytest.approx(0.9), "sd": pytest.approx(0.1), "n": 3}
    assert m.mean_sd([0.7]) == {"mean": 0.7, "sd": None, "n": 1}
    assert m.mean_sd([0.7, None, float("nan"), 0.9])["n"] == 2 and m.mean_sd([])["mean"] is None
    spread = m.seed_spread([0.8, 0.9, 1.0])
    assert spread["sd"] == out["sd"] and spread["values"] == [0.8, 0.9, 1.0]
    assert m.seed_spread([0.8, float("nan")])["mean"] is None  # a seed without the score: no mean
