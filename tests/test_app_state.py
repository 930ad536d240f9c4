"""AppTest checks that the dashboard keeps what the user chose (backbone switch, page visit, reload through the
URL), never shows a degenerate model as finished, lets a run be deleted, and shows repeats as one group. The
runs are written by hand (helpers.make_run): no training here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from helpers import make_run
from leukviz.datasets import data
from leukviz.models import config
from leukviz.runstore import runs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_data) -> Path:
    """This module's LEUKVIZ_HOME with hand-made runs on tiny_data: two healthy seeds of one GoogLeNet
    configuration, a degenerate ResNet50 and a failed VGG16."""
    path = tmp_path_factory.mktemp("state-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEUKVIZ_HOME", str(path))
        root = runs.runs_root()
        fp = data.open_dataset(tiny_data).fingerprint
        for seed, f1 in ((0, 0.70), (1, 0.80)):
            run = make_run(root, "googlenet", fingerprint=fp, data_spec=str(tiny_data), seed=seed, split_seed=0,
                           created=seed)
            meta = run.dir / "model.json"
            meta.write_text(meta.read_text().replace('"val_f1": 0.74', f'"val_f1": {f1}'))
        bad = make_run(root, "resnet50", fingerprint=fp, data_spec=str(tiny_data), created=5)
        frame = pd.read_csv(bad.dir / "val_predictions.csv")
        frame["prob_all"], frame["prob_hem"] = 0.3, 0.7  # every validation cell called hem
        frame.to_csv(bad.dir / "val_predictions.csv", index=False)
        make_run(root, "vgg16", fingerprint=fp, data_spec=str(tiny_data), state="failed", created=6,
                 with_predictions=False)
        yield path


@pytest.fixture()
def app(home, tiny_data, monkeypatch) -> AppTest:
    monkeypatch.setenv("LEUKVIZ_HOME", str(home))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.session_state["dataset"] = str(tiny_data)
    return at


def by_backbone(backbone: str) -> list[runs.Run]:
    return sorted((r for r in runs.list_runs() if r.config.backbone == backbone), key=lambda r: r.config.seed)


def test_settings_survive_a_backbone_switch_a_page_visit_and_a_reload(app):
    at = app
    at.query_params["backbone"] = "googlenet"
    at.run()
    at.switch_page("leukviz/ui/train.py").run()
    at.number_input(key="train_image_size").set_value(32)
    at.number_input(key="train_epochs").set_value(2)
    at.number_input(key="train_repeats").set_value(2).run()
    at.button_group(key="train_backbone").set_value("vgg16").run()  # VGG16's recipe owns the rate only
    vgg = config.preset_defaults("quick", "vgg16", "none")
    assert (at.number_input(key="train_image_size").value, at.number_input(key="train_epochs").value) == (32, 2)
    assert at.select_slider(key="train_lr").value == vgg["lr"]
    assert any("VGG16's recipe set learning rate" in i.value.replace("\\", "") for i in at.info)
    at.switch_page("leukviz/ui/compare.py").run()
    at.switch_page("leukviz/ui/train.py").run()
    assert at.number_input(key="train_repeats").value == 2 and at.number_input(key="train_epochs").value == 2
    url = dict(at.query_params)
    assert url["size"] == "32" and url["backbone"] == "vgg16" and url["repeats"] == "2"
    assert not at.exception

    # A reload is a new session on the same URL: the dataset, split and settings come back from it.
    again = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    for key, value in url.items():
        again.query_params[key] = value
    again.run()
    again.switch_page("leukviz/ui/train.py")
    for key, value in url.items():  # st.navigation keeps a deep link's query string
        again.query_params[key] = value
    again.run()
    assert again.session_state["dataset"] == at.session_state["dataset"]
    assert again.number_input(key="train_image_size").value == 32
    assert again.button_group(key="train_backbone").value == "vgg16"
    assert again.number_input(key="train_repeats").value == 2
    assert not again.exception


def test_a_degenerate_run_is_a_warning_everywhere_and_not_preselected(app):
    bad = by_backbone("resnet50")[0]
    at = app
    at.query_params["run"] = bad.run_id
    at.run()
    assert any("degenerate model" in w.value.lower() for w in at.warning)  # the overview's card
    at.switch_page("leukviz/ui/train.py")
    at.query_params["run"] = bad.run_id
    at.run()
    assert any("calls every validation cell hem" in w.value.replace("\\", "") for w in at.warning)
    assert not any("Finished." in s.value for s in at.success)
    at.switch_page("leukviz/ui/predict.py").run()
    chosen = at.multiselect[0].value
    assert bad.run_id not in chosen and chosen  # the healthy GoogLeNet is offered first
    at.switch_page("leukviz/ui/compare.py").run()
    assert bad.run_id not in at.multiselect[0].value
    assert any("degenerate" in w.value and "left out unless you choose it" in w.value for w in at.warning)
    at.multiselect[0].set_value([*at.multiselect[0].value, bad.run_id]).run()  # chosen: listed apart, not ranked
    apart = next(d.value for d in at.dataframe if "Why" in d.value.columns)
    assert len(apart) == 1 and "calls every validation cell hem" in apart["Why"].iloc[0]
    assert any("listed apart below, not ranked" in w.value for w in at.warning)


def test_a_failed_run_can_be_deleted_from_its_panel(app):
    failed = by_backbone("vgg16")[0]
    at = app
    at.switch_page("leukviz/ui/train.py")
    at.query_params["run"] = failed.run_id
    at.run()
    assert any("failed" in e.value for e in at.error)
    next(b for b in at.button if b.key == f"delete_{failed.run_id}").click().run()
    assert not at.exception
    assert failed.run_id not in {r.run_id for r in runs.list_runs()}
    assert any(failed.run_id in s.value for s in at.success)
    assert (runs.runs_root() / ".archive").is_dir()


def test_repeats_are_shown_as_one_group_with_their_mean(app):
    seeds = by_backbone("googlenet")
    at = app
    at.switch_page("leukviz/ui/train.py")
    at.query_params["run"] = seeds[1].run_id
    at.run()
    text = " ".join(m.value for m in at.markdown)
    assert "Repeats of this configuration: 2 seeds" in text
    assert "Seed 0" in text and "Seed 1 (shown)" in text
    assert "0.750 ± 0.071" in text  # mean ± sd of the seeds' validation weighted F1 (0.70, 0.80)
    at.switch_page("leukviz/ui/home.py").run()
    assert any(m.value == "0.750 ± 0.071" and "2 seeds" in m.label for m in at.metric)
