"""Batch prediction with several models (table, CSV, zip, CAM overlays) and evaluation on labelled data."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukviz import cli
from leukviz.core import filenames
from leukviz.models.config import resolve
from leukviz.scoring import calibration
from leukviz.serving import inference


@pytest.fixture(scope="module")
def two_runs(tiny_data, trained_run, app_runs):
    """Two models of tiny_data from the session's shared runs: the 64 px googlenet that test_explain and
    test_export use (the one most tests here read), and the dashboard tests' 32 px googlenet."""
    cfg = resolve("googlenet", "quick", "none", str(tiny_data), epochs=1, image_size=64, batch_size=4)
    return [trained_run(cfg), app_runs["googlenet"]]


@pytest.fixture(scope="module")
def images(tiny_data, tmp_path_factory) -> Path:
    """A folder of five cells and one file that is not an image."""
    folder = tmp_path_factory.mktemp("to-predict")
    for p in sorted((Path(tiny_data) / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.png"))[:5]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    return folder


def test_predict_table_has_one_row_per_image_per_model(two_runs, images):
    files = sorted(str(p) for p in images.iterdir())
    table = inference.predict_table([r.dir for r in two_runs], files)
    assert list(table.columns) == ["file", "model", "run_id", "predicted", "confidence", "prob_hem",
                                   "prob_all", "confidence_raw", "prob_raw_hem", "prob_raw_all", "calibrated",
                                   "temperature", "ood", "ood_reasons", "error"]
    assert len(table) == len(files) * 2
    assert not table.duplicated(["file", "run_id"]).any()
    assert set(table["run_id"]) == {r.run_id for r in two_runs}
    good = table[table["error"] == ""]
    assert len(good) == 5 * 2
    np.testing.assert_allclose(good["prob_hem"] + good["prob_all"], 1.0, atol=1e-5)
    assert (good["predicted"] == np.where(good["prob_all"] > good["prob_hem"], "all", "hem")).all()
    # held-out cells of the training source: compared with each run's training images, and like them
    assert (good["ood"] == False).all() and (good["ood_reasons"] == "").all()  # noqa: E712
    bad = table[table["error"] != ""]
    assert len(bad) == 2 and bad["file"].str.endswith("broken.png").all() and bad["prob_all"].isna().all()


def test_a_loaded_model_carries_the_runs_temperature(two_runs):
    run = two_runs[0]
    lm = inference.load_model(run.dir)
    fitted = calibration.run_calibration(run.dir)
    assert lm.temperature == fitted["temperature"] and lm.calibrated == fitted["calibrated"]
    assert (run.dir / filenames.CALIBRATION).exists()
    assert lm.calibration["note"].startswith("calibrated" if lm.calibrated else "not calibrated")
    plain = inference.load_model(run.dir, calibrate=False)
    assert plain.temperature == 1.0 and not plain.calibrated


def test_records_carry_calibrated_and_raw_values_that_differ_when_t_is_not_one(two_runs, images):
    files = sorted(str(p) for p in images.glob("*.png") if p.name != "broken.png")
    lm = inference.load_model(two_runs[0].dir, calibrate=False)
    raw = inference.predict_arrays(lm, np.stack([inference.prepare(lm, f) for f in files]))
    lm.temperature = 2.5
    rows = inference.predict_files(lm, files)
    for rec, p in zip(rows, raw):
        assert rec["calibrated"] is True and rec["temperature"] == 2.5
        assert [rec["prob_raw_hem"], rec["prob_raw_all"]] == pytest.approx(list(p), abs=1e-5)
        scaled = calibration.apply_temperature(p, 2.5)
        assert [rec["prob_hem"], rec["prob_all"]] == pytest.approx(list(scaled), abs=1e-5)
        assert rec["predicted"] == lm.classes[int(np.argmax(p))]
        assert rec["confidence"] == pytest.approx(scaled.max())
        assert rec["confidence_raw"] == pytest.approx(p.max())
        assert rec["confidence"] < rec["confidence_raw"] or p.max() == pytest.approx(0.5, abs=1e-4)
    table = inference.predict_table([lm], files)
    assert table["calibrated"].all() and (table["temperature"] == 2.5).all()
    np.testing.assert_allclose(table["prob_all"], [r["prob_all"] for r in rows], atol=1e-6)
    assert (table["confidence"] != table["confidence_raw"]).all()
    lm.temperature = 1.0
    same = inference.predict_files(lm, files)
    assert all(r["prob_all"] == r["prob_raw_all"] and r["calibrated"] is False for r in same)


def test_cli_predict_all_runs_writes_a_csv_and_cam_overlays(two_runs, images, tmp_path, capsys):
    runs_dir = str(two_runs[0].dir.parent)
    n_runs = sum(1 for p in Path(runs_dir).iterdir() if (p / "model.safetensors").exists())
    out = tmp_path / "pred.csv"
    rc = cli.main(["predict", "--run", "all", str(images), "--csv", str(out), "--cam", str(tmp_path / "cams"),
                   "--runs-dir", runs_dir, "--json"])
    assert rc == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 6 * n_runs and n_runs >= 2
    assert {"file", "model", "run_id", "predicted", "prob_hem", "prob_all"} <= set(df.columns)
    assert (df.groupby("file")["run_id"].nunique() == n_runs).all()
    pngs = list((tmp_path / "cams").glob("*.png"))
    assert len(pngs) == 5 * n_runs  # one overlay per readable image per model
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(res["predictions"]) == len(df) and len([c for c in res["cams"] if c["cam"]]) == len(pngs)


def test_cli_predict_reads_a_zip(two_runs, images, tmp_path, capsys):
    zpath = tmp_path / "cells.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(images.glob("*.png"))[:3]:
            zf.write(p, f"batch/{p.name}")
    out = tmp_path / "z.csv"
    assert cli.main(["predict", "--run", two_runs[0].run_id, str(zpath), "--csv", str(out),
                     "--runs-dir", str(two_runs[0].dir.parent)]) == 0
    df = pd.read_csv(out)
    assert len(df) == 3 and set(df["run_id"]) == {two_runs[0].run_id}


def test_evaluate_on_the_cnmc_sample_reports_every_metric_per_subject_and_tta_apart(two_runs, cnmc_mini):
    lm = inference.load_model(two_runs[0].dir)
    res = inference.evaluate_dataset(lm, cnmc_mini, tta=True)
    labels = pd.read_csv(cnmc_mini / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv")
    assert res["set"] == "prelim" and res["n"] == len(labels)
    for key in ("accuracy", "weighted_f1", "balanced_accuracy", "sensitivity", "specificity", "roc_auc",
                "ece", "confusion"):
        assert key in res and key in res["with_tta"]
    expected = {name.split("_")[1] for name in labels["Patient_ID"]}
    assert {s["subject"] for s in res["per_subject"]} == expected == {"H10", "2"}
    assert sum(s["n"] for s in res["per_subject"]) == len(labels)
    assert res["subject_vote"]["n_subjects"] == 2
    assert np.asarray(res["confusion"]).sum() == len(labels)
    # the plain numbers are of the plain prediction, whatever TTA gives
    plain = inference.evaluate_dataset(lm, cnmc_mini)
    assert plain["accuracy"] == res["accuracy"] and "with_tta" not in plain


def test_cli_evaluate_labels_subject_level_and_tta(two_runs, cnmc_mini, capsys):
    rc = cli.main(["evaluate", "--run", two_runs[0].run_id, "--data", str(cnmc_mini), "--tta",
                   "--runs-dir", str(two_runs[0].dir.parent)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "cell level (no TTA)" in text and "WITH TTA" in text
    assert "subject level (no TTA), each subject diagnosed once" in text and "weighted F1" in text
