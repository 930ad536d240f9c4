"""Tests for leukviz.calibration: temperature scaling fitted on validation predictions, report, cache."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from leukviz.core import filenames
from leukviz.scoring import calibration, metrics


def made_up(n: int = 2000, scale: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits): calibrated at scale 1; scale > 1 makes the model over-confident."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(n, 2))
    p_true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = (rng.random(n) < p_true[:, 1]).astype(int)
    z = logits * scale
    return y, np.exp(z) / np.exp(z).sum(1, keepdims=True)


def test_an_over_confident_model_gets_t_above_one_and_better_nll_and_ece():
    y, p = made_up(scale=3.0)
    t = calibration.fit_temperature(y, p)
    assert t == pytest.approx(3.0, rel=0.15)
    scaled = calibration.apply_temperature(p, t)
    assert calibration.nll(y, scaled) < calibration.nll(y, p) - 0.05
    assert metrics.expected_calibration_error(y, scaled) < metrics.expected_calibration_error(y, p) / 2
    assert (scaled.argmax(1) == p.argmax(1)).all()
    assert scaled.max(1).mean() < p.max(1).mean()  # confidence pulled down
    np.testing.assert_allclose(scaled.sum(1), 1.0)
    rep = calibration.report(y, p, t)
    assert rep["after"]["nll"] < rep["before"]["nll"] and rep["after"]["ece"] < rep["before"]["ece"]
    assert rep["after"]["brier"] < rep["before"]["brier"]
    assert rep["before"]["brier"] == pytest.approx(metrics.brier_score(y, p))
    assert len(rep["reliability_before"]) == len(rep["reliability_after"]) == 15
    assert sum(b["count"] for b in rep["reliability_after"]) == len(y)
    json.dumps(rep, allow_nan=False)  # JSON-friendly: empty bins are None, not NaN


def test_a_calibrated_model_keeps_t_near_one_and_an_under_confident_one_gets_t_below_one():
    y, p = made_up(scale=1.0, seed=1)
    assert calibration.fit_temperature(y, p) == pytest.approx(1.0, abs=0.15)
    y, p = made_up(scale=0.4, seed=2)
    t = calibration.fit_temperature(y, p)
    assert t < 0.6
    assert (calibration.apply_temperature(p, t).argmax(1) == p.argmax(1)).all()


def test_apply_temperature_at_one_returns_the_input_and_survives_zeros():
    p = np.array([[0.0, 1.0], [0.7, 0.3]])
    np.testing.assert_array_equal(calibration.apply_temperature(p, 1.0), p)
    out = calibration.apply_temperature(p, 2.0)
    assert np.isfinite(out).all() and out[0].argmax() == 1 and out[1].argmax() == 0
    assert out[1, 0] == pytest.approx(np.sqrt(0.7) / (np.sqrt(0.7) + np.sqrt(0.3)))
    np.testing.assert_allclose(calibration.apply_temperature(p[1], 2.0), out[1])  # one row works too
    with pytest.raises(ValueError, match="temperature"):
        calibration.apply_temperature(p, 0.0)


def test_fit_stays_within_bounds_on_perfect_predictions():
    y = np.array([0, 1] * 10)
    p = np.eye(2)[y] * 0.98 + 0.01
    t = calibration.fit_temperature(y, p)
    assert calibration.T_BOUNDS[0] <= t <= calibration.T_BOUNDS[1] and t < 0.2


def write_predictions(run_dir, y, p, classes=("hem", "all")):
    run_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"path": [f"/x/{i}.png" for i in range(len(y))], "subject": "s", "label": y,
                       "pred": p.argmax(1), **{f"prob_{c}": p[:, i] for i, c in enumerate(classes)}})
    df.to_csv(run_dir / filenames.PREDICTIONS, index=False)


def test_run_calibration_fits_caches_and_refits_when_the_predictions_change(tmp_path, monkeypatch):
    run = tmp_path / "run"
    y, p = made_up(400, scale=3.0)
    write_predictions(run, y, p)
    first = calibration.run_calibration(run)
    assert first["calibrated"] and first["fitted_on"] == "validation" and first["n"] == 400
    assert first["temperature"] > 1.5 and "optimistic" in first["note"]
    assert first["report"]["after"]["nll"] < first["report"]["before"]["nll"]
    saved = json.loads((run / filenames.CALIBRATION).read_text())
    assert saved["temperature"] == first["temperature"]

    fits = []
    real = calibration.fit_temperature
    monkeypatch.setattr(calibration, "fit_temperature", lambda *a: fits.append(1) or real(*a))
    assert calibration.run_calibration(run) == first and fits == []  # unchanged: read back, not refitted

    y2, p2 = made_up(400, scale=0.5, seed=3)  # retrained: now under-confident
    write_predictions(run, y2, p2)
    again = calibration.run_calibration(run)
    assert fits == [1] and again["temperature"] < 1.0 and again["key"] != first["key"]
    assert json.loads((run / filenames.CALIBRATION).read_text())["temperature"] == again["temperature"]


@pytest.mark.parametrize("case", ["missing", "empty", "no label", "too few"])
def test_a_run_without_usable_predictions_gets_t_one_and_says_not_calibrated(tmp_path, case):
    run = tmp_path / "run"
    run.mkdir()
    if case == "empty":
        (run / filenames.PREDICTIONS).write_bytes(b"")
    elif case == "no label":
        pd.DataFrame({"prob_hem": [0.2] * 20, "prob_all": [0.8] * 20}).to_csv(run / filenames.PREDICTIONS)
    elif case == "too few":
        y, p = made_up(calibration.MIN_CELLS - 1)
        write_predictions(run, y, p)
    res = calibration.run_calibration(run)
    assert res["temperature"] == 1.0 and res["calibrated"] is False
    assert res["note"].startswith("not calibrated") and res["fitted_on"] is None


def test_unlabelled_rows_are_left_out_and_the_sidecar_orders_the_classes(tmp_path):
    run = tmp_path / "run"
    y, p = made_up(300, scale=3.0, seed=4)
    y = y.copy()
    y[:50] = -1
    write_predictions(run, y, p[:, ::-1], classes=("all", "hem"))  # columns saved in another order
    (run / filenames.SIDECAR).write_text(json.dumps({"classes": ["hem", "all"]}))
    res = calibration.run_calibration(run)
    assert res["n"] == 250
    # labels index the sidecar's classes: read in that order, the fit sees the model as it was
    assert res["temperature"] == pytest.approx(calibration.fit_temperature(y[50:], p[50:]), rel=1e-3)


def test_a_run_folder_that_cannot_be_written_still_gets_its_temperature(tmp_path, monkeypatch):
    run = tmp_path / "run"
    y, p = made_up(200, scale=2.0)
    write_predictions(run, y, p)

    def refuse(*_):
        raise PermissionError("read-only")

    monkeypatch.setattr(calibration, "atomic_write_json", refuse)
    res = calibration.run_calibration(run)
    assert res["calibrated"] and res["temperature"] > 1.3 and not (run / filenames.CALIBRATION).exists()
