"""AppTest checks of every dashboard page, against real tiny runs trained once for this module."""

from __future__ import annotations

import functools
import json
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from helpers import APP_FINETUNE, link_runs, tiny_config
from leukviz.app import dashboard, datapage
from leukviz.core import paths
from leukviz.datasets import data, synthetic
from leukviz.models import backbones, config
from leukviz.runstore import names, processes, runs
from leukviz.serving import prediction

REPO = Path(__file__).resolve().parents[1]
BACKBONES = tuple(APP_FINETUNE)  # VGG16's 138 M parameters would write a 1.6 GB resume file per run


def small_demo(generate, root: Path, seed: int = 0, **_) -> Path:
    """The demo generator at a tenth of the size, in this process (a worker pool costs more than it saves)."""
    return generate(root, seed=seed, n_subjects=6, image_size=64, workers=1)


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_data, app_runs) -> Path:
    """This module's own LEUKVIZ_HOME: a small demo dataset in its cache, the session's two finished runs on
    tiny_data (linked, not trained again)."""
    path = tmp_path_factory.mktemp("app-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEUKVIZ_HOME", str(path))
        # The real demo takes half a minute to draw; the same generator, smaller, stands in for it.
        with pytest.MonkeyPatch.context() as demo:
            demo.setattr(synthetic, "generate_demo", functools.partial(small_demo, synthetic.generate_demo))
            data.open_dataset("demo", paths.cache_root())
        link_runs(app_runs.values(), runs.runs_root())
        yield path


@pytest.fixture()
def app(home, tiny_data) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.session_state["dataset"] = str(tiny_data)
    return at


