"""AppTest of the Predict page's calibrated confidence and its ensemble card, against two real tiny runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from helpers import link_runs
from leukviz.app import dashboard
from leukviz.runstore import runs
from leukviz.scoring import calibration
from leukviz.serving import inference, prediction

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, app_runs) -> list[runs.Run]:
    """This module's own LEUKVIZ_HOME with the session's two finished 32 px, one-epoch runs on tiny_data
    (linked, not trained again)."""
    home = tmp_path_factory.mktemp("app-predict-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEUKVIZ_HOME", str(home))
        yield link_runs(app_runs.values(), runs.runs_root())


@pytest.fixture()
def page(trained, tiny_data) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.session_state["dataset"] = str(tiny_data)
    at.run()
    at.switch_page("leukviz/ui/predict.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def upload_one(at: AppTest, tiny_data: Path) -> Path:
    cell = sorted((tiny_data / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.png"))[0]
    at.file_uploader[0].upload(cell.name, cell.read_bytes(), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return cell


def test_predict_says_the_confidence_is_calibrated_and_shows_the_ensemble_of_two(page, trained, tiny_data):
    at = page
    assert sorted(at.multiselect[0].value) == sorted(r.run_id for r in trained)
    cell = upload_one(at, tiny_data)
    fits = {r.run_id: calibration.run_calibration(r.dir) for r in trained}
    assert all(f["calibrated"] and f["temperature"] != 1.0 for f in fits.values())

    models = [inference.load_model(r.dir) for r in trained]
    expected = prediction.predict_image([m for m in models if m.run_dir.name in at.multiselect[0].value],
                                        cell.name, cell.read_bytes())
    by_run = {r.run_id: r for r in expected.results}
    captions = [c.value for c in at.caption if "calibrated on validation" in c.value]
    assert len(captions) == 2
    for p in by_run.values():
        assert dashboard.plain(f"T = {fits[p.run_id]['temperature']:.2f}") in " ".join(captions)
        assert dashboard.plain(f"raw {p.confidence_raw:.1%}") in " ".join(captions)
    shown = [m.value for m in at.markdown if m.value.endswith("% confidence")]
    assert sorted(shown) == sorted(f"{p.confidence:.1%} confidence" for p in by_run.values())

    assert "**Ensemble (mean of 2 models)**" in [m.value for m in at.markdown]
    mix = prediction.ensemble(expected)
    mean_all = np.mean([p.probs["all"] for p in expected.results])
    assert mix.probs["all"] == pytest.approx(mean_all)
    assert [m.value for m in at.metric if m.label == "Ensemble prediction"] == [mix.predicted]
    assert mix.text.startswith(f"{mix.confidence:.1%}, the mean of the models' calibrated probabilities")
    assert dashboard.plain(mix.text) in [m.value for m in at.markdown]
    assert len([m for m in at.metric if m.label == "Prediction"]) == 2  # the ensemble is a card of its own


def test_one_model_gets_no_ensemble_card(page, trained, tiny_data):
    at = page
    at.multiselect[0].set_value([trained[0].run_id]).run()
    upload_one(at, tiny_data)
    assert [m.label for m in at.metric] == ["Prediction"]
    assert not [m for m in at.markdown if m.value.startswith("**Ensemble")]
    assert len([c for c in at.caption if "calibrated on validation" in c.value]) == 1


def test_a_real_cnmc_cell_gets_the_out_of_distribution_warning_and_a_demo_cell_does_not(page, trained, tiny_data,
                                                                                        cnmc_mini):
    at = page
    at.multiselect[0].set_value([trained[0].run_id]).run()
    cell = sorted((cnmc_mini / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.bmp"))[0]
    at.file_uploader[0].upload(cell.name, cell.read_bytes(), "image/bmp")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning if dashboard.plain(prediction.OOD_TITLE) in w.value]
    assert len(warnings) == 1
    assert dashboard.plain("size 450x450 px, the training images were 64x64 px") in warnings[0]
    assert [m.label for m in at.metric] == ["Prediction"]  # the prediction is shown beside it, never hidden
    # its confidence greyed and marked as meaningless here
    assert any(m.value.startswith(":gray[") and m.value.endswith("% confidence]") for m in at.markdown)
    assert any(prediction.UNRELIABLE_TEXT in m.value.replace("\\", "") for m in at.markdown)

    fresh = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    fresh.session_state["dataset"] = str(tiny_data)
    fresh.run()
    fresh.switch_page("leukviz/ui/predict.py").run()
    fresh.multiselect[0].set_value([trained[0].run_id]).run()
    upload_one(fresh, tiny_data)
    assert [m.label for m in fresh.metric] == ["Prediction"]
    assert not [w for w in fresh.warning if dashboard.plain(prediction.OOD_TITLE) in w.value]
    assert not any(prediction.UNRELIABLE_TEXT in m.value.replace("\\", "") for m in fresh.markdown)


def test_a_zip_of_class_folders_gets_counts_accuracy_and_recall_against_its_folders(page, trained, tiny_data, tmp_path):
    """A batch whose zip carries all/ and hem/ folders: the summary above the table counts each predicted class
    and scores every model against the folders (the file names carry no class here)."""
    import io
    import zipfile

    cells = {c: sorted((tiny_data / "training_data" / "fold_0" / c).glob("*.png"))[:4] for c in ("all", "hem")}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for c, paths in cells.items():
            for i, p in enumerate(paths):
                z.writestr(f"batch/{c}/cell{i}{p.suffix}", p.read_bytes())
    page.file_uploader[0].upload("batch.zip", buf.getvalue(), "application/zip")
    page.run()
    assert not page.exception, [e.value for e in page.exception]
    every = page.dataframe[0].value
    table = next(d.value for d in page.dataframe if "file" in d.value.columns)
    summary = every[every["Images"] == prediction.ALL_ROWS]
    assert len(summary) == len(trained) and (summary["Readable"] == 8).all() and (summary["Known"] == 8).all()
    assert set(table["model"]) == set(summary["Model"])  # the table names each run, as the summary does

    def share(text: str) -> float:  # "62.5% (5/8)"
        k, n = text.split("(")[1].rstrip(")").split("/")
        return int(k) / int(n)

    for _, row in summary.iterrows():
        mine = table[table["run_id"].str.startswith(row["Model"].split(" · ")[1])]
        assert len(mine) == 8
        truth = mine["file"].str.split("/").str[-2]
        assert share(row["Accuracy"]) == pytest.approx((mine["predicted"] == truth).mean())
        for c in ("all", "hem"):
            assert share(row[f"Recall {c}"]) == pytest.approx((mine["predicted"][truth == c] == c).mean())
        called = sum(int(row[f"Called {c}"].split(" ")[0]) for c in ("all", "hem"))
        assert called == 8
    # these are the runs' own training cells (tiny_data's fold 0): found by their bytes, and said
    assert table["seen"].all()
    boxes = [w.value.replace("\\", "") for w in page.warning if "own training or validation images" in w.value.replace("\\", "")]
    assert len(boxes) == 1 and "8 of 8 are their own training or validation images" in boxes[0]  # said once for all
    # the zip's images get cards too, a page of six at a time, each with its class from its folder
    titles = [m.value.replace("\\", "") for m in page.markdown if m.value.replace("\\", "").startswith("#### batch.zip/")]
    assert len(titles) == 6 and all(" · true class **" in t for t in titles)
    assert page.number_input(key="predict_page").max == 2


def test_a_batch_larger_than_a_page_shows_one_page_of_cards_and_every_row(page, trained, tiny_data, monkeypatch):
    """14 loose cells and a zip of 6 more: the table has every image of every model; the cards show one page,
    decoded when shown (a page's images, not the batch's); the page size and the page survive reruns."""
    import io
    import zipfile

    from leukviz.datasets import data

    at = page
    at.multiselect[0].set_value([trained[0].run_id]).run()
    cells = sorted((tiny_data / "training_data" / "fold_0").rglob("*.png"))[:20]
    assert len(cells) == 20
    for c in cells[:14]:
        at.file_uploader[0].upload(c.name, c.read_bytes(), "image/png")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for c in cells[14:]:
            z.writestr(f"more/{c.name}", c.read_bytes())
    at.file_uploader[0].upload("more.zip", buf.getvalue(), "application/zip")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(d.value for d in at.dataframe if "file" in d.value.columns)
    assert len(table) == 20 and list(table["file"]) == [c.name for c in cells[:14]] + [f"more.zip/more/{c.name}"
                                                                                       for c in cells[14:]]

    def titles() -> list[str]:
        return [m.value.replace("\\", "") for m in at.markdown if m.value.startswith("#### ")]

    assert len(titles()) == 6 and at.number_input(key="predict_page").max == 4  # 20 images, 6 a page
    decoded = []
    real = data.decode_rgb
    monkeypatch.setattr(data, "decode_rgb", lambda *a, **k: decoded.append(1) or real(*a, **k))
    at.number_input(key="predict_page").set_value(4).run()  # the last page: the zip's last two images
    assert not at.exception, [e.value for e in at.exception]
    assert [t.split(" · ")[0] for t in titles()] == [f"#### more.zip/more/{c.name}" for c in cells[18:]]
    assert len(decoded) == 2  # only the shown page is read and decoded; the table is not made again
    assert any("Images 19–20 of 20" in c.value for c in at.caption)
    at.selectbox(key="predict_page_size").set_value(12).run()  # 2 pages now: the page held within them
    assert at.number_input(key="predict_page").value == 2 and at.number_input(key="predict_page").max == 2
    assert len(titles()) == 8
    at.toggle(key="predict_cam").set_value(False).run()  # another widget: the same page, nothing predicted again
    assert at.number_input(key="predict_page").value == 2 and len(titles()) == 8
    assert next(d.value for d in at.dataframe if "file" in d.value.columns).shape[0] == 20
