"""Tests for leukviz.prediction: dropped images decoded and predicted once, their table, uploaded zips."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from helpers import png_bytes, tiny_model
from leukviz.datasets import data
from leukviz.serving import prediction


def test_predict_image_one_result_per_model_sharing_one_decode(tmp_path):
    models = [tiny_model(tmp_path, 32, name=n) for n in "ab"] + [tiny_model(tmp_path, 48, name="c")]
    res = prediction.predict_image(models, "cell.png", png_bytes())
    assert res.error is None
    assert [r.run_id for r in res.results] == ["a", "b", "c"]
    assert [r.image.shape for r in res.results] == [(32, 32, 3), (32, 32, 3), (48, 48, 3)]
    for r in res.results:
        assert r.predicted in ("hem", "all")
        assert r.confidence == pytest.approx(max(r.probs.values()))
        assert sum(r.probs.values()) == pytest.approx(1.0, abs=1e-5)
    # the same bytes as an uploaded file object or a path give the same answer
    path = tmp_path / "cell.png"
    path.write_bytes(png_bytes())
    again = prediction.predict_image(models[:1], "cell.png", path)
    assert again.results[0].probs == pytest.approx(res.results[0].probs)


@pytest.mark.parametrize("blob", [b"", b"hello, not an image", png_bytes()[:60]],
                         ids=["empty", "text", "truncated"])
def test_predict_image_bad_files_give_an_error_not_an_exception(tmp_path, blob):
    res = prediction.predict_image([tiny_model(tmp_path)], "bad <b>name</b>.png", blob)
    assert res.results == []
    assert res.error and "\n" not in res.error
    assert not res.error.startswith("bad")  # the reason alone: the page shows the name itself
    assert res.name == "bad <b>name</b>.png"
    if not blob:
        assert "empty" in res.error


def test_uploads_are_decoded_once_for_the_table_and_read_from_their_zip_for_the_cards(tmp_path, monkeypatch):
    import zipfile

    models = [tiny_model(tmp_path, 32, name=n) for n in "ab"]
    calls = []
    real = data.decode_rgb
    monkeypatch.setattr(data, "decode_rgb", lambda *a, **k: calls.append(1) or real(*a, **k))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cells/one.png", png_bytes())
        zf.writestr("cells/notes.txt", b"not an image")
        zf.writestr("__MACOSX/cells/._one.png", b"junk")
    members = prediction.zip_members(archive.getvalue(), tmp_path / "up")
    assert members == ["cells/one.png"] and prediction.zip_members(b"not a zip", tmp_path / "up") == []
    entry = prediction.ZipEntry(archive, members[0])
    items = [("x.png", png_bytes()), ("bad.png", b"not an image"), ("cells.zip/cells/one.png", entry),
             ("gone.zip/a.png", prediction.ZipEntry(archive, "cells/missing.png"))]
    table = prediction.predict_sources(models, items, chunk=3)  # two chunks: rows still models first
    assert len(calls) == 3  # one decode per image read: both models and the out-of-distribution check share it
    assert len(table) == 4 * len(models) and list(table["run_id"]) == ["a"] * 4 + ["b"] * 4
    assert list(table["file"]) == [name for name, _ in items] * 2
    assert list(table["error"] != "") == [False, True, False, True] * 2
    assert "cannot read the file" in table.loc[3, "error"]
    # the card reads its image from the zip when shown, and agrees with the table
    card = prediction.predict_image(models, "cells.zip/cells/one.png", entry)
    assert card.results[0].image.shape == (32, 32, 3)
    assert table.loc[2, "prob_all"] == pytest.approx(card.results[0].probs["all"])
    assert table.loc[0, "prob_all"] == pytest.approx(prediction.predict_image(models, "x.png", png_bytes()).results[0].probs["all"])


def test_cards_give_calibrated_values_beside_the_raw_ones(tmp_path):
    from leukviz.scoring import calibration

    plain, scaled = tiny_model(tmp_path, name="plain"), tiny_model(tmp_path, name="scaled")
    scaled.temperature = 3.0
    res = prediction.predict_image([plain, scaled], "cell.png", png_bytes())
    a, b = res.results
    assert not a.calibrated and a.probs == pytest.approx(a.probs_raw) and a.confidence == a.confidence_raw
    assert b.calibrated and b.temperature == 3.0
    assert b.probs_raw == pytest.approx(a.probs)  # the same network: the same raw softmax
    raw = np.array([b.probs_raw["hem"], b.probs_raw["all"]])
    expected = calibration.apply_temperature(raw, 3.0)
    assert [b.probs["hem"], b.probs["all"]] == pytest.approx(list(expected))
    assert b.probs != pytest.approx(b.probs_raw, abs=1e-6)
    assert b.predicted == a.predicted and b.confidence == pytest.approx(max(b.probs.values()))
    assert abs(b.confidence - 0.5) < abs(b.confidence_raw - 0.5)  # T > 1 pulls towards 1/C
    text = prediction.calibration_text(b)
    assert "calibrated on validation" in text and "T = 3.00" in text and f"raw {b.confidence_raw:.1%}" in text
    assert "over-confident" in text
    assert prediction.calibration_text(a).startswith("not calibrated")
    table = prediction.prediction_table([plain, scaled], [res])
    assert list(table.columns) == ["file", "model", "run_id", "predicted", "confidence", "prob_hem",
                                   "prob_all", "confidence_raw", "prob_raw_hem", "prob_raw_all", "calibrated",
                                   "temperature", "ood", "ood_reasons", "error"]
    assert list(table["calibrated"]) == [False, True] and list(table["temperature"]) == [1.0, 3.0]
    # models without reference statistics (as runs trained before them): not compared, and they say so
    assert table["ood"].isna().all() and a.ood is None and a.ood_note.startswith("no reference statistics")
    assert prediction.ood_text(a) == ""
    assert table.loc[1, "prob_all"] == pytest.approx(b.probs["all"])
    assert table.loc[1, "prob_raw_all"] == pytest.approx(b.probs_raw["all"])


def test_the_ensemble_is_the_mean_of_the_models_calibrated_probabilities(tmp_path):
    models = [tiny_model(tmp_path, name=n) for n in "abc"]
    models[1].temperature, models[2].temperature = 4.0, 0.3
    res = prediction.predict_image(models, "cell.png", png_bytes())
    mix = prediction.ensemble(res)
    assert mix is not None and mix.n == 3 and mix.title == "Ensemble (mean of 3 models)"
    for c in ("hem", "all"):
        assert mix.probs[c] == pytest.approx(np.mean([r.probs[c] for r in res.results]))
        assert mix.probs[c] != pytest.approx(np.mean([r.probs_raw[c] for r in res.results]), abs=1e-6)
    assert mix.probs["hem"] + mix.probs["all"] == pytest.approx(1.0)
    assert mix.predicted == max(mix.probs, key=mix.probs.get) and mix.confidence == max(mix.probs.values())
    assert mix.agreement == f"all 3 models predict {mix.predicted}"  # one network, three temperatures
    assert mix.n_calibrated == 2 and "(2 of 3 calibrated)" in mix.text
    assert mix.text.startswith(f"{mix.confidence:.1%}")
    for m in models:
        m.temperature = 2.0
    every = prediction.ensemble(prediction.predict_image(models, "c", png_bytes()))
    assert "calibrated probabilities of" in every.text
    assert prediction.ensemble(prediction.ImagePrediction("x", results=res.results[:1])) is None
    res.results[0].predicted = "other"
    split = prediction.ensemble(res).agreement
    assert "disagree" in split and "says other" in split


def test_an_ensemble_with_a_model_that_finds_the_image_unlike_its_training_data_is_not_reliable():
    def one(model: str, ood: bool | None) -> prediction.ModelPrediction:
        return prediction.ModelPrediction(model, model, None, "all", 0.9, {"hem": 0.1, "all": 0.9}, ood=ood)

    assert prediction.confidence_reliable(one("a", None)) and not prediction.confidence_reliable(one("a", True))
    mix = prediction.ensemble(prediction.ImagePrediction("x.png", results=[one("a", False), one("b", True)]))
    assert mix.n_unreliable == 1 and not mix.reliable
    assert prediction.ensemble(prediction.ImagePrediction("x.png", results=[one("a", False), one("b", None)])).reliable


def test_a_batch_summary_counts_classes_and_scores_against_class_folders_and_cnmc_names():
    rows = []
    files = [("cells.zip/all/a1.png", "all"), ("cells.zip/all/a2.png", "hem"), ("cells.zip/hem/h1.png", "hem"),
             ("UID_h3_1_1_hem.bmp", "all"), ("UID_h3_1_2_hem.bmp", "hem"), ("loose.png", "all"), ("bad.png", None)]
    for f, pred in files:
        rows.append({"file": f, "model": "googlenet", "run_id": "abcdef123456", "predicted": pred or "",
                     "confidence": 0.9, "error": "" if pred else "not an image"})
    table = pd.DataFrame(rows)
    (s,) = prediction.batch_summary(table, ["hem", "all"])
    assert s["images"] == 7 and s["unreadable"] == 1
    assert s["counts"] == {"hem": 3, "all": 3} and s["shares"]["all"] == pytest.approx(0.5)
    assert s["labelled"] == 5 and s["accuracy"] == pytest.approx(3 / 5)  # loose.png tells no class
    assert s["recall"] == {"hem": pytest.approx(2 / 3), "all": pytest.approx(1 / 2)}
    (h3,) = s["subjects"]
    assert h3["subject"] == "h3" and h3["cells"] == 2 and h3["share"] == pytest.approx(0.5)
    assert 0 < h3["low"] < 0.5 < h3["high"] < 1
    lines = prediction.summary_lines([s])
    assert lines[0].startswith("GoogLeNet · abcdef: 7 images: hem 3 (50%), all 3 (50%); 1 unreadable; on the 5 with a "
                               "known class: accuracy 60.0%") and "subject h3: 50% of 2 cells called all" in lines[1]


def test_the_batch_table_names_each_run_not_its_backbone(tmp_path):
    """Three GoogLeNet runs are three models in the table and its summary, each named by its run."""
    models = [tiny_model(tmp_path, name=n) for n in ("aaaaaa111", "bbbbbb222", "cccccc333")]
    preds = prediction.predict_images(models, [("x.png", png_bytes())])
    table = prediction.prediction_table(models, preds)
    assert list(table["model"]) == ["GoogLeNet · aaaaaa", "GoogLeNet · bbbbbb", "GoogLeNet · cccccc"]
    summary = prediction.batch_summary(table, ["hem", "all"])
    assert [m["model"] for m in summary] == list(table["model"])
    assert list(prediction.summary_frame(summary)["Model"]) == list(table["model"])


def _batch(rows: list[tuple[str, str, bool | None, bool | None]]) -> pd.DataFrame:
    return pd.DataFrame([{"file": f, "model": "googlenet", "run_id": "abcdef123456", "predicted": pred,
                          "confidence": 0.9, "ood": ood, "seen": seen, "error": ""} for f, pred, ood, seen in rows])


def test_the_batch_summary_gives_figures_with_and_without_images_unlike_training_and_its_own_cells():
    table = _batch([("all/a1.png", "all", False, False), ("all/a2.png", "all", True, False),
                    ("all/a3.png", "hem", True, True), ("hem/h1.png", "hem", False, True),
                    ("hem/h2.png", "all", None, False)])
    (s,) = prediction.batch_summary(table, ["hem", "all"])
    assert s["unlike"] == 2 and s["seen"] == 2 and s["accuracy"] == pytest.approx(3 / 5)
    assert s["without_unlike"]["readable"] == 3 and s["without_unlike"]["accuracy"] == pytest.approx(2 / 3)
    assert s["held_out"]["readable"] == 3 and s["held_out"]["accuracy"] == pytest.approx(2 / 3)
    frame = prediction.summary_frame([s])
    assert list(frame["Images"]) == ["all readable", "without 2 unlike training", "without 2 of its own"]
    assert list(frame["Accuracy"]) == ["60% (3/5)", "67% (2/3)", "67% (2/3)"]
    sentences = prediction.summary_sentences([s])
    assert sentences[0] == ("GoogLeNet · abcdef: 2 of 5 images are unlike its training data (its confidence on them "
                            "means little); accuracy 60.0% on every image with a known class, 66.7% without them.")
    assert sentences[1].startswith("GoogLeNet · abcdef: 2 of 5 images are its own training or validation images")
    assert sentences[1].endswith("on the 3 others, accuracy 66.7%.")
    # nothing flagged: one row, nothing to say
    plain = _batch([("all/a1.png", "all", False, False), ("hem/h1.png", "hem", False, False)])
    (p,) = prediction.batch_summary(plain, ["hem", "all"])
    assert len(prediction.summary_frame([p])) == 1 and prediction.summary_sentences([p]) == []


def test_an_empty_recall_says_why():
    (s,) = prediction.batch_summary(_batch([("all/a1.png", "all", False, False), ("all/a2.png", "hem", False, False)]),
                                    ["hem", "all"])
    row = prediction.summary_frame([s]).iloc[0]
    assert row["Recall hem"] == "– no known hem image" and row["Recall all"] == "50% (1/2)"
    assert "None" not in " ".join(prediction.summary_lines([s]))
    assert "hem – no known hem image" in prediction.summary_lines([s])[0]


def test_subjects_are_listed_in_number_order():
    files = [f"UID_{s}_1_1_all.bmp" for s in ("16", "2", "23", "h3", "h12")]
    (s,) = prediction.batch_summary(_batch([(f, "all", False, False) for f in files]), ["hem", "all"])
    assert [x["subject"] for x in s["subjects"]] == ["2", "16", "23", "h3", "h12"]


def test_a_flagged_image_is_said_once_for_all_its_model_cards(tmp_path):
    def one(model: str, ood: bool | None, reasons: list[str]) -> prediction.ModelPrediction:
        return prediction.ModelPrediction(model, model, None, "all", 0.9, {"hem": 0.1, "all": 0.9}, ood=ood,
                                          ood_reasons=reasons)

    same = prediction.ImagePrediction("x.png", results=[one("A · 1", True, ["too small"]),
                                                        one("B · 2", True, ["too small"])])
    text = prediction.image_ood_text(same)
    assert text.startswith(prediction.OOD_TITLE) and text.count("too small") == 1 and "every model" in text
    mixed = prediction.ImagePrediction("x.png", results=[one("A · 1", True, ["too small"]), one("B · 2", False, [])])
    assert "A · 1: too small" in prediction.image_ood_text(mixed) and "B · 2" not in prediction.image_ood_text(mixed)
    assert prediction.image_ood_text(prediction.ImagePrediction("x.png", results=[one("A", False, [])])) == ""
    three = prediction.ImagePrediction("x.png", results=[one("A · 1", True, ["too small"]), one("B · 2", True, ["too small"]),
                                                         one("C · 3", True, ["too dark"])])
    text = prediction.image_ood_text(three)  # alike reasons once, their models named together
    assert "A · 1, B · 2: too small | C · 3: too dark" in text and text.count("too small") == 1


def test_the_models_own_training_and_validation_images_are_found_by_their_bytes(tmp_path):
    import json

    ds = tmp_path / "cells"
    files = {}
    for c in ("all", "hem"):
        (ds / c).mkdir(parents=True)
        for i in range(4):
            files[f"{c}/{i}.png"] = png_bytes(40 + i + (8 if c == "hem" else 0))
            (ds / f"{c}/{i}.png").write_bytes(files[f"{c}/{i}.png"])
    lm = tiny_model(tmp_path, name="ownrun123")
    (lm.run_dir / "config.json").write_text(json.dumps({"config": {"data": str(ds)}, "dataset_fingerprint": "x"}))
    own = prediction.own_images(lm, tmp_path / "cache")
    assert own == {prediction.file_digest(b) for b in files.values()}
    preds = prediction.predict_images([lm], [("cells.zip/all/0.png", files["all/0.png"]),
                                             ("new/all/9.png", png_bytes(70))])
    table = prediction.prediction_table([lm], preds, {lm.run_dir.name: own})
    assert list(table["seen"]) == [True, False]
    (s,) = prediction.batch_summary(table, ["hem", "all"])
    assert s["seen"] == 1 and s["held_out"]["readable"] == 1
    assert "1 of 2 images are its own training or validation images" in prediction.summary_sentences([s])[0]
    unknown = prediction.prediction_table([lm], preds, {lm.run_dir.name: None})  # its dataset cannot be opened
    assert unknown["seen"].isna().all()
    (u,) = prediction.batch_summary(unknown, ["hem", "all"])
    assert "could not be checked" in prediction.summary_sentences([u])[0]


def test_flagged_images_alike_for_every_model_are_said_once():
    rows = _batch([("all/a1.png", "all", False, False), ("all/a2.png", "all", True, True)])
    two = pd.concat([rows, rows.assign(run_id="fedcba654321", model="resnet50")])
    summary = prediction.batch_summary(two, ["hem", "all"])
    (sentence,) = prediction.summary_sentences(summary)
    assert sentence.startswith("For every model: 1 of 2 images are unlike their training data")
    assert "1 of 2 are their own training or validation images" in sentence
    assert len(prediction.summary_sentences(summary[:1])) == 2  # one model: its own sentences, with its figures