def open_page(at: AppTest, page: str | None = None) -> AppTest:
    at.run()
    if page:
        at.switch_page(f"leukviz/ui/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def finished(tiny_data: Path) -> dict[str, runs.Run]:
    return {b: runs.run_for(tiny_config(b, tiny_data)) for b in BACKBONES}


def test_overview_shows_dataset_device_and_a_card_per_backbone(app, tiny_data):
    at = open_page(app)
    assert at.title[0].value == "leukviz"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Device"].startswith("CPU")
    assert dashboard.plain(names.dataset_label(str(tiny_data))) == metrics["Active dataset"]
    cards = [m.value for m in at.markdown if m.value.startswith("#### ")]
    assert cards == [f"#### {spec.title}" for spec in backbones.BACKBONES.values()]
    links = at.get("page_link")
    assert len(links) == len(backbones.BACKBONES)
    googlenet = finished(tiny_data)["googlenet"].final_metrics()
    assert f"{googlenet['val_acc']:.1%}" in [m.value for m in at.metric if m.label == "Val. accuracy"]
    assert "No run yet" in [m.value for m in at.markdown]  # VGG16 was never trained
    sidebar = [m.value for m in at.sidebar.markdown]
    assert any("CPU" in s for s in sidebar)


def test_data_page_counts_split_and_gallery(app):
    at = app
    at.session_state["dataset"] = "demo"
    open_page(at, "data")
    ds = data.open_dataset("demo", paths.cache_root())
    info = data.inspect(ds)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Class hem"] == str(info["per_class"]["hem"])
    assert metrics["Class all"] == str(info["per_class"]["all"])
    assert metrics["Subjects"] == str(len(info["per_subject"]))
    assert int(metrics["Validation images"]) == len(data.make_split(ds, "subject").val)
    rows = [len(im.value) for im in at.image]  # a gallery row per class, then an augmentation row per class
    assert rows == [6, 6, 6, 6]
    # only the few-subjects warnings, if any (the small stand-in demo of these tests has two normal subjects)
    # each fact once: a class's few subjects in one warning (which names its one-person sides), then the rest
    sp = data.make_split(ds, "subject")
    assert [w.value for w in at.warning] == [dashboard.plain(w) for w in datapage.few_subjects_messages(ds)
                                             + datapage.split_messages(ds, sp)]

    at.radio(key="data_split_radio").set_value("image").run()
    assert at.session_state["split"] == "image"
    assert any("Leaky" in w.value for w in at.warning)


def test_data_page_warns_when_a_class_has_few_subjects(app, real_subset):
    at = app
    at.session_state["dataset"] = str(real_subset)
    open_page(at, "data")
    assert not at.exception
    expected = datapage.few_subjects_messages(data.open_dataset(str(real_subset), paths.cache_root()))
    assert len(expected) == 1 and "Class 'hem' has 2 subjects" in expected[0]
    assert "Choose Subject-grouped folds below" in expected[0]  # the in-app way first
    warnings = [w.value for w in at.warning]
    assert warnings[:1] == [dashboard.plain(w) for w in expected]
    assert not any("'hem' cells of 1 subject only" in w.replace("\\", "") for w in warnings)  # said once
    assert any("hem 2" in c.value and "all 3" in c.value for c in at.caption)
    at.session_state["dataset"] = "demo"


def test_data_page_switches_to_a_folder_and_refuses_a_bad_one(app, tiny_data, tmp_path):
    at = app
    at.session_state["dataset"] = "demo"
    open_page(at, "data")
    at.button_group(key="data_source").set_value("Folder path").run()
    at.text_input[0].set_value(str(tmp_path / "missing"))  # typed, then submitted (the form's button, or Enter)
    at.button[0].click().run()
    assert at.error and "does not exist" in at.error[0].value
    assert at.session_state["dataset"] == "demo"

    at.text_input[0].set_value(str(tiny_data))
    at.button[0].click().run()
    assert not at.exception
    assert at.session_state["dataset"] == str(tiny_data)


def test_data_page_takes_a_zip_upload(app, tiny_data, tmp_path):
    archive = Path(shutil.make_archive(str(tmp_path / "cells"), "zip", tiny_data.parent, tiny_data.name))
    at = app
    at.session_state["dataset"] = "demo"
    open_page(at, "data")
    at.button_group(key="data_source").set_value("Zip upload").run()
    at.file_uploader[0].upload("my cells.zip", archive.read_bytes(), "application/zip")
    at.run()  # the upload is the one action: it is used at once
    assert not at.exception and not at.error
    spec = at.session_state["dataset"]
    # stored in a folder named by its content, under its own (safe) name, and called by it
    assert Path(spec).parent.parent == paths.uploads() and Path(spec).name == "my cells.zip"
    assert any("my cells.zip (uploaded)" in m.value.replace("\\", "") for m in at.markdown)
    expected = data.inspect(data.open_dataset(str(tiny_data)))["per_class"]
    assert {m.label: m.value for m in at.metric}["Class all"] == str(expected["all"])


def test_train_settings_follow_the_preset_defaults(app):
    at = app
    at.query_params["backbone"] = "vgg16"  # as the overview's link for VGG16 asks
    open_page(at, "train")
    assert at.button_group(key="train_backbone").value == "vgg16"
    assert at.button_group(key="train_weights").value == "none"  # tests never have ImageNet weights
    assert any("not in torchvision's cache" in c.value for c in at.caption)
    quick = config.preset_defaults("quick", "vgg16", "none")
    assert at.number_input(key="train_image_size").value == quick["image_size"]
    assert at.select_slider(key="train_lr").value == quick["lr"]
    at.number_input(key="train_epochs").set_value(7).run()
    assert at.number_input(key="train_epochs").value == 7  # an edit stays

    at.button_group(key="train_preset").set_value("paper").run()
    paper = config.preset_defaults("paper", "vgg16", "none")
    assert (at.number_input(key="train_image_size").value, at.number_input(key="train_epochs").value,
            at.number_input(key="train_batch_size").value) == (paper["image_size"], paper["epochs"],
                                                                paper["batch_size"])
    at.button_group(key="train_backbone").set_value("resnet50").run()
    resnet = config.preset_defaults("paper", "resnet50", "none")
    assert at.number_input(key="train_epochs").value == resnet["epochs"]
    assert at.query_params["backbone"] == "resnet50"
    assert not at.exception


def test_train_shows_a_finished_configuration_at_once_as_cached(app, tiny_data):
    """Settings that already finished show that run's results as they are chosen (no Start needed), marked
    cached, above the settings; Start then changes nothing."""
    at = app
    at.query_params["backbone"] = "googlenet"
    open_page(at, "train")
    before = {p.name for p in runs.runs_root().iterdir()}
    at.number_input(key="train_image_size").set_value(32)
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="train_batch_size").set_value(64).run()
    run = finished(tiny_data)["googlenet"]
    assert at.session_state["train_settings_open"] is True  # open until Start
    for click in (False, True):
        if click:
            next(b for b in at.button if b.label == "Start training").click().run()
        assert not at.exception
        assert at.query_params["run"] == run.run_id
        assert any("Cached" in i.value for i in at.info)
        assert {m.label: m.value for m in at.metric}["Val. accuracy"] == f"{run.final_metrics()['val_acc']:.1%}"
        assert len(at.get("plotly_chart")) == 1
        assert at.subheader[0].value.startswith(f"Run {run.run_id}")
    assert at.expander[0].label == "Settings" and at.session_state["train_settings_open"] is False  # Start folds
    assert {p.name for p in runs.runs_root().iterdir()} == before  # nothing new was created or launched


