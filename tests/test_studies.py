"""The leakage study and the paper reproduction: ordinary cached runs that differ only where they should."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from helpers import tiny_config
from leukviz import cli
from leukviz.comparison import leakage as leakage_study
from leukviz.comparison import paperstudy, studytext, subjectscores, subjectstudy
from leukviz.models.config import ConfigError, resolve
from leukviz.runstore import runs


def config_of(run_id: str, runs_dir: Path) -> dict:
    return json.loads((runs_dir / run_id / "config.json").read_text())["config"]


def differing(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


@pytest.fixture(scope="module")
def leakage(tiny_data, shared_runs, app_runs):
    """The dashboard tests' 32 px googlenet (its subject split is app_runs', already trained) split both ways."""
    cfg = tiny_config("googlenet", tiny_data)
    assert leakage_study.leakage_configs(cfg)["subject"].identity("") == app_runs["googlenet"].config.identity("")
    return leakage_study.leakage(cfg, shared_runs, log=lambda s: None)


def test_leakage_runs_differ_only_in_the_split(leakage, shared_runs):
    a = config_of(leakage["image"]["run_id"], shared_runs)
    b = config_of(leakage["subject"]["run_id"], shared_runs)
    assert differing(a, b) == {"split"} and (a["split"], b["split"]) == ("image", "subject")
    for side in ("image", "subject"):
        assert runs.get_run(leakage[side]["run_id"], shared_runs).state == "finished"
        assert 0.0 <= leakage[side]["val_acc"] <= 1.0 and leakage[side]["n_val"] > 0
    image, subject = leakage["image"], leakage["subject"]
    assert leakage["inflation"]["accuracy"] == pytest.approx(image["val_acc"] - subject["val_acc"])
    assert leakage["inflation"]["weighted_f1"] == pytest.approx(image["val_f1"] - subject["val_f1"])
    assert "LEAKY" in leakage["image"]["split_description"]


def test_cli_leakage_reuses_the_cached_runs(leakage, tiny_data, shared_runs, capsys):
    before = {p.name for p in shared_runs.iterdir()}
    rc = cli.main(["study", "leakage", "--backbone", "googlenet", "--data", str(tiny_data),
                   "--weights", "none", "--epochs", "1", "--image-size", "32", "--batch-size", "64",
                   "--runs-dir", str(shared_runs), "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out.strip().splitlines()[-1])
    assert res["image"]["run_id"] == leakage["image"]["run_id"]
    assert res["subject"]["run_id"] == leakage["subject"]["run_id"]
    assert "cached" in captured.err and {p.name for p in shared_runs.iterdir()} == before


def test_leakage_runs_for_a_page_are_created_untrained_and_summarised_as_unknown(tiny_data, tmp_path):
    cfg = resolve("googlenet", "quick", "none", str(tiny_data), epochs=1, image_size=32, seed=7)
    pair = leakage_study.leakage_runs(cfg, tmp_path)
    assert {r.state for r in pair.values()} == {"new"}
    res = leakage_study.leakage_summary(pair["image"], pair["subject"])
    assert res["image"]["val_acc"] is None and res["inflation"]["accuracy"] is None


@pytest.fixture(scope="module")
def cnmc_like(tiny_data, tmp_path_factory) -> Path:
    """A small C-NMC tree: fold 0 with two subjects of each class, fold 1 with two more 'all' subjects."""
    root = tmp_path_factory.mktemp("paper-data") / "C-NMC_Leukemia"
    place = {"1": 0, "2": 0, "H1": 0, "H2": 0, "3": 1, "4": 1}
    for subject, fold in place.items():
        cls = "hem" if subject.startswith("H") else "all"
        src = sorted((Path(tiny_data) / "training_data").rglob(f"UID_{subject}_*_{cls}.png"))[:5]
        dest = root / "training_data" / f"fold_{fold}" / cls
        dest.mkdir(parents=True, exist_ok=True)
        for f in src:
            shutil.copy(f, dest / f.name)
    return root


def test_paper_configs_follow_the_recipe_for_every_backbone(cnmc_like):
    cfgs, notes = paperstudy.paper_configs(paperstudy.PaperStudy(str(cnmc_like), seeds=2, with_defaults=True))
    assert {b for b, _, _ in cfgs} == set(paperstudy.PAPER_VAL_ACCURACY) == {"resnet50", "googlenet", "vgg16"}
    assert {(c, seed) for _, c, seed in cfgs} == {(c, seed) for c in paperstudy.PAPER_COLUMNS for seed in (0, 1)}
    for name in paperstudy.PAPER_VAL_ACCURACY:
        image, subject = cfgs[(name, "image", 1)], cfgs[(name, "subject", 1)]
        defaults = cfgs[(name, "defaults", 1)]
        assert image.seed == 1 and differing(cfgs[(name, "image", 0)].to_dict(), image.to_dict()) == {"seed"}
        assert defaults.preset == "quick" and defaults.split == "subject"
        assert (defaults.image_size, defaults.epochs) == (image.image_size, image.epochs)
        assert differing(image.to_dict(), subject.to_dict()) == {"split"}
        assert image.preset == "paper" and image.image_size == 128 and image.weights == "none"
        assert image.epochs == (4 if name == "vgg16" else 5)
        assert (image.optimizer, image.lr) == (("adam", 3e-3) if name == "vgg16" else ("sgd", 1e-3))
    assert image.data.endswith("-fold0/C-NMC_Leukemia")
    assert any("fold 0 only" in n for n in notes)


def test_paper_study_trains_on_fold_0_reports_the_published_numbers_and_says_what_it_ran(cnmc_like, tmp_path,
                                                                                          capsys):
    runs_dir = tmp_path / "runs"
    args = ["study", "paper", "--data", str(cnmc_like), "--epochs", "1", "--image-size", "32",
            "--backbones", "googlenet", "--runs-dir", str(runs_dir)]
    assert cli.main(args + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    notes = " ".join(res["notes"])
    assert "fold 0 only" in notes and "20 images" in notes
    assert "not cached" in notes and "weights none" in notes  # tests never have ImageNet weights
    assert "epochs=1" in notes
    (row,) = res["rows"]
    assert row["backbone"] == "googlenet"
    assert row["published_val_acc"] == paperstudy.PAPER_VAL_ACCURACY["googlenet"]
    assert row["weights"] == "none" and row["image_size"] == 32 and row["epochs"] == 1
    image, subject = row["image_split"], row["subject_split"]
    assert image["n_train"] + image["n_val"] == 20 == subject["n_train"] + subject["n_val"]  # fold 0 only
    a, b = config_of(image["run_id"], runs_dir), config_of(subject["run_id"], runs_dir)
    assert differing(a, b) == {"split"}
    # the human table shows the published number beside both reproduced ones (cached runs: no training)
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert re.search(r"GoogLeNet\s+none\s+74\.0 %", text) and "subject split" in text


def test_paper_data_falls_back_and_says_so(cnmc_mini, tmp_path):
    data, notes = paperstudy.paper_data(str(cnmc_mini))  # its fold 0 holds 'all' cells only
    assert data == str(cnmc_mini) and "cannot be used" in notes[0] and "all training folds" in notes[0]
    data, notes = paperstudy.paper_data(None)
    assert data == "demo" and "demo" in notes[0]


# ---------------------------------------------------------------------------------------------- subjects

@pytest.fixture(scope="module")
def subject_study(real_subset, shared_runs):
    study = subjectstudy.SubjectStudy(str(real_subset), ("googlenet",), seeds=1, image_size=32, epochs=2)
    return subjectstudy.subject_study(study, shared_runs, log=lambda s: None)


def test_subject_folds_hold_out_whole_subjects_with_both_classes_on_both_sides(subject_study, real_subset):
    from leukviz.datasets import data

    ds = data.open_dataset(str(real_subset))
    folds = subject_study["folds"]
    assert len(folds) == 2  # two normal subjects: two folds, one normal subject validated in each
    seen = set()
    for f in folds:
        split = data.make_split(ds, "groups", val_fold=f["fold"])
        train_subjects = set(ds.index.loc[split.train, "subject"])
        val_subjects = set(ds.index.loc[split.val, "subject"])
        assert val_subjects == set(f["val_subjects"]) and not train_subjects & val_subjects
        assert set(ds.index.loc[split.train, "label"]) == set(ds.index.loc[split.val, "label"]) == {0, 1}
        seen |= val_subjects
    assert seen == {"2", "16", "23", "H10", "H14"}  # every subject is validated once
    assert {"H10", "H14"} & set(folds[0]["val_subjects"]) != {"H10", "H14"} & set(folds[1]["val_subjects"])


def test_subject_study_scores_both_loops_on_the_same_cells(subject_study, shared_runs):
    recs = subject_study["runs"]
    assert {(r["method"], r["fold"]) for r in recs} == {(m, k) for m in ("leukviz", "plain") for k in (0, 1)}
    for k in (0, 1):
        a, b = (next(r for r in recs if r["method"] == m and r["fold"] == k) for m in ("leukviz", "plain"))
        assert set(a["per_subject"]) == set(b["per_subject"]) == set(subject_study["folds"][k]["val_subjects"])
        assert len(a["epoch_f1"]) == len(b["epoch_f1"]) == 2
        run = runs.get_run(a["run_id"], shared_runs)
        assert run.config.split == "groups" and run.config.val_fold == k and run.state == "finished"
    per = subject_study["summary"]["googlenet"]
    mean_f1 = sum(r["weighted_f1"] for r in recs if r["method"] == "leukviz") / 2
    assert per["leukviz"]["weighted_f1"]["mean"] == pytest.approx(mean_f1)
    assert per["difference"]["weighted_f1"] == pytest.approx(
        per["leukviz"]["weighted_f1"]["mean"] - per["plain"]["weighted_f1"]["mean"])
    table = studytext.format_subject_table(subject_study)
    assert "plain" in table and "H14" in table and "diff" in table


def test_subject_study_reruns_from_the_cache(subject_study, real_subset, shared_runs):
    study = subjectstudy.SubjectStudy(str(real_subset), ("googlenet",), seeds=1, image_size=32, epochs=2)
    again = subjectstudy.subject_study(study, shared_runs, log=lambda s: None)
    assert [r["weighted_f1"] for r in again["runs"]] == [r["weighted_f1"] for r in subject_study["runs"]]


def test_a_variant_parses_to_its_settings_types_and_refuses_what_the_study_fixes():
    assert subjectstudy.parse_variant("augment=flips") == (("augment", "flips"),)
    assert subjectstudy.parse_variant(" crop=false , lr=3e-4,batch-size=16") == (
        ("crop", False), ("lr", 3e-4), ("batch_size", 16))
    assert subjectstudy.variant_label(subjectstudy.parse_variant("crop=off,lr=0.0003")) == "leukviz crop=false,lr=0.0003"
    for text, words in (("colour=on", "no setting 'colour'"), ("epochs=9", "the study sets epochs"),
                        ("seed=3", "the study sets seed"), ("augment", "SETTING=VALUE"), ("crop=maybe", "true or false"),
                        ("batch_size=big", "takes an int"), ("", "at least one")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            subjectstudy.parse_variant(text)


@pytest.fixture(scope="module")
def variant_study(subject_study, real_subset, shared_runs):
    """The subject study's runs again, plus leukviz with flips only (no stain jitter) on the same folds."""
    study = subjectstudy.SubjectStudy(str(real_subset), ("googlenet",), seeds=1, image_size=32, epochs=2,
                                 variants=(subjectstudy.parse_variant("augment=flips"),))
    return subjectstudy.subject_study(study, shared_runs, log=lambda s: None)


