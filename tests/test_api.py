"""The Python API (leukviz.train, runs, compare, predict, load): what a notebook gets, and that it is what the
command line says too."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

import leukviz
from helpers import link_run, tiny_config
from leukviz import api, cli
from leukviz.runstore import runs as runstore


def test_import_leukviz_stays_light_and_exposes_the_api_lazily():
    code = ("import sys, leukviz\n"
            "heavy = [m for m in ('torch', 'pandas', 'streamlit', 'leukviz.api') if m in sys.modules]\n"
            "f = leukviz.train\n"
            "sys.exit(f'loaded {heavy}' if heavy else 0 if 'leukviz.api' in sys.modules and 'torch' not in sys.modules "
            "else 'the API did not load, or loaded torch')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert leukviz.compare is api.compare and {"train", "runs", "compare", "predict", "load"} <= set(dir(leukviz))
    with pytest.raises(AttributeError):
        leukviz.nothing_here  # noqa: B018


SETTINGS = dict(weights="none", epochs=1, image_size=32, batch_size=64, finetune="full")  # tiny_config's googlenet


@pytest.fixture(scope="module")
def pair(tiny_data, trained_run, tmp_path_factory):
    """Two seeds of one configuration through the API (and so cached for the rest): seed 0 is the session's
    shared googlenet run (helpers.tiny_config, linked in, so the API attaches to it: one training less per
    session), seed 1 is trained here by api.train."""
    where = tmp_path_factory.mktemp("api-runs")
    shared = link_run(trained_run(tiny_config("googlenet", tiny_data)), where)
    pair = api.train("googlenet", tiny_data, seeds=2, runs_dir=where, **SETTINGS)
    assert pair[0].id == shared.run_id and pair[1].id != shared.run_id  # seed 0 cached, seed 1 trained
    return pair, where


def test_train_returns_finished_runs_with_their_history_and_caches_them(pair, tiny_data):
    (a, b), where = pair
    assert isinstance(a, api.Run) and a.state == "finished" and a.id != b.id
    assert a.config["seed"] + 1 == b.config["seed"] and a.backbone == "googlenet"
    assert a.health in ("healthy", "degenerate") and 0 <= a.metrics["val_f1"] <= 1
    hist = a.history
    assert isinstance(hist, pd.DataFrame) and list(hist["epoch"]) == [1]
    assert hist["val_f1"].iloc[0] == pytest.approx(a.metrics["val_f1"])  # one epoch: the kept one
    before = (a.dir / "metrics.jsonl").stat().st_mtime_ns
    again = api.train("googlenet", tiny_data, runs_dir=where, **SETTINGS)
    assert again.id == a.id and (a.dir / "metrics.jsonl").stat().st_mtime_ns == before  # cached, not retrained
    assert "googlenet" in repr(a) and a.id in repr(a)


def test_runs_is_a_filterable_frame_and_agrees_with_runs_list(pair, tiny_data, capsys):
    (a, b), where = pair
    df = api.runs(runs_dir=where)
    assert set(df["run_id"]) == {a.id, b.id} and list(df.columns[:4]) == ["run_id", "backbone", "state", "health"]
    assert api.runs(dataset=str(tiny_data), runs_dir=where).shape[0] == 2
    assert api.runs(dataset="demo", runs_dir=where).empty
    assert api.runs(backbone=["resnet50", "vgg16"], runs_dir=where).empty
    assert api.runs(health=a.health, runs_dir=where)["run_id"].tolist().count(a.id) == 1
    assert cli.main(["runs", "list", "--runs-dir", str(where), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]
    assert {r["run_id"]: r["health"] for r in listed} == dict(zip(df["run_id"], df["health"]))


def test_compare_gives_words_a_table_figures_and_a_report(pair, tmp_path, capsys):
    import plotly.graph_objects as go

    (a, b), where = pair
    result = api.compare(api.runs(runs_dir=where), resamples=200, runs_dir=where)
    assert "GoogLeNet" in result.answer and "best on validation weighted F1" in result.answer
    assert isinstance(result.table, pd.DataFrame) and result.table["Seeds"].iloc[0] == 2
    assert all(isinstance(f, go.Figure) for f in result.figures.values()) and "roc" in result.figures
    html = result.report(tmp_path / "out" / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and a.id in html and b.id in html
    # the command line says the same (the same function underneath)
    assert cli.main(["compare", a.id, b.id, "--runs-dir", str(where), "--resamples", "200", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["scores"] == api.compare([a, b], resamples=200, runs_dir=where).data["scores"]


def test_predict_and_load(pair, tiny_data):
    (a, b), where = pair
    cells = [p for p in sorted(tiny_data.rglob("*.bmp"))[:3]] or [p for p in sorted(tiny_data.rglob("*.png"))[:3]]
    df = api.predict([a, b.id], cells, runs_dir=where)
    assert len(df) == 6 and set(df["run_id"]) == {a.id, b.id}
    assert df["predicted"].isin(["all", "hem"]).all() and df["confidence"].between(0.5, 1).all()
    assert api.load(a.id[:6], runs_dir=where) == a
    assert a.predict(cells[0])["file"].tolist() == [str(cells[0])]
    with pytest.raises(runstore.NoSuchRun, match="no run"):
        api.load("zzzz", runs_dir=where)


def test_bad_settings_and_inputs_are_one_clear_line(tmp_path):
    with pytest.raises(api.ApiError, match="unknown training setting.*epochs"):
        api.train("googlenet", "demo", epoch=1, runs_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no such image"):
        api.predict([], [tmp_path / "missing.png"], runs_dir=tmp_path)
    with pytest.raises(api.ApiError, match="no usable finished runs"):
        api.compare("all", runs_dir=tmp_path)