def test_train_reattaches_from_the_url(app, tiny_data):
    at = app
    run = finished(tiny_data)["resnet50"]
    at.query_params["run"] = run.run_id
    open_page(at, "train")
    assert at.subheader[0].value == f"Run {run.run_id} · ResNet50 · seed 0"
    assert any("Finished" in s.value for s in at.success)


def test_train_shows_a_failed_runs_error_and_offers_a_retry(app, tiny_data):
    run = runs.run_for(tiny_config("googlenet", tiny_data, epochs=3, lr=3e-3))
    runs.write_status(run, "failed", error="WeightsUnavailable: put <resnet50.pth> in ~/.cache")
    at = app
    at.query_params["run"] = run.run_id
    open_page(at, "train")
    assert any("failed" in e.value for e in at.error)
    assert at.code[0].value == "WeightsUnavailable: put <resnet50.pth> in ~/.cache"  # plain text, as written
    labels = [b.label for b in at.button]
    assert "Retry from scratch" in labels and "Resume" not in labels  # nothing to resume from


@pytest.mark.integration
def test_train_starts_a_run_which_stops_and_offers_resume(app, tiny_data):
    at = app
    at.query_params["backbone"] = "googlenet"
    open_page(at, "train")
    at.number_input(key="train_image_size").set_value(32)
    at.number_input(key="train_epochs").set_value(2)  # a configuration not trained yet
    at.number_input(key="train_batch_size").set_value(16).run()
    next(b for b in at.button if b.label == "Start training").click().run()
    run = runs.get_run(at.query_params["run"])
    assert run.config.epochs == 2
    assert len(at.get("progress")) == 1  # the live panel is drawn, polling
    deadline = time.time() + 90
    while run.state not in ("running", "finished") and time.time() < deadline:
        time.sleep(0.5)
    at.run()
    stop = next(b for b in at.button if b.label in ("Stop", "Stopping…"))
    if run.state == "running":
        stop.click().run()
    launch = processes.LAUNCHES[run.dir]
    launch.proc.wait(timeout=120)
    assert run.state in ("stopped", "finished")
    at.run()
    assert not at.exception
    if run.state == "stopped":
        labels = [b.label for b in at.button]
        assert "Retry from scratch" in labels and "Resume" in labels
        assert any("stopped" in w.value for w in at.warning)


