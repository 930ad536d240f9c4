"""Which run a page shows or preselects (runstore.best), decided once: per backbone the healthy run or repeat
group with the best validation score on the active dataset and split, not the newest; used by the Overview's
cards, Predict's and Compare's preselection and `runs list`."""

from __future__ import annotations

import json

import pandas as pd

from helpers import make_run
from leukviz.app import dashboard
from leukviz.comparison import grouping
from leukviz.runstore import best, runs
from leukviz.scoring import health


def scored(root, f1: float, **kw) -> runs.Run:
    """A finished healthy run whose kept model scored validation weighted F1 f1."""
    run = make_run(root, **kw)
    meta = json.loads((run.dir / "model.json").read_text())
    meta["metrics"]["val_f1"] = f1
    (run.dir / "model.json").write_text(json.dumps(meta))
    return run


def degenerate(root, f1: float = 0.99, **kw) -> runs.Run:
    """A run that calls every validation cell hem, whatever its recorded score."""
    run = scored(root, f1, **kw)
    frame = pd.read_csv(run.dir / "val_predictions.csv")
    frame["prob_all"], frame["prob_hem"] = 0.3, 0.7
    frame.to_csv(run.dir / "val_predictions.csv", index=False)
    return run


def entries(root):
    return dashboard.entries(dashboard.all_runs(root))


def test_the_best_run_wins_not_the_newest_and_a_degenerate_one_never(tmp_path):
    good = scored(tmp_path, 0.92, created=1, lr=1e-3)
    scored(tmp_path, 0.58, created=3, lr=3e-3)  # newest: it was shown before
    bad = degenerate(tmp_path, created=4, lr=1e-2)  # best recorded F1, but degenerate
    pick = best.best_per_backbone(entries(tmp_path), "demo", "subject")["googlenet"]
    assert pick.run_ids == [good.run_id] and pick.healthy and pick.on_split
    assert len(pick.others) == 2 and pick.others_text == "2 other runs of this backbone on this dataset"
    assert pick.others[-1].run_id == bad.run_id  # unhealthy last
    assert [r.run_id for r in dashboard.default_models(dashboard.finished_runs(tmp_path), "demo")] == [good.run_id]


def test_a_repeat_group_is_chosen_by_its_mean_and_counts_as_one(tmp_path):
    single = scored(tmp_path, 0.90, created=9, lr=3e-3)
    group = [scored(tmp_path, f1, seed=s, split_seed=0, created=s) for s, f1 in ((0, 0.93), (1, 0.91), (2, 0.92))]
    pick = best.best_per_backbone(entries(tmp_path), "demo")["googlenet"]
    assert pick.run_ids == [r.run_id for r in group] and abs(pick.score - 0.92) < 1e-9
    assert pick.lead.run_id == group[0].run_id  # the group's best seed is the one a page opens
    assert [e.run_id for e in pick.others] == [single.run_id]
    assert best.preselect(entries(tmp_path), "demo") == [r.run_id for r in group]
    assert {r.run_id for r in grouping.default_selection(dashboard.finished_runs(tmp_path))} == set(pick.run_ids)


def test_a_large_repeat_group_preselects_its_first_seeds_only(tmp_path):
    group = [scored(tmp_path, 0.9, seed=s, split_seed=0, created=s) for s in range(best.PRESELECT_SEEDS + 3)]
    pick = best.best_per_backbone(entries(tmp_path), "demo")["googlenet"]
    assert len(pick.run_ids) == len(group)  # the group is judged whole
    chosen = best.preselect(entries(tmp_path), "demo")
    assert chosen == [r.run_id for r in group][:best.PRESELECT_SEEDS]  # its first seeds, in order
    assert len(grouping.default_selection(dashboard.finished_runs(tmp_path))) == best.PRESELECT_SEEDS


def test_the_active_split_first_else_another_split_marked(tmp_path):
    on_image = scored(tmp_path, 0.99, split="image", created=2)
    on_subject = scored(tmp_path, 0.80, created=1)
    picks = best.best_per_backbone(entries(tmp_path), "demo", "subject")
    assert picks["googlenet"].run_ids == [on_subject.run_id]
    only_image = best.best_per_backbone([e for e in entries(tmp_path) if e.split == "image"], "demo", "subject")
    assert only_image["googlenet"].run_ids == [on_image.run_id] and not only_image["googlenet"].on_split


