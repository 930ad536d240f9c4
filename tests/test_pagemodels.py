"""The Streamlit-free page models of the Data and Train pages (leukviz/app/datapage.py, trainpage.py): what the
pages decide, with explicit arguments, tested without a browser or AppTest."""

from __future__ import annotations

import numpy as np
import pandas as pd

from helpers import make_run
from leukviz.app import charts, dashboard, datapage, trainpage
from leukviz.datasets import data
from leukviz.models import backbones, config
from leukviz.scoring import health

T = trainpage


# ---------------------------------------------------------------------------------------------- Train

def test_first_settings_are_the_quick_presets_and_keep_what_the_state_has():
    first = T.first_settings({})
    backbone = next(iter(backbones.BACKBONES))
    d = config.preset_defaults("quick", backbone, "none" if first["train_weights"] == "none" else "imagenet")
    assert first["train_backbone"] == backbone and first["train_preset"] == "quick"
    assert first["train_weights"] == T.default_weights(backbone)
    assert (first["train_image_size"], first["train_lr"]) == (d["image_size"], d["lr"])
    assert first["train_repeats"] == 1 and first["train_patience"] == 0
    kept = T.first_settings({"train_backbone": "vgg16", "train_image_size": 48})
    assert kept["train_backbone"] == "vgg16" and kept["train_image_size"] == 48


def test_the_data_pages_preview_size_is_trains_default_until_set():
    assert datapage.preview_size({}) == (T.first_settings({})["train_image_size"], "the Train page's default")
    assert datapage.preview_size({"train_image_size": 128}) == (128, "set on the Train page")


def test_a_preset_replaces_the_settings_and_says_which_changed():
    state = {**T.first_settings({"train_backbone": "googlenet", "train_weights": "none"}), "train_image_size": 200}
    state["train_preset"] = "paper"
    updates, notice = T.preset_change(state)
    paper = config.preset_defaults("paper", "googlenet", "none")
    assert updates == {f"train_{n}": paper[n] for n in T.SETTINGS}
    assert "The Paper (seed paper's recipe) preset set" in notice and "image size 128 (was 200)" in notice


def test_a_backbone_switch_changes_only_what_its_recipe_owns():
    state = T.first_settings({"train_backbone": "googlenet", "train_weights": "none", "train_epochs": 7})
    state["train_backbone"] = "vgg16"
    updates, notice = T.recipe_switch(state, "googlenet", "none")
    old, new = (config.preset_defaults("quick", b, "none") for b in ("googlenet", "vgg16"))
    assert set(updates) == {f"train_{n}" for n in T.SETTINGS if old[n] != new[n]}
    assert "train_epochs" not in updates or old["epochs"] != new["epochs"]  # the user's 7 kept unless owned
    assert notice.startswith("VGG16's recipe")
    state = {**state, "train_weights": "imagenet"}  # tests have no ImageNet weights: from scratch, said so
    updates, notice = T.recipe_switch({**state, "train_backbone": "resnet50"}, "vgg16", "imagenet")
    assert updates["train_weights"] == "none" and "from scratch" in notice


def test_a_link_switches_backbone_once():
    assert T.asked_backbone("vgg16", {"train_backbone": "resnet50"}) == "vgg16"
    assert T.asked_backbone("vgg16", {"train_backbone": "resnet50", "train_url_backbone": "vgg16"}) is None
    assert T.asked_backbone("nope", {}) is None and T.asked_backbone(None, {}) is None
    assert 0.0123 in T.rates(0.0123) and T.rates(None) == list(T.LEARNING_RATES)


def test_which_run_the_train_page_attaches_to(tmp_path, monkeypatch):
    from leukviz.runstore import runs

    done = make_run(tmp_path, "googlenet", created=1)
    running = make_run(tmp_path, "resnet50", state="running", created=2)
    # running needs a live process holding its lock; this one is said to have one
    from leukviz.runstore import summary

    for cls in (runs.Run, summary.SummarisedRun):  # the pages list runs through their summaries
        monkeypatch.setattr(cls, "state", property(lambda r, real=cls.state: "running"
                                                   if r.run_id == running.run_id else real.fget(r)))
    all_runs = dashboard.all_runs(tmp_path)
    assert T.attach(None, all_runs, None, False) == T.Attach(running.run_id)  # a run in progress
    assert T.attach(running.run_id, all_runs, done, True) == T.Attach(running.run_id)  # never leaves it
    assert T.attach(None, all_runs, done, False) == T.Attach(done.run_id, cached=True)  # settings that finished
    assert T.attach("other", all_runs, done, True) == T.Attach(done.run_id, cached=True)
    assert T.attach("other", all_runs, done, False) == T.Attach("other")  # the link's run stays
    assert T.attach(done.run_id, all_runs, done, True) == T.Attach(done.run_id, cached=True)  # shown, now chosen
    assert T.best_run(all_runs, "googlenet", "demo", "subject") == done.run_id  # the backbone's best here
    assert T.best_run(all_runs, "vgg16", "demo", "subject") is None
    monkeypatch.undo()  # the run is no longer in progress
    assert T.attach(None, dashboard.all_runs(tmp_path), None, False, done.run_id) == T.Attach(done.run_id)
    assert T.known_state(None) == "new" and T.known_state(done) == "finished"
    assert T.start_label(1, 0) == "Start training" and T.start_label(3, 5) == "Start 3 runs (seeds 5–7)"