def test_predict_gives_one_prediction_per_trained_model_and_survives_bad_files(app, tiny_data):
    at = open_page(app, "predict")
    assert len(at.multiselect[0].value) == len(BACKBONES)  # both healthy: both preselected
    good = next((tiny_data / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.png"))
    uploader = at.file_uploader[0]
    uploader.upload(good.name, good.read_bytes(), "image/png")
    uploader.upload("empty.png", b"", "image/png")
    uploader.upload("notes.png", b"this is not an image", "image/png")
    uploader.upload("cut.png", good.read_bytes()[:200], "image/png")
    at.run()
    assert not at.exception
    assert [m.value for m in at.metric if m.label == "Prediction"] != []
    predictions = [m.value for m in at.metric if m.label == "Prediction"]
    assert len(predictions) == len(BACKBONES) and set(predictions) <= {"hem", "all"}
    confidences = [m.value for m in at.markdown if m.value.endswith("% confidence")]
    assert len(confidences) == len(BACKBONES)
    errors = [e.value for e in at.error]
    assert len(errors) == 3
    for name in ("empty", "notes", "cut"):
        assert any(dashboard.plain(f"{name}.png") in e for e in errors)
    assert len(at.get("plotly_chart")) == len(BACKBONES)


def test_predict_demo_cells_in_one_click(app):
    at = open_page(app, "predict")
    next(b for b in at.button if b.label == "Try demo cells").click().run()
    assert not at.exception
    assert len([m for m in at.metric if m.label == "Prediction"]) == 3 * len(BACKBONES)
    assert len([m for m in at.markdown if "true class" in m.value]) == 3


def test_predict_demo_cells_show_first_beside_uploads_and_cards_page(app, tiny_data):
    at = open_page(app, "predict")
    cells = sorted((tiny_data / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.png"))[:7]
    for c in cells:
        at.file_uploader[0].upload(c.name, c.read_bytes(), "image/png")
    at.run()
    next(b for b in at.button if b.label == "Try demo cells").click().run()
    assert not at.exception
    headings = [m.value for m in at.markdown if m.value.startswith("#### ")]
    assert len(headings) == 6 and all("demo cell" in h for h in headings[:3])  # first, on the first page
    at.number_input(key="predict_page").set_value(2).run()  # 3 demo cells + 7 uploads: 2 pages of 6
    assert len([m for m in at.markdown if m.value.startswith("#### ")]) == 4


def test_predict_with_grad_cam_gives_one_overlay_per_model(app, tiny_data):
    at = open_page(app, "predict")
    good = next((tiny_data / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.png"))
    at.file_uploader[0].upload(good.name, good.read_bytes(), "image/png")
    at.run()
    assert not at.exception
    assert not [c for im in at.image for c in im.captions if c.startswith("Grad-CAM")]  # off by default
    at.toggle(key="predict_cam").set_value(True).run()
    assert not at.exception and not at.error
    captions = [c for im in at.image for c in im.captions if c.startswith("Grad-CAM")]
    cams = [c for c in captions if c != "Grad-CAM: low → high"]
    assert len(cams) == len(BACKBONES) and captions.count("Grad-CAM: low → high") == len(BACKBONES)  # each its scale
    assert all("1×1 map" in c and "too coarse" in c for c in cams)  # 32 px models: 1/32 of the side


def test_predict_several_files_give_a_downloadable_table(app, tiny_data):
    at = open_page(app, "predict")
    goods = sorted((tiny_data / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.png"))[:2]
    for g in goods:
        at.file_uploader[0].upload(g.name, g.read_bytes(), "image/png")
    at.file_uploader[0].upload("notes.png", b"this is not an image", "image/png")
    at.run()
    assert not at.exception
    summary = at.dataframe[0].value  # the answer first: a row per model, counts per predicted class
    summary = summary[summary["Images"] == prediction.ALL_ROWS]  # (then, when any, without flagged images)
    assert len(summary) == len(BACKBONES) and (summary["Readable"] == 2).all()
    called = summary[[c for c in summary.columns if c.startswith("Called ")]]
    assert called.apply(lambda col: col.str.split(" ").str[0].astype(int)).sum(axis=1).eq(2).all()  # 2 readable
    table = next(d.value for d in at.dataframe if "file" in d.value.columns)
    assert len(table) == 3 * len(BACKBONES)
    assert set(table["file"]) == {g.name for g in goods} | {"notes.png"}
    assert (table["error"] != "").sum() == len(BACKBONES)
    assert [b for b in at.get("download_button") if b.proto.label == "Download the table (CSV)"]


def test_compare_shows_an_error_gallery_and_export_section(app, tiny_data):
    at = open_page(app, "compare")
    assert "Error gallery" in [h.value for h in at.subheader]
    assert "Export" in [h.value for h in at.subheader]
    captions = [c for im in at.image for c in im.captions if c.startswith("true ")]
    runs_table = next(d.value for d in at.dataframe if "run_id" in d.value.columns)
    assert 0 < len(captions) <= 8 * len(runs_table)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels.count("Checkpoint (safetensors)") == len(runs_table)
    assert [b for b in at.button if b.label == "Export to ONNX"]
    assert not at.error


def test_compare_shows_each_finished_runs_metrics(app, tiny_data):
    at = open_page(app, "compare")
    table = next(d.value for d in at.dataframe if "run_id" in d.value.columns)  # each run's own row
    by_run = finished(tiny_data)
    assert set(table["run_id"]) >= {r.run_id for r in by_run.values()}
    for run in by_run.values():
        row = table[table["run_id"] == run.run_id].iloc[0]
        assert row["val_accuracy"] == pytest.approx(run.final_metrics()["val_acc"])
        assert row["weighted_f1"] == pytest.approx(run.final_metrics()["val_f1"])
        assert row["ms_per_image"] > 0 and row["params_m"] > 1
        assert row["weights"] == "none"
    # intervals, reliability, curves, ROC, and a confusion matrix per run
    assert len(at.get("plotly_chart")) == 4 + len(table)
    # each saves as PNG (print resolution) from its camera button, or as SVG once the sidebar says so
    def saves() -> list[dict]:
        return [json.loads(c.proto.config)["toImageButtonOptions"] for c in at.get("plotly_chart")]

    assert all(o["format"] == "png" and o["scale"] == 3 for o in saves())
    assert len({o["filename"] for o in saves()}) == len(saves())  # each named after itself
    at.radio(key="figure_format").set_value("svg").run()
    assert all(o["format"] == "svg" for o in saves())
    at.switch_page("leukviz/ui/train.py").run()
    at.switch_page("leukviz/ui/compare.py").run()
    assert at.radio(key="figure_format").value == "svg" and all(o["format"] == "svg" for o in saves())
    assert "split by subject" in at.selectbox[0].options[0]


def html_table(body: str) -> pd.DataFrame:
    """An HTML table's cells as text (the first row the header, each row's first cell its name)."""
    from html.parser import HTMLParser

    rows: list[list[str]] = []

    class Cells(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                rows.append([])
            elif tag in ("td", "th"):
                rows[-1].append("")

        def handle_data(self, text):
            if rows and rows[-1]:
                rows[-1][-1] += text

    Cells().feed(body)
    return pd.DataFrame([r[1:] for r in rows[1:]], index=[r[0] for r in rows[1:]], columns=rows[0][1:])


def test_compare_shows_intervals_a_verdict_and_the_ensemble(app, tiny_data):
    at = open_page(app, "compare")
    assert "Is the difference real?" in [h.value for h in at.subheader]
    frames = [d.value for d in at.dataframe]
    stats = next(f for f in frames if "Set" in f.columns)
    n = len(finished(tiny_data))
    # the answer first: one sentence per set, then the pairwise matrix (models x models, row minus column)
    answers = [i.value.replace("\\", "") for i in at.info if " is best on " in i.value.replace("\\", "")]
    assert len(answers) == 2 and answers[0].split(" is best on ")[1].startswith("validation weighted F1")
    models = list(stats[stats["Set"] == "validation"]["Model"])
    # the matrix is an HTML table that wraps (it fits 1366 px with many models), not a scrolling dataframe
    matrices = [html_table(h.proto.body) for h in at.get("html") if "lv-matrix" in h.proto.body]
    assert len(matrices) == 2  # validation and test tabs: every pair once (row minus column)
    assert list(matrices[0].index) == models[:-1] and list(matrices[0].columns) == models[1:]
    cell = matrices[0].iloc[0, 0]
    assert re.fullmatch(r"[✓~=] [+−]\d\.\d{3} ?\[[+−]\d\.\d{3}, [+−]\d\.\d{3}\] p [<=] [\d.]+", cell), cell
    assert all(matrices[0].iloc[i, j] == "" for i in range(n) for j in range(i))  # below the diagonal: empty
    val = stats[stats["Set"] == "validation"]
    assert list(val["Model"]).count(f"Ensemble of {n}") == 1 and len(val) == n + 1
    # tiny_data has a labelled preliminary test set: every run was scored on it once, shown beside validation
    test = stats[stats["Set"] == "test (held out)"]
    assert list(test["Model"]) == list(val["Model"])
    assert list(stats["Set"])[:2] == ["validation", "test (held out)"]
    assert stats["weighted F1 95 % CI"].str.fullmatch(r"\d\.\d{3} to \d\.\d{3}").all()
    lows = stats["weighted F1 95 % CI"].str.split(" to ").str[0].astype(float)
    highs = stats["weighted F1 95 % CI"].str.split(" to ").str[1].astype(float)
    assert (lows <= highs).all()
    verdicts = [m.value for m in at.markdown if " − " in m.value]
    assert len(verdicts) >= n and all("no clear difference" in v or "better" in v for v in verdicts)
    assert any("bootstrap over subjects" in c.value for c in at.caption)
    # calibration: a temperature per run, ECE raw -> calibrated on validation and on the test set
    cal = next(f for f in frames if "Temperature" in f.columns)
    assert len(cal) == n and (cal["Temperature"] > 0).all()
    assert cal["ECE validation"].str.contains(" → ").all() and cal["ECE test"].str.contains(" → ").all()


def test_compare_takes_one_run_named_several_times_in_the_address_once(app, tiny_data):
    """/compare?runs=ID,ID,ID (issue 35): no duplicate element key, the run compared once, and a note says so."""
    run = next(iter(finished(tiny_data).values()))
    app.query_params["runs"] = ",".join([run.run_id] * 3)
    at = open_page(app, "compare")
    assert at.multiselect[0].value == [run.run_id]
    assert any("named a run more than once" in c.value for c in at.caption)


def test_pages_say_what_to_do_without_runs(home, tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKVIZ_RUNS", str(tmp_path / "no-runs"))
    for page in ("predict", "compare"):
        at = open_page(AppTest.from_file(str(REPO / "app.py"), default_timeout=60), page)
        assert at.info and "train" in at.info[0].value.lower()
    at = open_page(AppTest.from_file(str(REPO / "app.py"), default_timeout=60), "train")
    assert any("No run yet" in i.value for i in at.info)


def test_a_missing_dataset_is_an_error_where_the_user_looks(app, tmp_path):
    at = app
    at.session_state["dataset"] = str(tmp_path / "gone")
    open_page(at, "train")
    assert at.error and "does not exist" in at.error[0].value
    open_page(at, "data")
    assert at.error and "does not exist" in at.error[0].value
    assert at.button_group(key="data_source").value == "Folder path"  # the way out is right there


def test_compare_exports_a_run_to_onnx(app, tiny_data, monkeypatch):
    """The page's part: the button exports, the file is offered, the check is said. The export itself (ONNX
    Runtime against PyTorch) is tests/test_export.py's; here it writes a stand-in file in a fraction of the time."""
    from leukviz.serving import export

    def stand_in(run_dir, fmt, out):
        Path(out).write_bytes(b"onnx stand-in")
        return {"run_id": Path(run_dir).name, "format": fmt, "path": str(out), "bytes": 13, "opset": 18,
                "check_images": 8, "max_abs_diff": 3e-7, "tolerance": export.ONNX_TOLERANCE, "agrees": True}

    monkeypatch.setattr(export, "export_run", stand_in)
    run = finished(tiny_data)["googlenet"]
    at = open_page(app, "compare")
    next(b for b in at.button if b.key == f"onnx_{run.run_id}").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [b for b in at.get("download_button") if b.proto.label == "Download ONNX"]
    assert any("max probability difference" in c.value for c in at.caption)


def test_train_shows_why_a_run_stopped_early(app, tiny_data):
    """A run that ended early says so, with its reason, beside its results."""
    from leukviz.core import filenames
    from leukviz.training import callbacks

    src = finished(tiny_data)["googlenet"]
    run = runs.run_for(tiny_config("googlenet", tiny_data, epochs=9, patience=2))
    for name in (filenames.CHECKPOINT, filenames.SIDECAR, filenames.METRICS, filenames.STATUS):
        shutil.copy(src.dir / name, run.dir / name)
    with open(run.dir / filenames.METRICS, "a") as fh:
        fh.write(json.dumps(callbacks.early_stop_event(4, 2, 2)) + "\n")
    at = app
    at.query_params["run"] = run.run_id
    open_page(at, "train")
    assert any(i.value.replace("\\", "").startswith("Stopped early at epoch 4: no better validation weighted F1 "
                                                      "for 2 epochs") for i in at.info)
    at.number_input(key="train_patience").set_value(3).run()
    assert not at.exception


def test_train_offers_the_staged_schedule_with_its_head_only_epochs(app, tiny_data):
    """Fine-tuning depth "staged" asks for its head-only epochs (no other depth does) and the run gets them;
    as many head-only epochs as epochs is refused in words."""
    at = app
    at.query_params["backbone"] = "googlenet"
    open_page(at, "train")
    assert not [n for n in at.number_input if n.key == "train_head_epochs"]
    at.selectbox(key="train_finetune").set_value("staged").run()
    at.number_input(key="train_head_epochs").set_value(2).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = json.loads(at.json[-1].value)  # "Every setting of this run"
    assert shown["finetune"] == "staged" and shown["head_epochs"] == 2
    at.number_input(key="train_epochs").set_value(2).run()
    assert any("head_epochs must be at least 1 and below epochs" in e.value.replace("\\", "") for e in at.error)


@pytest.mark.integration
def test_train_lr_finder_sweeps_in_the_background_and_one_click_uses_its_suggestion(app, tiny_data):
    from leukviz.runstore import sweeps
    from leukviz.training import lrfind

    at = app
    at.query_params["backbone"] = "googlenet"
    open_page(at, "train")
    at.number_input(key="train_image_size").set_value(32)
    at.number_input(key="train_batch_size").set_value(64).run()
    next(b for b in at.button if b.label == "Find a learning rate").click().run()
    assert not at.exception
    bar = next(p.proto.text for p in at.get("progress") if "32 px, batch 64" in (p.proto.text or ""))
    assert bar.startswith(("Preparing data and model", "Finding a learning rate"))  # the settings on screen
    assert next(b for b in at.button if b.label.startswith("Start")).disabled  # not while it sweeps
    assert any(b.label == "Cancel" for b in at.button)
    cfg = config.resolve("googlenet", "quick", "none", str(tiny_data), image_size=32, batch_size=64)
    fp = data.open_dataset(tiny_data).fingerprint
    deadline = time.time() + 420  # a background process: slow when the machine is busy
    while sweeps.status(cfg, fp)[0] == "running" and time.time() < deadline:
        time.sleep(1)
    where, res = sweeps.status(cfg, fp)
    assert where == "done", res
    at.run()
    keep = lrfind.advise(res, at.select_slider(key="train_lr").value)  # the rate on screen, checked
    assert any(keep.text in c.value.replace("\\", "") for c in at.caption)
    assert any(b.label == f"{'Keep' if keep.keep else 'Use'} {keep.rate:g}" for b in at.button)
    at.select_slider(key="train_lr").set_value(0.1).run()  # far past the loss's basin: the finder says so
    advice = lrfind.advise(res, 0.1)
    assert not advice.keep and advice.rate < 0.1 and "outside the loss's basin" in advice.text
    use = next(b for b in at.button if b.label == f"Use {advice.rate:g}")
    use.click().run()
    assert not at.exception
    assert at.select_slider(key="train_lr").value == advice.rate
    # the rate used survives a backbone switch that its recipe does not own, and a visit to another page
    at.button_group(key="train_backbone").set_value("resnet50").run()
    at.switch_page("leukviz/ui/data.py").run()
    at.switch_page("leukviz/ui/train.py").run()
    assert at.select_slider(key="train_lr").value == advice.rate
    assert at.number_input(key="train_image_size").value == 32