def test_no_run_on_the_active_dataset_preselects_none_and_says_where_runs_are(tmp_path):
    scored(tmp_path, 0.9, data_spec="demo", backbone="resnet50")
    scored(tmp_path, 0.8, data_spec="/data/dev", backbone="googlenet")
    finished = dashboard.finished_runs(tmp_path)
    assert dashboard.default_models(finished, "/data/mini") == []
    text = best.datasets_text(entries(tmp_path))
    assert "demo: 1 run (ResNet50)" in text and "dev: 1 run (GoogLeNet)" in text


def test_the_overview_card_shows_the_best_with_the_others_reachable(tmp_path):
    good = scored(tmp_path, 0.92, created=1, lr=1e-3)
    newer = scored(tmp_path, 0.58, created=3, lr=3e-3)
    card = {c.backbone: c for c in dashboard.backbone_cards("demo", tmp_path, "subject")}["googlenet"]
    assert card.run_id == good.run_id and card.val_f1 == 0.92
    assert [i for i, _ in card.others] == [newer.run_id]
    assert "best validation F1 of 2 runs" in card.note


def test_a_card_names_its_best_other_runs_and_counts_them_all(tmp_path, monkeypatch):
    monkeypatch.setattr(dashboard, "OTHERS_SHOWN", 2)
    made = {f1: scored(tmp_path, f1, created=i, lr=10.0 ** -(i + 2)) for i, f1 in enumerate((0.7, 0.95, 0.8, 0.9))}
    card = {c.backbone: c for c in dashboard.backbone_cards("demo", tmp_path, "subject")}["googlenet"]
    assert card.run_id == made[0.95].run_id and card.n_others == 3
    assert [i for i, _ in card.others] == [made[0.9].run_id, made[0.8].run_id]  # the best two of the three


def test_only_unhealthy_runs_are_named_as_such_and_never_preselected(tmp_path):
    bad = degenerate(tmp_path)
    pick = best.best_per_backbone(entries(tmp_path), "demo")["googlenet"]
    assert pick.run_ids == [bad.run_id] and not pick.healthy
    assert best.preselect(entries(tmp_path), "demo") == [] and best.best_ids(entries(tmp_path)) == set()
    card = dashboard.backbone_cards("demo", tmp_path)[1]
    assert card.run_id == bad.run_id and card.note == ""  # its one run: the card's warning says it all
    degenerate(tmp_path, f1=0.5, lr=3e-3)
    card = dashboard.backbone_cards("demo", tmp_path)[1]
    assert card.run_id == bad.run_id and "No healthy run" in card.note and len(card.others) == 1
    assert health.DEGENERATE == best.entry(bad).health


def one_class_validation(root, **kw) -> runs.Run:
    """A run whose validation cells are all `all`: its scores cannot judge it."""
    run = scored(root, 0.9, **kw)
    frame = pd.read_csv(run.dir / "val_predictions.csv")
    frame["label"] = 1
    frame.to_csv(run.dir / "val_predictions.csv", index=False)
    return run


def test_runs_list_marks_the_best_and_says_in_text_what_json_says(tmp_path, capsys):
    from leukviz.cli import main

    good = scored(tmp_path, 0.92, created=1, lr=1e-3)
    newer = scored(tmp_path, 0.58, created=3, lr=3e-3)
    unjudged = one_class_validation(tmp_path, backbone="resnet50", created=2)
    assert main(["runs", "list", "--json", "--runs-dir", str(tmp_path)]) == 0
    rows = {r["run_id"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]}
    assert rows[good.run_id]["best"] and not rows[newer.run_id]["best"] and not rows[unjudged.run_id]["best"]
    assert rows[unjudged.run_id]["health"] == "unknown"
    assert "its validation has one class" in rows[unjudged.run_id]["health_reasons"][0]
    assert main(["runs", "list", "--runs-dir", str(tmp_path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines[good.run_id].rstrip().endswith("BEST") and "BEST" not in lines[newer.run_id]
    assert "WARNING, health unknown: its validation has one class (every cell is all): its scores cannot judge it" in \
        lines[unjudged.run_id]


def test_a_run_its_validation_cannot_judge_is_named_so_in_pickers(tmp_path):
    run = one_class_validation(tmp_path)
    assert dashboard.run_label(run).endswith(f"cannot be judged · {run.run_id[:6]}")
    assert best.preselect(entries(tmp_path), "demo") == []  # never preselected: its scores say nothing
