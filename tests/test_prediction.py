"""Tests for leukviz.prediction: dropped images decoded and predicted once, their table, uploaded zips."""

from __future__ import annotations

import io

import pytest

from helpers import png_bytes, tiny_model
from leukviz import data, prediction


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


def test_uploads_are_decoded_and_predicted_once_for_the_table_and_the_cards(tmp_path, monkeypatch):
    import zipfile

    models = [tiny_model(tmp_path, 32, name=n) for n in "ab"]
    calls = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cells/one.png", png_bytes())
        zf.writestr("cells/notes.txt", b"not an image")
        zf.writestr("__MACOSX/cells/._one.png", b"junk")
    files = [("x.png", png_bytes()), ("bad.png", b"not an image"), ("cells.zip", archive.getvalue()),
             ("broken.zip", b"not a zip")]
    preds = prediction.predict_uploads(models, files, tmp_path / "up")
    assert [p.name for p in preds] == ["x.png", "bad.png", "cells.zip/cells/one.png"]
    assert len(calls) == 3  # one decode per image: both models share one decoding
    assert preds[0].results[0].image.shape == (32, 32, 3) and preds[2].results[0].image is None
    assert preds[1].error and not preds[1].results
    table = prediction.prediction_table(models, preds)
    assert len(table) == 3 * len(models) and list(table["run_id"]) == ["a"] * 3 + ["b"] * 3
    assert (table["error"] != "").sum() == len(models)
    assert table.loc[0, "prob_all"] == pytest.approx(preds[0].results[0].probs["all"])
