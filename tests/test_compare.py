"""Tests for leukviz.compare: the Compare page's numbers, from hand-made run folders and tiny models."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers import make_run, tiny_model
from leukviz import compare, config, dashboard, metrics, runs


def test_groups_separate_datasets_and_splits(tmp_path):
    make_run(tmp_path, "googlenet", "fpA")
    make_run(tmp_path, "resnet50", "fpA")
    make_run(tmp_path, "vgg16", "fpB")
    make_run(tmp_path, "googlenet", "fpA", split="image")
    make_run(tmp_path, "resnet50", "fpA", seed=1)
    groups = compare.comparable_groups(dashboard.finished_runs(tmp_path))
    sizes = sorted(len(g.runs) for g in groups.values())
    assert sizes == [1, 1, 1, 2]
    biggest = next(iter(groups.values()))
    assert {r.config.backbone for r in biggest.runs} == {"googlenet", "resnet50"}
    assert "by subject" in biggest.label and "2 runs" in biggest.label
    assert any("LEAKY" in g.label for g in groups.values())


def test_compare_row_from_the_run_files(tmp_path):
    run = make_run(tmp_path)
    ev = compare.evaluate_run(run)
    df = pd.read_csv(run.dir / "val_predictions.csv")
    expected = metrics.summary(df["label"], df[["prob_hem", "prob_all"]].to_numpy(), ["hem", "all"])
    row = compare.compare_row(ev, seconds_per_image=0.0123)
    assert row["val_accuracy"] == pytest.approx(expected["accuracy"]) == pytest.approx(6 / 8)
    assert row["weighted_f1"] == pytest.approx(expected["weighted_f1"])
    assert row["sensitivity"] == pytest.approx(4 / 5) and row["specificity"] == pytest.approx(2 / 3)
    assert row["roc_auc"] == pytest.approx(expected["roc_auc"])
    assert row["train_time"] == "30 s"  # 10 s + 20 s of epochs
    assert row["ms_per_image"] == pytest.approx(12.3)
    assert row["params_m"] == pytest.approx(5.6) and row["checkpoint_mb"] == pytest.approx(2.0)
    assert row["weights"] == "none" and row["split"].startswith("by subject")
    assert ev.summary["subject_vote"]["n_subjects"] == 2  # subjects "H1" and "7" read as text
    table = compare.compare_table([row])
    assert list(table.columns) == list(compare.COMPARE_COLUMNS)
    curves = compare.roc_curves([ev])
    fpr, tpr, auc = curves[dashboard.run_name(run)]
    assert fpr[0] == 0 and tpr[-1] == 1 and auc == pytest.approx(expected["roc_auc"])
    assert list(compare.histories([run])) == [dashboard.run_name(run)]


def test_time_per_image_is_positive(tmp_path):
    assert 0 < compare.time_per_image(tiny_model(tmp_path), repeats=2, warmup=1) < 30