def test_a_variant_trains_on_the_same_folds_and_is_compared_with_the_defaults(variant_study, shared_runs):
    import numpy as np
    from sklearn.metrics import f1_score

    from leukviz.comparison.evaluation import read_predictions

    name = "leukviz augment=flips"
    recs = variant_study["runs"]
    assert [r["method"] for r in recs] == ["leukviz", name, "plain"] * 2
    for k in (0, 1):
        a, v = (next(r for r in recs if r["method"] == m and r["fold"] == k) for m in ("leukviz", name))
        assert differing(config_of(a["run_id"], shared_runs), config_of(v["run_id"], shared_runs)) == {"augment"}
        assert config_of(v["run_id"], shared_runs)["augment"] == "flips"
        assert set(a["per_subject"]) == set(v["per_subject"])
    per = variant_study["summary"]["googlenet"]
    assert subjectscores.methods_of(per) == ["leukviz", name, "plain"]
    dif = per["variant_differences"][name]
    assert dif["weighted_f1"] == pytest.approx(per[name]["weighted_f1"]["mean"] - per["leukviz"]["weighted_f1"]["mean"])
    # the paired test scores both models on the pooled cells of both folds, cell for cell
    pooled = {}
    for m in ("leukviz", name):
        parts = [read_predictions(shared_runs / r["run_id"] / "val_predictions.csv") for r in recs if r["method"] == m]
        pooled[m] = (np.concatenate([p.y for p in parts]), np.concatenate([p.probs.argmax(1) for p in parts]))
    f1 = {m: f1_score(y, pred, average="weighted") for m, (y, pred) in pooled.items()}
    tests = {(t["a"], t["b"]): t for t in per["tests"]}
    assert set(tests) == {(name, "leukviz"), ("leukviz", "plain")}
    t = tests[(name, "leukviz")]
    assert t["scores"]["weighted_f1"]["difference"] == pytest.approx(f1[name] - f1["leukviz"])
    assert t["unit"] == "subjects" and t["n_units"] == 5 and t["verdict"].startswith(f"{name} − leukviz:")
    table = studytext.format_subject_table(variant_study)
    assert name in table and "− defaults" in table and "paired over subjects" in table and t["verdict"] in table
    assert "_cells" not in json.dumps(variant_study, default=str) and variant_study["variants"] == [name]


