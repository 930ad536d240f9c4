"""Tests for leukviz.dashboard: what the pages show, computed from hand-made run folders and tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import make_run
from leukviz.app import dashboard, datapage
from leukviz.core import paths
from leukviz.datasets import data
from leukviz.models import backbones, config
from leukviz.runstore import names, runs

# ---------------------------------------------------------------------------------------------- text

def test_plain_escapes_everything_markdown_could_interpret():
    nasty = "**b** _i_ `c` [l](http://x) <b>h</b> $x$ :red[r] :material/home: # h 1. x | t ~s~ &amp;"
    out = dashboard.plain(nasty)
    for ch in "*_`[]()<>$:#.|~&":
        assert ch not in out.replace("\\" + ch, "")  # every occurrence is escaped
    assert out.replace("\\", "") == nasty
    assert dashboard.plain("two\nlines") == "two lines"


def test_labels_and_durations():
    assert names.dataset_label("demo") == "built-in demo"
    assert names.dataset_label("/data/sets/C-NMC_Leukemia") == "sets/C-NMC_Leukemia"
    assert names.format_duration(None) == "–"
    assert names.format_duration(42.4) == "42 s"
    assert names.format_duration(125) == "2 min 05 s"
    assert names.format_duration(3 * 3600 + 120) == "3 h 02 min"


# ---------------------------------------------------------------------------------------------- progress

def test_progress_fraction_and_eta_from_events():
    events = [{"type": "start", "epoch": 0, "epochs": 2, "steps_per_epoch": 10, "time": 0.0}]
    assert dashboard.progress(events).eta is None
    events.append({"type": "batch", "epoch": 1, "step": 5, "steps": 10, "loss": 0.6, "time": 10.0})
    p = dashboard.progress(events)
    assert p.fraction == pytest.approx(5 / 20)
    assert p.eta == pytest.approx(30.0)  # 5 steps in 10 s, 15 to go
    assert (p.epoch, p.step) == (1, 5)
    events.append({"type": "epoch", "epoch": 1, "epochs": 2, "time": 22.0})
    p = dashboard.progress(events)
    assert p.fraction == pytest.approx(0.5) and p.eta == pytest.approx(22.0)
    assert "Epoch 1 of 2" in p.text and "left" in p.text


def test_progress_measures_the_rate_since_a_resume():
    events = [{"type": "start", "epoch": 0, "epochs": 2, "steps_per_epoch": 10, "time": 0.0},
              {"type": "batch", "epoch": 1, "step": 10, "steps": 10, "time": 1000.0},
              {"type": "epoch", "epoch": 1, "epochs": 2, "time": 1000.0},
              {"type": "resume", "epoch": 1, "step": 0, "epochs": 2, "steps_per_epoch": 10, "time": 5000.0},
              {"type": "batch", "epoch": 2, "step": 2, "steps": 10, "time": 5004.0}]
    p = dashboard.progress(events)
    assert p.fraction == pytest.approx(12 / 20)
    assert p.eta == pytest.approx(16.0)  # 2 steps in 4 s since the resume; the long pause does not count


def test_progress_before_any_event():
    p = dashboard.progress([])
    assert p.fraction == 0 and p.eta is None and "Preparing" in p.text


def test_backbone_cards(tmp_path):
    make_run(tmp_path, "googlenet", created=1)
    make_run(tmp_path, "resnet50", state="failed", created=2, with_predictions=False)
    make_run(tmp_path, "vgg16", data_spec="/elsewhere", created=3)  # another dataset: not on the card
    cards = {c.backbone: c for c in dashboard.backbone_cards("demo", tmp_path)}
    assert list(cards) == list(backbones.BACKBONES)
    assert cards["googlenet"].state == "finished" and cards["googlenet"].val_acc == 0.75
    assert cards["googlenet"].val_f1 == 0.74 and cards["googlenet"].text == "Finished"
    assert cards["resnet50"].state == "failed" and cards["resnet50"].error == "boom"
    assert cards["vgg16"].state == "none" and cards["vgg16"].text == "No run yet"


def test_find_run_creates_nothing(tmp_path):
    cfg = config.resolve("googlenet", "quick", "none", "demo")
    assert dashboard.find_run(cfg, "fp", tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    made = runs.run_for(cfg, tmp_path, fingerprint="fp")
    assert dashboard.find_run(cfg, "fp", tmp_path).dir == made.dir


def test_default_models_come_from_the_active_dataset_only(tmp_path):
    a = make_run(tmp_path, "googlenet", data_spec="/a", created=3)
    b = make_run(tmp_path, "googlenet", data_spec="/b", created=2, lr=3e-3)
    c = make_run(tmp_path, "resnet50", data_spec="/b", created=1)
    finished = dashboard.finished_runs(tmp_path)
    assert [r.run_id for r in finished] == [a.run_id, b.run_id, c.run_id]
    assert [r.run_id for r in dashboard.default_models(finished, "/b")] == [c.run_id, b.run_id]  # registry order
    assert dashboard.default_models(finished, "/none") == []  # none from another dataset: the user picks


# ---------------------------------------------------------------------------------------------- data page

def test_sample_and_demo_cells(tiny_data):
    ds = data.open_dataset(str(tiny_data))
    samples = datapage.sample_cells(ds, per_class=4)
    assert list(samples) == list(ds.classes)
    for cls, files in samples.items():
        assert len(files) == 4
        assert all(f"_{cls}." in Path(p).name for p in files)  # C-NMC names end in the class
    cells = datapage.demo_cells(ds, n=3, seed=0)
    assert len(cells) == 3
    prelim = set(ds.index.loc[ds.index["set"] == "prelim", "path"])
    assert all(p in prelim for p, _ in cells)
    assert {c for _, c in cells} == set(ds.classes)  # both classes get a turn
    for p, c in cells:
        assert ds.classes[int(ds.index.loc[ds.index["path"] == p, "label"].iloc[0])] == c
    assert datapage.demo_cells(ds, n=3, seed=1) != cells


def test_augment_preview_uses_the_training_transforms():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    dihedral = [np.rot90(v, k) for v in (img, img[:, ::-1]) for k in range(4)]
    views = datapage.augment_preview(img, "flips", n=4)
    assert len(views) == 4
    for caption, v in views:
        assert v.shape == img.shape and v.dtype == np.uint8
        # a real flip or turn, never the original
        assert any(np.array_equal(v, d) for d in dihedral[1:]), caption
    full = datapage.augment_preview(img, "full", n=3)
    assert all("jitter" in c for c, _ in full)
    assert not any(np.array_equal(v, d) for _, v in full for d in dihedral)
    assert datapage.augment_preview(img, "none")[0][1] is img


def test_run_name_and_description():
    cfg = config.resolve("vgg16", "paper", "none", "demo")
    text = names.describe_config(cfg)
    assert text.startswith("VGG16, paper preset") and "128 px" in text and "split by subject" in text
    folds = config.resolve("resnet50", split="folds", weights="none")
    assert names.split_text(folds).startswith("official folds")
    assert json.dumps(cfg.to_dict())  # what the Train page's settings expander shows


def test_the_eta_counts_validation_before_and_after_the_first_epoch():
    events = [{"type": "start", "epoch": 0, "epochs": 2, "steps_per_epoch": 10, "n_train": 300, "n_val": 100,
               "time": 0.0},
              {"type": "batch", "epoch": 1, "step": 5, "steps": 10, "time": 10.0}]
    p = dashboard.progress(events)
    assert p.eta == pytest.approx(30.0 * (1 + 100 / 900))  # 15 training steps, plus the validations' forward
    events += [{"type": "batch", "epoch": 1, "step": 10, "steps": 10, "time": 20.0},
               {"type": "epoch", "epoch": 1, "epochs": 2, "seconds": 26.0, "time": 26.0}]
    assert dashboard.progress(events).eta == pytest.approx(26.0)  # a whole epoch, its validation included


def test_settings_come_back_from_the_url_and_bad_values_are_ignored():
    url = {"dataset": "/data/x", "split": "groups", "backbone": "vgg16", "size": "32", "epochs": "2",
           "lr": "4.8e-05", "repeats": "2", "preset": "nonsense", "batch": "-3", "patience": "1.5"}
    got = dashboard.settings_from_url(url)
    assert got == {"dataset": "/data/x", "split": "groups", "train_backbone": "vgg16", "train_image_size": 32,
                   "train_epochs": 2, "train_lr": 4.8e-05, "train_repeats": 2}
    back = dashboard.settings_to_url(got, dashboard.URL_SETTINGS)
    assert back["lr"] == "4.8e-05" and back["size"] == "32" and "preset" not in back
    assert dashboard.settings_from_url(dashboard.settings_to_url(got, [*dashboard.URL_SETTINGS, *dashboard.URL_DATA])) == got


def test_a_backbone_switch_changes_only_what_its_recipe_owns():
    old = config.preset_defaults("quick", "googlenet", "none")
    new = config.preset_defaults("quick", "vgg16", "none")
    current = {"image_size": 32, "epochs": 2, "batch_size": 32, "lr": 1e-3}
    changes = dashboard.recipe_changes(old, {k: new[k] for k in current}, current)
    assert changes == {"lr": (1e-3, new["lr"])}  # image size 32 and 2 epochs are the user's: kept
    text = dashboard.changes_text("VGG16's recipe", changes)
    assert text.startswith("VGG16's recipe set learning rate 0.0001 (was 0.001)") and "kept" in text


def test_an_uploaded_zip_is_called_by_its_own_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKVIZ_HOME", str(tmp_path))
    saved = data.save_upload(b"PK-bytes", paths.uploads(), name="../evil/cells 24.zip")
    assert saved.name == "cells 24.zip" and saved.parent.parent == paths.uploads()
    assert names.dataset_label(str(saved)) == "cells 24.zip (uploaded)"
    assert data.upload_name(tmp_path / "cells.zip") is None
