"""Tests for leukviz.health: a finished run that learnt nothing is `degenerate`, with its reasons, once for every
page and command; and the calibration that feeds it is not applied when it ends at a bound."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import make_run
from leukviz.app import dashboard
from leukviz.scoring import calibration, health

CLASSES = ["hem", "all"]


def probs_for(pred: np.ndarray, confidence: float = 0.8) -> np.ndarray:
    p = np.full((len(pred), 2), 1 - confidence)
    p[np.arange(len(pred)), pred] = confidence
    return p


def test_a_model_that_calls_every_cell_one_class_is_degenerate_and_says_which():
    y = np.array([0] * 30 + [1] * 70)
    h = health.assess(y, probs_for(np.zeros(100, int)), CLASSES)
    assert h.status == health.DEGENERATE and h.degenerate
    assert "calls every validation cell hem" in h.reasons
    assert any("below the 0.576 of calling every cell all" in r for r in h.reasons)  # 0.156 < majority's
    assert h.to_dict()["health"] == "degenerate" and h.to_dict()["health_reasons"] == list(h.reasons)


def test_a_model_below_the_majority_baseline_is_degenerate_even_with_both_classes_called():
    y = np.array([0] * 20 + [1] * 80)
    pred = np.array([1] * 20 + [0] * 60 + [1] * 20)  # mostly wrong
    h = health.assess(y, probs_for(pred), CLASSES)
    assert h.degenerate and "below the 0.711" in h.reasons[0]
    assert "no better than chance" in h.reasons[1] and "ROC AUC of all 0.12" in h.reasons[1]


def noisy(y: np.ndarray, signal: float, seed: int = 0) -> np.ndarray:
    """Probabilities whose `all` score is signal * label + noise: signal 0 is a coin, larger separates."""
    rng = np.random.default_rng(seed)
    s = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, len(y)))))
    return np.c_[1 - s, s]


def test_a_chance_level_model_is_flagged_with_its_figures_in_words():
    """The issue's run: accuracy under the majority's share, AUC about 0.5, both classes called and weighted
    F1 over the majority baseline (what the old rule read) - no better than chance."""
    y = np.array([0] * 100 + [1] * 200)
    subjects = np.array([f"h{i % 3}" for i in range(100)] + [f"a{i % 5}" for i in range(200)])
    p = noisy(y, 0.0)
    p[:, 1] = np.clip(p[:, 1] + 0.05, 0, 1)  # leans to `all`, as a barely trained net does
    p[:, 0] = 1 - p[:, 1]
    h = health.assess(y, p, CLASSES, subjects=subjects)
    assert h.degenerate, h
    reason = next(r for r in h.reasons if "no better than chance" in r)
    e = health.evidence(y, p, CLASSES, subjects)
    assert e["unit"] == "subjects" and e["n_units"] == 8
    assert f"{e['auc']:.2f}" in reason


def test_chance_needs_both_accuracy_and_a_weak_ranking():
    """A real ranking under a bad threshold (accuracy below the majority, AUC clear of 0.5 and 0.6) is not
    chance; neither is a weak model whose accuracy is measurably above the majority's. Without both, chance."""
    y = np.array([0] * 100 + [1] * 200)
    subjects = np.array([f"h{i % 4}" for i in range(100)] + [f"a{i % 6}" for i in range(200)])
    p = noisy(y, 2.0)
    shifted = np.c_[p[:, 0] + 0.45, p[:, 1] - 0.45]  # calls most cells hem: accuracy under 2/3
    e = health.evidence(y, shifted, CLASSES, subjects)
    assert e["accuracy"] < e["majority_share"] and e["above_majority_p"] > 0.5 and e["auc_low"] > 0.6
    assert health.chance_reason(e) is None
    weak = dict(e, accuracy=0.75, above_majority_p=0.001, auc=0.56, auc_low=0.45, auc_high=0.66)
    assert health.chance_reason(weak) is None  # its decisions beat the majority
    lost = dict(weak, accuracy=0.67, above_majority_p=0.45)
    assert "not measurably above" in health.chance_reason(lost) and "under 0.6" in health.chance_reason(lost)
    wide = dict(lost, auc=0.7, auc_low=0.48, auc_high=0.85)
    assert "not clear of 0.5" in health.chance_reason(wide)
    assert health.chance_reason(dict(wide, auc_low=0.55)) is None
    assert "no better than a coin" in health.chance_reason(dict(weak, auc=0.5))
    assert health.evidence(y, noisy(y, 3.0), CLASSES, subjects)["above_majority_p"] < 1e-6