def test_the_paired_test_lines_up_the_cells_of_each_seed_and_fold():
    import numpy as np
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    subjects = np.repeat(["1", "2", "3", "H1", "H2", "H3"], 20)
    y = (np.char.find(subjects, "H") == 0).astype(int)
    keys = np.array([f"c{i:03d}" for i in range(len(y))])
    order = rng.permutation(len(y))  # one side's cells arrive in another order: they must be lined up by key
    recs, preds = [], {"a": [], "b": []}
    for seed in (0, 1):
        for m, right in (("a", 0.9), ("b", 0.6)):
            prob1 = np.where(rng.random(len(y)) < right, y, 1 - y) * 0.8 + 0.1
            prob = np.stack([1 - prob1, prob1], 1)
            preds[m].append(prob.argmax(1))
            idx = order if m == "b" else np.arange(len(y))
            cells = subjectscores.plain_cells(["all", "hem"], keys[idx], y[idx], prob[idx], subjects[idx])
            recs.append({"backbone": "googlenet", "seed": seed, "fold": 0, "method": m, "_cells": cells})
    t = subjectscores.paired_test(recs, "googlenet", "a", "b", ["all", "hem"], n_resamples=200)
    yy = np.concatenate([y, y])
    want = f1_score(yy, np.concatenate(preds["a"]), average="weighted") - f1_score(
        yy, np.concatenate(preds["b"]), average="weighted")
    assert t["scores"]["weighted_f1"]["difference"] == pytest.approx(want) and want > 0.2
    assert t["seeds"] == [0, 1] and t["unit"] == "subjects" and t["n_units"] == 6 and "a is better" in t["verdict"]
    other = [dict(r, fold=1) if r["method"] == "b" else r for r in recs]  # no (seed, fold) in common
    assert subjectscores.paired_test(other, "googlenet", "a", "b", ["all", "hem"]) is None


