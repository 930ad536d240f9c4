"""The plain hand-written loop's cache: a result is served only for the same run on the same cells."""

from __future__ import annotations

import json

import pytest

from leukviz.training import plain


def test_a_weights_file_is_known_by_its_bytes(tmp_path):
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"one")
    run = plain.PlainRun("googlenet", str(w), 32, 1, 0)
    key = lambda r: plain.cache_key(r, "fp", ["a.png"], ["b.png"])  # noqa: E731
    first = key(run)
    w.write_bytes(b"other bytes")
    assert key(run) != first
    assert key(plain.PlainRun("googlenet", "none", 32, 1, 0)) != key(plain.PlainRun("googlenet", "imagenet", 32, 1, 0))


@pytest.mark.parametrize("stored, served", [(["b.png", "c.png"], True), (["c.png", "b.png"], False), (None, True)])
def test_a_cached_result_is_served_only_for_its_cells_in_their_order(tmp_path, monkeypatch, stored, served):
    run = plain.PlainRun("googlenet", "none", 32, 1, 0)
    train, val = (["a.png"], [0]), (["x/b.png", "x/c.png"], [0, 1])
    cached = {"epochs": [{"epoch": 1, "val_f1": 0.5}], "probs": [[0.9, 0.1], [0.2, 0.8]]}
    if stored is not None:  # older caches did not record the cells: their length is all that is checked
        cached["val_files"] = stored
    path = tmp_path / "plain" / f"{plain.cache_key(run, 'fp', train[0], val[0])}.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cached))
    fresh = {"epochs": [{"epoch": 1, "val_f1": 0.7}], "probs": [[0.6, 0.4], [0.3, 0.7]]}
    monkeypatch.setattr(plain, "fit", lambda *a, **k: dict(fresh))
    res = plain.cached_fit(tmp_path, run, "fp", train, val, log=lambda s: None)
    assert res["probs"] == (cached if served else fresh)["probs"]
    assert json.loads(path.read_text()).get("val_files") == (stored if served else ["b.png", "c.png"])