def test_a_model_that_learnt_is_healthy():
    y = np.array([0] * 30 + [1] * 70)
    pred = y.copy()
    pred[:5] = 1
    h = health.assess(y, probs_for(pred), CLASSES, {"calibrated": True, "temperature": 1.3})
    assert h.status == health.HEALTHY and not h.reasons and h.text == ""


def test_a_calibration_at_its_bound_makes_a_run_degenerate():
    y = np.array([0] * 30 + [1] * 70)
    cal = {"at_bound": True, "fitted_temperature": 20.0}
    h = health.assess(y, probs_for(y), CLASSES, cal)
    assert h.degenerate and "reached its bound (T = 20.00)" in h.reasons[0]


def test_one_class_in_validation_is_unknown_not_healthy():
    y = np.ones(20, int)
    h = health.assess(y, probs_for(np.array([1] * 10 + [0] * 10)), CLASSES)
    assert h.status == health.UNKNOWN and "its validation has one class (every cell is all)" in h.reasons[0]
    assert "its scores cannot judge it" in h.reasons[0]


def test_calibration_that_hits_its_bound_is_not_applied(tmp_path):
    """Confidence that carries no information (the right class only half the time, always 'sure'): the fit
    runs to T's upper bound; it is reported, not applied."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    pred = rng.integers(0, 2, 200)
    p = probs_for(pred, 0.99)
    t = calibration.fit_temperature(y, p)
    assert calibration.at_bound(t)
    frame = pd.DataFrame({"path": [f"{i}.png" for i in range(200)], "label": y, "prob_hem": p[:, 0], "prob_all": p[:, 1]})
    out = calibration.fit_run(tmp_path, frame.to_csv(index=False).encode())
    assert out["calibrated"] is False and out["temperature"] == 1.0 and out["at_bound"] is True
    assert "reached its bound" in out["note"]
    assert not calibration.at_bound(1.0) and not calibration.at_bound(2.0)


def test_calibration_on_one_class_is_not_applied(tmp_path):
    y = np.ones(40, int)
    p = probs_for(np.ones(40, int), 0.6)
    frame = pd.DataFrame({"path": [f"{i}.png" for i in range(40)], "label": y, "prob_hem": p[:, 0], "prob_all": p[:, 1]})
    out = calibration.fit_run(tmp_path, frame.to_csv(index=False).encode())
    assert out["calibrated"] is False and out["temperature"] == 1.0 and "one class" in out["note"]


def degenerate_run(root, **kw):
    run = make_run(root, **kw)
    frame = pd.read_csv(run.dir / "val_predictions.csv")
    frame["prob_all"], frame["prob_hem"] = 0.3, 0.7  # every cell called hem
    frame.to_csv(run.dir / "val_predictions.csv", index=False)
    return run


def test_pages_read_one_verdict_and_predict_leaves_a_degenerate_run_out(tmp_path):
    good = make_run(tmp_path, "googlenet", created=1)
    bad = degenerate_run(tmp_path, backbone="resnet50", created=2)
    assert dashboard.run_health(good).status == health.HEALTHY
    assert dashboard.run_health(bad).degenerate
    assert [r.run_id for r in dashboard.default_models([bad, good], "demo")] == [good.run_id]
    cards = {c.backbone: c for c in dashboard.backbone_cards("demo", tmp_path)}
    assert cards["resnet50"].text == "Finished: degenerate model" and cards["googlenet"].text == "Finished"
    assert "degenerate" in dashboard.run_label(bad) and "F1" in dashboard.run_label(good)


@pytest.mark.parametrize("seeds", [2, 3])
def test_an_overview_card_shows_the_repeat_groups_mean_and_sd(tmp_path, seeds):
    made = [make_run(tmp_path, "googlenet", seed=s, split_seed=0, created=s) for s in range(seeds)]
    f1s = [0.70, 0.80, 0.90][:seeds]
    for run, f1 in zip(made, f1s):
        meta = run.dir / "model.json"
        meta.write_text(meta.read_text().replace('"val_f1": 0.74', f'"val_f1": {f1}'))
    card = {c.backbone: c for c in dashboard.backbone_cards("demo", tmp_path)}["googlenet"]
    assert card.group is not None and card.group.n == seeds
    assert card.group.f1["mean"] == pytest.approx(np.mean(f1s))
    assert card.scores[1] == f"{np.mean(f1s):.3f} ± {np.std(f1s, ddof=1):.3f} ({seeds} seeds)"


def test_a_degenerate_seed_is_counted_apart_from_the_groups_mean(tmp_path):
    make_run(tmp_path, "googlenet", seed=0, split_seed=0, created=0)
    degenerate_run(tmp_path, backbone="googlenet", seed=1, split_seed=0, created=1)
    card = {c.backbone: c for c in dashboard.backbone_cards("demo", tmp_path)}["googlenet"]
    assert len(card.group.degenerate) == 1 and card.group.f1["n"] == 1


def test_predict_says_why_a_confidence_is_not_calibrated():
    from leukviz.serving import prediction

    p = prediction.ModelPrediction("m", "r", None, "hem", 0.502, {"hem": 0.502, "all": 0.498},
                                   calibration_note="not calibrated: the fitted temperature reached its bound (T = 20.00)")
    said = prediction.calibration_text(p)  # that it is not calibrated, why (the bound, its T), and what is shown
    assert said.startswith("not calibrated") and "bound" in said and "T = 20.00" in said and "raw softmax" in said
    assert said.count("not calibrated") == 1  # the note's own "not calibrated:" is not repeated


def test_compare_all_leaves_a_degenerate_run_out_and_runs_list_says_why(tmp_path, capsys):
    import json

    from leukviz.cli import main

    cells = str(tmp_path / "cells")  # named, never read: "demo" would make compare generate the demo first
    good = [make_run(tmp_path, "googlenet", seed=s, split_seed=0, created=s, data_spec=cells) for s in (0, 1)]
    bad = degenerate_run(tmp_path, backbone="resnet50", created=5, data_spec=cells)
    assert main(["runs", "list", "--json", "--runs-dir", str(tmp_path)]) == 0
    rows = {r["run_id"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]}
    assert rows[bad.run_id]["health"] == "degenerate" and rows[good[0].run_id]["health"] == "healthy"
    assert "calls every validation cell hem" in rows[bad.run_id]["health_reasons"]
    assert main(["compare", "all", "--json", "--runs-dir", str(tmp_path), "--resamples", "200"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out.strip().splitlines()[-1])
    assert bad.run_id not in {i for g in report["groups"] for i in g["runs"]}
    assert f"run {bad.run_id} left out: degenerate" in out.err



def test_a_timid_model_whose_temperature_fit_ends_at_the_lower_bound_is_not_degenerate():
    """A fit at the lower bound (confidences too timid to sharpen far enough) says nothing against decisions
    that beat chance; the upper bound (confidences that are noise) does."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    p_all = np.where(y == 1, 0.52, 0.48) + rng.normal(0, 0.005, 100)  # right, but barely leaning
    probs = np.stack([1 - p_all, p_all], axis=1)
    subjects = np.repeat(np.arange(10), 10)
    low = {"at_bound": True, "fitted_temperature": 0.05}
    assert health.assess(y, probs, ["hem", "all"], low, subjects=subjects).status == health.HEALTHY
    high = {"at_bound": True, "fitted_temperature": 20.0}
    assert health.assess(y, probs, ["hem", "all"], high, subjects=subjects).degenerate