def test_a_variant_that_changes_nothing_fails_before_anything_trains(tiny_data, tmp_path):
    study = subjectstudy.SubjectStudy(str(tiny_data), ("googlenet",), seeds=1, image_size=32, epochs=1,
                                 variants=(subjectstudy.parse_variant("augment=full"),))  # the quick preset's own
    with pytest.raises(ConfigError, match="default already"):
        subjectstudy.subject_study(study, tmp_path / "runs", log=lambda s: None)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    with pytest.raises(ConfigError, match="invalid augment .wild."):
        subjectstudy.subject_study(dataclasses.replace(study, variants=(subjectstudy.parse_variant("augment=wild"),)),
                              tmp_path / "runs", log=lambda s: None)


def test_a_variant_that_is_one_backbones_default_is_skipped_for_that_one_only(tiny_data):
    study = subjectstudy.SubjectStudy(str(tiny_data), ("googlenet", "vgg16"), seeds=1, image_size=32, epochs=1,
                                 variants=(subjectstudy.parse_variant("lr=1e-4"),))  # VGG16's own rate from scratch
    skipped, notes = subjectstudy.check_subject_study(study)
    assert skipped == {("vgg16", study.variants[0])}
    assert len(notes) == 1 and "not run for VGG16" in notes[0] and "default already" in notes[0]
    with pytest.raises(ConfigError, match="VGG16's default already"):
        subjectstudy.check_subject_study(dataclasses.replace(study, backbones=("vgg16",)))
    # head_epochs without finetune=staged is not the default's value, yet it changes no run
    with pytest.raises(ConfigError, match="changes nothing in GoogLeNet's recipe"):
        subjectstudy.check_subject_study(dataclasses.replace(study, backbones=("googlenet",),
                                                        variants=(subjectstudy.parse_variant("head_epochs=2"),)))