def test_a_finished_runs_verdict_is_never_green_when_its_scores_cannot_judge_it(tmp_path):
    run = make_run(tmp_path)
    one_class = health.assess(np.ones(10, int), np.tile([0.2, 0.8], (10, 1)), ["hem", "all"])
    v = T.finished_verdict(run, one_class, cached=False)
    assert v.kind == "warning" and "its validation has one class (every cell is all): its scores cannot judge it" \
        in v.text
    bad = health.Health(health.DEGENERATE, ("calls every validation cell hem",))
    assert T.finished_verdict(run, bad, False).kind == "warning"
    assert T.finished_verdict(run, health.Health(health.HEALTHY), True).kind == "info"
    assert T.finished_verdict(run, health.Health(health.HEALTHY), False) == T.Verdict("success", "Finished.")


def test_the_split_notice_names_both_splits_and_why():
    assert T.split_notice("subject", "subject", None) is None and T.split_notice(None, "image", None) is None
    text = T.split_notice("given", "subject", "its val/ has no hem")
    assert "Given: the dataset's own validation folder" in text and "(its val/ has no hem)" in text
    assert text.endswith("uses By subject (recommended).")


def test_progress_says_validating_instead_of_zero_seconds_left():
    events = [{"type": "start", "epoch": 0, "epochs": 1, "steps_per_epoch": 4, "time": 0.0},
              {"type": "batch", "epoch": 1, "step": 2, "steps": 4, "time": 2.0}]
    assert "step 2 of 4" in dashboard.progress(events).text
    events.append({"type": "batch", "epoch": 1, "step": 4, "steps": 4, "time": 4.0})
    p = dashboard.progress(events)
    assert "validating" in p.text and "0 s left" not in p.text
    events.append({"type": "epoch", "epoch": 1, "epochs": 1, "seconds": 5.0, "time": 5.0})
    assert "validating" not in dashboard.progress(events).text


def test_the_first_live_point_is_drawn_before_the_second():
    events = [{"type": "start", "epoch": 0, "epochs": 2, "steps_per_epoch": 4, "time": 0.0},
              {"type": "batch", "epoch": 1, "step": 1, "steps": 4, "loss": 0.7, "acc": 0.5, "time": 1.0}]
    fig = charts.training_curves(events)
    lone = [t for t in fig.data if len([y for y in t.y if y is not None]) == 1]
    assert lone and all("markers" in t.mode for t in lone)
    events.append({"type": "batch", "epoch": 1, "step": 2, "steps": 4, "loss": 0.6, "acc": 0.6, "time": 2.0})
    assert all(t.mode == "lines" for t in charts.training_curves(events).data)


# ---------------------------------------------------------------------------------------------- Data

def test_subjects_in_number_order():
    order = ["16", "2", "23", "H14", "H10", "h3", "30"]
    assert sorted(order, key=datapage.subject_key) == ["2", "16", "23", "30", "h3", "H10", "H14"]
    frame = datapage.subjects_frame({s: {"class": "all", "n": 1} for s in order})
    assert list(frame.index) == ["2", "16", "23", "30", "h3", "H10", "H14"] and frame.index.name == "subject"


def test_each_split_fact_is_said_once(real_subset):
    """Two normal subjects: one warning says it (and points to Subject-grouped folds first); the split's own
    one-person sides are not said again."""
    ds = data.open_dataset(str(real_subset))
    few = datapage.few_subjects_messages(ds)
    assert len(few) == 1 and "Class 'hem' has 2 subjects" in few[0] and "Choose Subject-grouped folds" in few[0]
    messages = datapage.split_messages(ds, data.make_split(ds, "subject"))
    assert not any("'hem' cells of 1 subject only" in m for m in messages)


def test_a_leaky_given_split_says_leaky_once(tmp_path, real_subset):
    for side, names_ in (("train", slice(0, 3)), ("val", slice(3, 4))):
        for cls in ("all", "hem"):
            (tmp_path / side / cls).mkdir(parents=True)
            for f in sorted((real_subset / cls).iterdir())[names_]:
                (tmp_path / side / cls / f.name).symlink_to(f.resolve())
    ds = data.open_dataset(str(tmp_path))
    sp = data.make_split(ds, "given")
    assert sp.leaky and "LEAKY" in sp.description
    messages = datapage.split_messages(ds, sp)
    said = messages + [datapage.split_description(sp)]
    assert sum("LEAKY" in m or "Leaky" in m for m in said) == 1


def test_no_split_at_all_is_said_not_raised(monkeypatch, real_subset):
    ds = data.open_dataset(str(real_subset))
    monkeypatch.setattr(data, "split_options", lambda _: {m: "no" for m in data.SPLIT_METHODS})
    monkeypatch.setattr("leukviz.datasets.splits.split_options", lambda _: {m: "no" for m in data.SPLIT_METHODS})
    offer = datapage.split_choice(ds, "subject")
    assert offer.chosen is None and "cannot be trained on" in offer.note and not offer.choices
    assert isinstance(pd.DataFrame(), pd.DataFrame)


def test_the_page_asks_how_many_repeats_at_once_only_where_it_decides_something(monkeypatch):
    """'At once' (the device pool's CPU workers for Repeats): asked for several repeats on a CPU with several
    cores, never for one run, nor with a GPU (one repeat per GPU), nor on a single core."""
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert T.worker_range() == (1, 8)
    assert T.asks_workers(3, gpus=0) and T.asks_workers(2, gpus=0)
    assert not T.asks_workers(1, gpus=0) and not T.asks_workers(4, gpus=1) and not T.asks_workers(4, gpus=2)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert T.worker_range() == (1, config.MAX_REPEATS)  # never more workers than repeats can be asked for
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert T.worker_range() == (1, 1) and not T.asks_workers(4, gpus=0)
