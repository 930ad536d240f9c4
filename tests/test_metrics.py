"""Tests for leukviz.metrics: hand-computed values on fixed small arrays, edge cases, JSON output."""

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from leukviz import metrics as m

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