@pytest.mark.parametrize("change, message", [
    (dict(seeds=0), "at least one seed"),
    (dict(plain_seeds=-1), "--plain-seeds 0 or more"),
    (dict(weights="auto"), "weights file not found: auto"),
    (dict(variants=(subjectstudy.parse_variant("crop=false"), subjectstudy.parse_variant("crop=false"))), "given twice"),
])
def test_the_subject_study_refuses_what_it_cannot_do_before_reading_the_data(change, message, tmp_path):
    study = subjectstudy.SubjectStudy(str(tmp_path / "no-such-folder"), ("googlenet",),
                                 **{"seeds": 1, "image_size": 32, "epochs": 1, **change})
    with pytest.raises(ConfigError, match=re.escape(message)):
        subjectstudy.subject_study(study, tmp_path / "runs", log=lambda s: None)
    assert not (tmp_path / "runs").exists()


def test_the_study_command_says_what_is_wrong_with_a_variant(tiny_data, capsys):
    assert cli.main(["study", "subjects", "--data", str(tiny_data), "--vary", "epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "the study sets epochs itself" in err and "Traceback" not in err


def test_late_drop_looks_at_the_last_half_only():
    assert subjectscores.late_drop([0.9, 0.5, 0.6]) == pytest.approx(0.4)  # epoch 2 > 3/2: counted
    assert subjectscores.late_drop([0.9, 0.5, 0.6, 0.7, 0.65]) == pytest.approx(0.05)  # falls before epoch 3 ignored
    assert subjectscores.late_drop([0.5, 0.6, 0.7]) == 0.0 and subjectscores.late_drop([0.7]) == 0.0


@pytest.mark.integration  # trains runs of its own
def test_subject_study_can_train_the_plain_loop_for_fewer_seeds(subject_study, real_subset, shared_runs):
    study = subjectstudy.SubjectStudy(str(real_subset), ("googlenet",), seeds=2, plain_seeds=1, image_size=32, epochs=2)
    res = subjectstudy.subject_study(study, shared_runs, log=lambda s: None)
    methods = [(r["method"], r["seed"]) for r in res["runs"]]
    assert methods.count(("leukviz", 1)) == 2 and ("plain", 1) not in methods and methods.count(("plain", 0)) == 2
    per = res["summary"]["googlenet"]
    assert per["leukviz"]["weighted_f1"]["n"] == 2 and per["plain"]["weighted_f1"]["n"] == 1
    # the difference is paired: on seed 0, the one seed both loops ran
    seed0 = [r for r in res["runs"] if r["seed"] == 0]
    mean = lambda m: sum(r["weighted_f1"] for r in seed0 if r["method"] == m) / 2  # noqa: E731
    assert per["difference"]["weighted_f1"] == pytest.approx(mean("leukviz") - mean("plain"))
    table = studytext.format_subject_table(res)
    assert per["difference"]["seeds"] == [0] and "the plain loop: 1" in table
    assert re.search(r"diff \(seed 0\) +[+-]\d", table)  # the difference says it is of seed 0 alone


@pytest.mark.parametrize("vary, message", [
    ("crop=false,crop=true", "sets crop twice"),
    ("momentum=nan", "momentum takes a finite number, got 'nan'"),
    ("weight_decay=-1", "weight_decay must be 0 or more"),
    ("momentum=1.5,optimizer=sgd", "momentum must be from 0"),
    ("momentum=0.5", "changes nothing in GoogLeNet's recipe"),  # Adam has no momentum setting: the same runs
])
def test_a_variant_is_checked_by_the_run_settings_rules_before_anything_trains(vary, message, tmp_path):
    """Each variant is checked as a run's settings are (RunConfig's rules), before a folder is made."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        study = subjectstudy.SubjectStudy(str(tmp_path / "no-such-folder"), ("googlenet",), seeds=1, image_size=32,
                                     epochs=1, variants=(subjectstudy.parse_variant(vary),))
        subjectstudy.subject_study(study, tmp_path / "runs", log=lambda s: None)
    assert not (tmp_path / "runs").exists()


def test_run_settings_are_finite_and_in_range_and_an_ignored_momentum_is_one_run():
    from leukviz.models import config

    for kw, words in ((dict(optimizer="sgd", momentum=float("nan")), "momentum=nan"), (dict(lr=float("inf")), "lr=inf"),
                      (dict(weight_decay=-1.0), "weight_decay must be 0 or more"),
                      (dict(optimizer="sgd", momentum=1.0), "momentum must be from 0")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            config.resolve("googlenet", "quick", "none", "demo", **kw)
    adam = config.resolve("googlenet", "quick", "none", "demo")
    assert adam.optimizer != "sgd" and config.resolve("googlenet", "quick", "none", "demo", momentum=0.5) == adam
    assert config.resolve("googlenet", "quick", "none", "demo", optimizer="sgd", momentum=0.5).momentum == 0.5
