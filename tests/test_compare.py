"""Tests for leukviz.compare: the Compare page's numbers, from hand-made run folders and tiny models."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pandas as pd
import pytest

from helpers import make_run, tiny_model
from leukviz.app import dashboard
from leukviz.comparison import (
    answers,
    calibrationrows,
    compare,
    ensemble,
    evaluation,
    grouping,
    pairing,
    runtable,
)
from leukviz.runstore import names, runs
from leukviz.scoring import metrics


def test_groups_separate_datasets_and_splits(tmp_path):
    make_run(tmp_path, "googlenet", "fpA")
    make_run(tmp_path, "resnet50", "fpA")
    make_run(tmp_path, "vgg16", "fpB")
    make_run(tmp_path, "googlenet", "fpA", split="image")
    make_run(tmp_path, "resnet50", "fpA", seed=1)
    groups = grouping.comparable_groups(dashboard.finished_runs(tmp_path))
    sizes = sorted(len(g.runs) for g in groups.values())
    assert sizes == [1, 1, 1, 2]
    biggest = next(iter(groups.values()))
    assert {r.config.backbone for r in biggest.runs} == {"googlenet", "resnet50"}
    assert "by subject" in biggest.label and "2 runs" in biggest.label
    assert any("LEAKY" in g.label for g in groups.values())


def test_compare_row_from_the_run_files(tmp_path):
    run = make_run(tmp_path)
    ev = evaluation.evaluate_run(run)
    df = pd.read_csv(run.dir / "val_predictions.csv")
    expected = metrics.summary(df["label"], df[["prob_hem", "prob_all"]].to_numpy(), ["hem", "all"])
    row = runtable.compare_row(ev, seconds_per_image=0.0123)
    assert row["val_accuracy"] == pytest.approx(expected["accuracy"]) == pytest.approx(6 / 8)
    assert row["weighted_f1"] == pytest.approx(expected["weighted_f1"])
    # two subjects, one per class: the subject bootstrap cannot vary, so the interval is the value itself
    assert row["weighted_f1_ci"] == f"{expected['weighted_f1']:.3f} to {expected['weighted_f1']:.3f}"
    assert row["sensitivity"] == pytest.approx(4 / 5) and row["specificity"] == pytest.approx(2 / 3)
    assert row["roc_auc"] == pytest.approx(expected["roc_auc"])
    assert row["train_time"] == "30 s"  # 10 s + 20 s of epochs
    assert row["ms_per_image"] == pytest.approx(12.3)
    assert row["params_m"] == pytest.approx(5.6) and row["checkpoint_mb"] == pytest.approx(2.0)
    assert row["weights"] == "none" and row["split"].startswith("by subject")
    assert ev.summary["subject_vote"]["n_subjects"] == 2  # subjects "H1" and "7" read as text
    table = runtable.compare_table([row])
    assert list(table.columns) == list(runtable.COMPARE_COLUMNS)
    curves = runtable.roc_curves([ev])
    fpr, tpr, auc = curves[names.run_name(run)]
    assert fpr[0] == 0 and tpr[-1] == 1 and auc == pytest.approx(expected["roc_auc"])
    assert list(runtable.histories([run])) == [names.run_name(run)]


def test_time_per_image_is_positive(tmp_path):
    assert 0 < runtable.time_per_image(tiny_model(tmp_path), repeats=2, warmup=1) < 30


# ---------------------------------------------------------------------------------------------- repeats, intervals, tests

SUBJECTS = ["H1", "H2", "H3", "4", "5", "6"]  # three normal subjects (label 0, hem), three ALL (label 1)


def write_predictions(run: runs.Run, p_all: "np.ndarray", name: str = "val_predictions.csv") -> None:
    """Ten cells per subject, in SUBJECTS order, with these probabilities of `all`."""
    import numpy as np

    subjects = np.repeat(SUBJECTS, 10)
    y = np.array([0 if s.startswith("H") else 1 for s in subjects])
    pd.DataFrame({"path": [f"/cells/{i:03d}.png" for i in range(len(y))], "subject": subjects, "label": y,
                  "pred": (p_all > 0.5).astype(int), "prob_hem": 1 - p_all, "prob_all": p_all}
                 ).to_csv(run.dir / name, index=False)


def seeded_runs(tmp_path, backbone: str, quality: float, seeds=(0, 1, 2), test: bool = False) -> list[runs.Run]:
    """Runs of one configuration (grouped folds: the same cells for every seed) whose predictions are right
    with probability `quality`, each seed drawing its own."""
    import numpy as np

    made = []
    for seed in seeds:
        # their dataset is only named, never read (a "demo" here would make Compare's test-set backfill
        # generate the built-in demo: a quarter of a minute)
        run = make_run(tmp_path, backbone, "fpS", split="groups", seed=seed, data_spec=str(tmp_path / "cells"))
        rng = np.random.default_rng([zlib.crc32(backbone.encode()), seed])  # not hash(): salted per process
        y = np.array([0 if s.startswith("H") else 1 for s in np.repeat(SUBJECTS, 10)])
        right = rng.random(len(y)) < quality
        p = np.where(right == (y == 1), 0.8, 0.2)
        write_predictions(run, p)
        if test:
            write_predictions(run, p[::-1].copy(), "test_predictions.csv")
        made.append(run)
    return made


def test_repeats_are_grouped_by_configuration_with_mean_sd_and_intervals(tmp_path):
    g = seeded_runs(tmp_path, "googlenet", 0.8)
    r = seeded_runs(tmp_path, "resnet50", 0.7, seeds=(0, 1))
    evals = [evaluation.evaluate_run(x) for x in g + r]
    groups = grouping.repeat_groups(evals)
    assert [(grp.name, grp.seeds) for grp in groups] == [("ResNet50", [0, 1]), ("GoogLeNet", [0, 1, 2])]
    groups = groups[::-1]
    st_ = pairing.stats(groups[0], n_resamples=500)
    per_seed = [ev.summary["weighted_f1"] for ev in evals[:3]]
    spread = st_.spread["weighted_f1"]
    assert spread["mean"] == pytest.approx(sum(per_seed) / 3) and spread["n"] == 3
    assert spread["values"] == pytest.approx(per_seed) and spread["sd"] > 0
    ci = st_.interval["scores"]["weighted_f1"]
    assert st_.interval["unit"] == "subjects" and ci["low"] <= ci["value"] <= ci["high"]
    assert ci["high"] - ci["low"] > 0
    # the pooled interval is over the cells of every seed: its point value is the pooled score
    pooled = groups[0].pooled()
    assert len(pooled.y) == 3 * 60
    assert ci["value"] == pytest.approx(metrics.weighted_f1(pooled.y, pooled.probs.argmax(1)))


def test_configurations_of_one_backbone_are_named_by_the_settings_they_differ_in(tmp_path):
    a = [make_run(tmp_path, "googlenet", "fpS", split="groups", seed=s, finetune="staged", epochs=3) for s in (0, 1)]
    b = [make_run(tmp_path, "googlenet", "fpS", split="groups", seed=s, epochs=3) for s in (0, 1)]
    c = make_run(tmp_path, "resnet50", "fpS", split="groups", seed=0)
    names = sorted(g.name for g in grouping.repeat_groups([evaluation.evaluate_run(r) for r in a + b + [c]]))
    # told apart in words, not config keys ("finetune staged")
    assert names == ["GoogLeNet · staged fine-tuning", "GoogLeNet · whole network trained", "ResNet50"]
    # several settings differ: all of them, up to three; none that a reader could see: the run id
    d = make_run(tmp_path, "googlenet", "fpS", split="groups", seed=0, lr=3e-4, epochs=5)
    assert grouping.setting_labels([b[0], d]) == ["3 epochs, lr 0.001", "5 epochs, lr 0.0003"]
    f = make_run(tmp_path, "googlenet", "fpS", split="groups", seed=0, image_size=32, epochs=1)
    assert grouping.setting_labels([b[0], f])[1] == "32 px, 1 epoch"
    e = make_run(tmp_path, "googlenet", "fpT", split="groups", seed=0, epochs=3)  # other data, same settings
    assert grouping.setting_labels([b[0], e]) == [b[0].run_id[:6], e.run_id[:6]]


def test_identical_models_show_no_difference_and_the_ensemble_is_the_mean(tmp_path):
    import numpy as np

    a = seeded_runs(tmp_path / "a", "googlenet", 0.8, seeds=(0,))[0]
    b = make_run(tmp_path / "a", "resnet50", "fpS", split="groups", seed=0)
    (b.dir / "val_predictions.csv").write_bytes((a.dir / "val_predictions.csv").read_bytes())
    evals = [evaluation.evaluate_run(a), evaluation.evaluate_run(b)]
    ga, gb = grouping.repeat_groups(evals)
    p = pairing.paired(ga, gb, n_resamples=500)
    for k in pairing.PAIRED_SCORES:
        res = p.result["scores"][k]
        assert res["difference"] == pytest.approx(0) and res["low"] <= 0 <= res["high"] and res["p_value"] > 0.99
    assert all("no clear difference" in v for v in p.verdicts)
    ens = ensemble.ensemble(evals)
    np.testing.assert_allclose(ens.evals[0].probs, (evals[0].probs + evals[1].probs) / 2)
    assert ens.name == "Ensemble of 2"


def test_a_clearly_better_model_is_called_better(tmp_path):
    good = seeded_runs(tmp_path, "googlenet", 0.97)
    bad = seeded_runs(tmp_path, "resnet50", 0.55)
    rep = compare.build_report([evaluation.evaluate_run(x) for x in good + bad], n_resamples=500)
    pair = next(p for p in rep.pairs if {p.a, p.b} == {"GoogLeNet", "ResNet50"})
    assert pair.result["scores"]["accuracy"]["difference"] * (1 if pair.a == "GoogLeNet" else -1) > 0.3
    assert "GoogLeNet is better" in pair.verdicts[0]
    assert pair.seeds == [0, 1, 2] and "permutation" in pair.result["test"]
    names = [s.name for s in rep.stats]
    assert names == ["ResNet50", "GoogLeNet", "Ensemble of 6"] and rep.sets == ["val"]


def test_test_set_rows_appear_when_every_run_has_test_predictions(tmp_path):
    runs_ = seeded_runs(tmp_path, "googlenet", 0.8, test=True) + seeded_runs(tmp_path, "vgg16", 0.7, test=True)
    rep = compare.build_report([evaluation.evaluate_run(x) for x in runs_], n_resamples=300)
    assert rep.sets == ["val", "test"]
    table = answers.stats_table(rep.to_dict()["scores"])
    assert list(table["Set"])[:2] == ["validation", "test (held out)"] and list(table["Model"])[:2] == ["GoogLeNet"] * 2
    assert table["weighted F1 95 % CI"].str.contains(" to ").all()
    assert {p.which for p in rep.pairs} == {"val", "test"}
    # one run without test predictions: no test columns, and a note says why
    (runs_[0].dir / "test_predictions.csv").unlink()
    rep = compare.build_report([evaluation.evaluate_run(x) for x in runs_], n_resamples=300)
    assert rep.sets == ["val"] and any("no test predictions" in n for n in rep.notes)


def test_default_selection_takes_every_seed_of_the_best_configuration(tmp_path):
    """runstore.best, the rule of every page: per backbone the healthy configuration with the best validation
    F1 (ties: more seeds, then the newest), every healthy seed of it, in registry order."""
    old = make_run(tmp_path, "googlenet", "fpS", split="groups", seed=0, lr=3e-4, created=1.0)
    new = seeded_runs(tmp_path, "googlenet", 0.8, seeds=(0, 1))
    res = seeded_runs(tmp_path, "resnet50", 0.8, seeds=(0,))
    chosen = grouping.default_selection(dashboard.finished_runs(tmp_path))
    assert [r.run_id for r in chosen] == [res[0].run_id, new[0].run_id, new[1].run_id]  # registry order, by seed
    assert old.run_id not in {r.run_id for r in chosen}
    meta = json.loads((old.dir / "model.json").read_text())
    meta["metrics"]["val_f1"] = 0.95  # the older configuration scored better: it is chosen, not the newest
    (old.dir / "model.json").write_text(json.dumps(meta))
    chosen = grouping.default_selection(dashboard.finished_runs(tmp_path))
    assert [r.run_id for r in chosen] == [res[0].run_id, old.run_id]


def test_compare_command_prints_intervals_and_verdicts(tmp_path, capsys):
    import json

    from leukviz.cli import main

    seeded_runs(tmp_path, "googlenet", 0.9)
    seeded_runs(tmp_path, "resnet50", 0.75)  # (at 0.6 it scores below the majority baseline: degenerate, left out)
    assert main(["compare", "all", "--runs-dir", str(tmp_path), "--resamples", "300"]) == 0
    text = capsys.readouterr().out
    assert "95 % interval from a bootstrap over subjects" in text and "GoogLeNet" in text and " ± " in text
    assert "ResNet50" in text and "Ensemble of 6" in text and ("better" in text or "no clear difference" in text)
    assert main(["compare", "all", "--runs-dir", str(tmp_path), "--resamples", "300", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [g["name"] for g in rep["groups"]] == ["ResNet50", "GoogLeNet"]  # registry order
    assert rep["paired"] and all(len(p["verdicts"]) == 2 for p in rep["paired"])
    other = make_run(tmp_path, "vgg16", "fpOTHER")
    assert main(["compare", other.run_id, rep["groups"][0]["runs"][0], "--runs-dir", str(tmp_path)]) == 2
    assert "not scored on the same validation cells" in capsys.readouterr().err


def test_calibration_table_shows_temperature_and_ece_before_and_after(tmp_path):
    """Over-confident made-up predictions (0.8 where right 70 % of the time... and 0.2) get T > 1 and a
    lower ECE; the test columns appear only when the runs have test predictions."""
    runs_ = seeded_runs(tmp_path, "googlenet", 0.6, seeds=(0,), test=True)
    ev = evaluation.evaluate_run(runs_[0])
    cal = calibrationrows.calibration_of(ev)
    assert cal["calibrated"] and cal["temperature"] > 1
    assert cal["val"]["after"]["ece"] < cal["val"]["before"]["ece"]
    table = calibrationrows.calibration_table([cal])
    assert list(table.columns) == ["Model", "Temperature", "ECE validation", "Brier validation", "ECE test",
                                   "Brier test"]
    before, after = (float(x) for x in table.loc[0, "ECE validation"].split(" → "))
    assert before == pytest.approx(cal["val"]["before"]["ece"], abs=1e-3) and after < before
    (runs_[0].dir / "test_predictions.csv").unlink()
    table = calibrationrows.calibration_table([calibrationrows.calibration_of(evaluation.evaluate_run(runs_[0]))])
    assert "ECE test" not in table.columns


def test_headline_gives_each_models_validation_score_with_its_interval(tmp_path):
    runs_ = seeded_runs(tmp_path, "googlenet", 0.8) + seeded_runs(tmp_path, "resnet50", 0.7)
    rep = compare.build_report([evaluation.evaluate_run(x) for x in runs_], n_resamples=300).to_dict()
    line = answers.headline(rep["scores"])
    assert line.startswith("Weighted F1 on validation (95 % CI): ResNet50 0.")
    for s in rep["scores"]:
        ci = s["interval"]["scores"]["weighted_f1"]
        assert f"{s['model']} {s['spread']['weighted_f1']['mean']:.3f} ({ci['low']:.2f} to {ci['high']:.2f})" in line


def test_one_dataset_given_by_a_relative_and_an_absolute_path_is_the_same_cells(tmp_path):
    """Cells are matched by the shortest unique tail of their path, so runs of one dataset opened from two
    places still pool and pair; a group that cannot is named in a note, not dropped silently."""
    a, b = seeded_runs(tmp_path, "googlenet", 0.8, seeds=(0, 1))
    df = pd.read_csv(b.dir / "val_predictions.csv")
    df["path"] = "/abs/elsewhere" + df["path"]
    df.to_csv(b.dir / "val_predictions.csv", index=False)
    assert list(evaluation.cell_keys(["../d/all/1.png", "../d/hem/1.png"])) == ["all/1.png", "hem/1.png"]
    rep = compare.build_report([evaluation.evaluate_run(x) for x in (a, b)], n_resamples=200)
    assert [s.name for s in rep.stats] == ["GoogLeNet", "Ensemble of 2"] and rep.stats[0].n_seeds == 2
    df = df.iloc[:-5]  # now really other cells
    df.to_csv(b.dir / "val_predictions.csv", index=False)
    rep = compare.build_report([evaluation.evaluate_run(x) for x in (a, b)], n_resamples=200)
    assert not rep.stats and any("GoogLeNet left out" in n for n in rep.notes)


def test_too_few_subjects_for_any_significance_is_said(tmp_path):
    """Five subjects: the smallest two-sided p an exact permutation can give is 2/32 > 0.05."""
    global SUBJECTS
    keep = SUBJECTS
    SUBJECTS = ["H1", "2", "3", "4", "5"]
    try:
        runs_ = seeded_runs(tmp_path, "googlenet", 0.95) + seeded_runs(tmp_path, "resnet50", 0.5)
        rep = compare.build_report([evaluation.evaluate_run(x) for x in runs_], n_resamples=300)
    finally:
        SUBJECTS = keep
    # said once, where the verdict is (the answer), with what would help; not again among the notes
    sentences = answers.answer_sentences(rep.to_dict(), "weighted_f1", "val")
    assert sentences[0].startswith("GoogLeNet is best on validation weighted F1")
    assert sentences[1].startswith("With 5 validation subjects, a paired permutation test cannot give p below 0.0625")
    assert "subject-grouped folds" in sentences[1] and "more subjects" in sentences[1]
    assert not any("cannot give p below" in n for n in rep.notes)
    assert "cannot give p below 0.0625" in answers.report_text(rep)
    pair = rep.pairs[0]
    assert pair.result["scores"]["accuracy"]["p_value"] >= 2 / 32 - 1e-9


def test_cross_validation_folds_pool_into_one_comparison_over_every_subject(tmp_path):
    """Grouped folds: a seed's runs are its folds; together they score every subject once, so the interval,
    the paired test and the ensemble are over all subjects (eight, where each fold alone has three or five)."""
    import numpy as np

    folds = {0: ["H1", "2", "3"], 1: ["H2", "H3", "4", "5", "6"]}

    def cv_runs(backbone: str, quality: float) -> list[runs.Run]:
        made = []
        for seed in (0, 1):
            for fold, subjects in folds.items():
                run = make_run(tmp_path, backbone, "fpCV", split="groups", seed=seed, val_fold=fold)
                rng = np.random.default_rng([zlib.crc32(backbone.encode()), seed, fold])
                subj = np.repeat(subjects, 10)
                y = np.array([0 if s.startswith("H") else 1 for s in subj])
                p = np.where((rng.random(len(y)) < quality) == (y == 1), 0.8, 0.2)
                pd.DataFrame({"path": [f"/cells/{s}-{i}.png" for i, s in enumerate(subj)], "subject": subj, "label": y,
                              "pred": (p > 0.5).astype(int), "prob_hem": 1 - p, "prob_all": p}
                             ).to_csv(run.dir / "val_predictions.csv", index=False)
                made.append(run)
        return made

    good, bad = cv_runs("googlenet", 0.95), cv_runs("resnet50", 0.6)
    groups = grouping.comparable_groups(dashboard.finished_runs(tmp_path))
    assert len(groups) == 1 and "cross-validation" in next(iter(groups.values())).label
    rep = compare.build_report([evaluation.evaluate_run(x) for x in good + bad], n_resamples=500)
    assert [s.name for s in rep.stats] == ["ResNet50", "GoogLeNet", "Ensemble of 4"]
    g = next(s for s in rep.stats if s.name == "GoogLeNet")
    assert g.seeds == [0, 1] and g.interval["n_units"] == 8
    pair = rep.pairs[0]
    assert pair.result["n_units"] == 8 and pair.seeds == [0, 1]
    assert "GoogLeNet is better" in pair.verdicts[0] and pair.result["scores"]["weighted_f1"]["p_value"] < 0.05
    assert not any("cannot give p below" in " ".join(answers.answer_sentences(rep.to_dict(), k, "val"))
                   for k in pairing.PAIRED_SCORES)  # eight subjects: p can go below 0.05


def test_the_answer_names_the_best_model_and_says_which_leads_are_clear():
    def spread(mean):
        return {"weighted_f1": {"mean": mean, "sd": 0.01}}

    def pair(a, b, diff, low, high, p):
        return {"a": a, "b": b, "set": "val", "scores": {"weighted_f1": {"difference": diff, "low": low, "high": high,
                                                                         "p_value": p}}}

    rep = {"scores": [{"model": "GoogLeNet", "set": "val", "spread": spread(0.70)},
                      {"model": "ResNet50", "set": "val", "spread": spread(0.74)},
                      {"model": "VGG16", "set": "val", "spread": spread(0.71)}],
           "paired": [pair("GoogLeNet", "ResNet50", -0.05, -0.09, -0.01, 0.01),
                      pair("ResNet50", "VGG16", 0.03, -0.16, 0.19, 0.62),
                      pair("GoogLeNet", "VGG16", -0.01, -0.02, -0.005, 1.0)]}
    text = answers.answer(rep, "weighted_f1", "val")
    assert text.startswith("ResNet50 is best on validation weighted F1 (0.740); ")
    assert "it is better than GoogLeNet (+0.050, 95 % CI +0.010 to +0.090, p = 0.01)" in text
    assert "no clear difference from VGG16 (+0.030, 95 % CI \u22120.160 to +0.190, p = 0.62)" in text
    assert "same cells" not in text  # every pair was compared
    m = answers.pair_matrix(rep, "weighted_f1", "val")
    # every pair once, row minus column: the upper triangle (its mirror would only repeat it, sign turned)
    assert list(m.index) == ["GoogLeNet", "ResNet50"] and list(m.columns) == ["ResNet50", "VGG16"]
    assert m.loc["GoogLeNet", "ResNet50"] == "\u2713 \u22120.050 [\u22120.090, \u22120.010] p = 0.01"
    assert m.loc["ResNet50", "VGG16"] == "= +0.030 [\u22120.160, +0.190] p = 0.62"
    assert m.loc["GoogLeNet", "VGG16"].startswith("= ")  # the interval excludes 0, p = 1.00: not clear
    assert m.loc["ResNet50", "ResNet50"] == ""  # the diagonal and below: empty


def test_the_html_report_is_whole_and_opens_offline(tmp_path, capsys):
    """compare --report: one file with Plotly inlined (no address to fetch), the models, the answer, the
    intervals, the figures, the settings and run ids, and the software it was made with."""
    import re

    from leukviz.cli import main

    made = seeded_runs(tmp_path, "googlenet", 0.9) + seeded_runs(tmp_path, "resnet50", 0.8)
    out = tmp_path / "out" / "report.html"
    assert main(["compare", "all", "--runs-dir", str(tmp_path), "--resamples", "200", "--report", str(out)]) == 0
    text = out.read_text()
    assert not re.search(r"<script[^>]+src=", text) and not re.search(r"<link[^>]+href=\"?https?:", text)
    assert "plotly" in text.lower() and text.count("Plotly.newPlot") >= 6  # intervals, curves, ROC, matrices...
    for needle in ("GoogLeNet", "ResNet50", "Ensemble of 6", " is best on validation weighted F1", "95 % CI",
                   "Row minus column", "Accuracy per subject", "Software and hardware", "torchvision"):
        assert needle in text, needle
    assert all(r.run_id in text for r in made)
    # every figure: its own PNG and SVG button, drawn by the inlined Plotly (no renderer on the server)
    figures = text.count("Plotly.newPlot")
    assert text.count("format: 'svg'") == figures and text.count("format: 'png'") == figures
    assert "filename: 'leukviz-roc'" in text
    assert "wrote the report" in capsys.readouterr().err
    assert main(["compare", "all", "--runs-dir", str(tmp_path), "--report", str(tmp_path)]) == 2  # a folder


def test_runs_that_disagree_on_a_cells_label_are_refused_naming_the_cells(tmp_path, capsys):
    from leukviz.cli import main

    made = seeded_runs(tmp_path, "googlenet", 0.9, seeds=(0, 1))
    path = made[1].dir / "val_predictions.csv"
    frame = pd.read_csv(path)
    frame.loc[0, "label"] = 1 - frame.loc[0, "label"]  # one cell, another label in the second run
    frame.to_csv(path, index=False)
    with pytest.raises(compare.LabelConflict, match="disagree on the true class of 1 validation cell"):
        compare.build_report([evaluation.evaluate_run(r) for r in made], n_resamples=100)
    assert main(["compare", "all", "--runs-dir", str(tmp_path), "--resamples", "100"]) == 2
    assert "000.png (" in capsys.readouterr().err  # the cell, by its key, with each run's label


def _answer_report(entries: dict, subjects: dict | None = None) -> dict:
    """A Report.to_dict-like report of models A (best), B, C, with the paired entries given per (a, b)."""
    scores = [{"model": m, "set": "val", "spread": {"weighted_f1": {"mean": v}, "sensitivity": {"mean": v}}}
              for m, v in (("A", 0.9), ("B", 0.8), ("C", 0.7))]
    paired = [{"a": a, "b": b, "set": "val", "unit": "subjects", "n_units": n,
               "scores": {"weighted_f1": e, "accuracy": e}} for (a, b, n), e in entries.items()]
    return {"scores": scores, "paired": paired, "subjects": {"val": subjects or {}}}


def test_one_vocabulary_for_one_verdict_in_the_answer_the_matrix_and_the_words_list():
    """The same interval and p read the same in all three places: the answer's clause, the matrix's mark (and
    its key) and metrics.verdict's words all use names.VERDICT_WORDS."""
    cases = {"clear": (0.1, 0.05, 0.15, 0.001), "weak": (0.1, 0.05, 0.15, 0.2), "unclear": (0.1, -0.05, 0.2, 0.6)}
    for kind, (d, lo, hi, p) in cases.items():
        entry = {"difference": d, "low": lo, "high": hi, "p_value": p}
        rep = _answer_report({("A", "B", 12): entry, ("A", "C", 12): entry, ("B", "C", 12): entry})
        assert metrics.verdict_kind(entry) == kind
        word = names.VERDICT_WORDS[kind]
        assert names.lead_text(kind, "B") in answers.answer(rep) and word in answers.answer(rep)
        assert word in metrics.verdict("A", "B", "weighted_f1", {"confidence": 0.95, "scores": {"weighted_f1": entry}})
        cell = answers.pair_matrix(rep).loc["A", "B"]
        assert cell.startswith(names.VERDICT_MARK[kind] + " ")
        assert f"{names.VERDICT_MARK[kind]} {word}" in names.verdict_legend()
    for other in ("suggestive", "not clear"):  # the old second vocabulary
        assert other not in names.verdict_legend()


def test_not_compared_on_the_same_cells_only_when_the_cells_differ():
    entry = {"difference": 0.1, "low": 0.05, "high": 0.15, "p_value": 0.001}
    rep = _answer_report({("A", "B", 12): entry, ("A", "C", 12): entry})
    # sensitivity is not tested in pairs: that is said, not that the cells differ
    text = answers.answer(rep, "sensitivity")
    assert "same cells" not in text and "not tested in pairs" in text
    assert answers.pair_matrix(rep, "sensitivity").empty
    rep = _answer_report({("A", "B", 12): entry})  # C was never paired with A: other cells
    assert "it was not compared with C on the same cells" in answers.answer(rep)


def test_one_model_alone_is_not_called_best():
    rep = {"scores": [{"model": "A", "set": "val", "spread": {"weighted_f1": {"mean": 0.9}}}], "paired": []}
    assert answers.answer(rep) == ("A scores 0.900 on validation weighted F1: the only model chosen, so there is "
                                   "nothing to compare it with.")


def test_a_zero_width_interval_says_why():
    flat = {"difference": 0.2, "low": 0.2, "high": 0.2, "p_value": 0.5}
    rep = _answer_report({("A", "B", 2): flat, ("A", "C", 2): flat}, subjects={"hem": 1, "all": 1})
    sentences = answers.answer_sentences(rep)
    assert any("no width because hem and all have one validation subject" in s for s in sentences)
    assert any("cannot give p below 0.5" in s for s in sentences)  # two subjects
    wide = {"difference": 0.2, "low": 0.1, "high": 0.3, "p_value": 0.001}
    assert not any("no width" in s for s in answers.answer_sentences(
        _answer_report({("A", "B", 12): wide, ("A", "C", 12): wide})))


def test_compare_json_carries_the_answer_the_matrix_and_calibration(tmp_path, capsys):
    import json

    from leukviz.cli import main

    runs_ = seeded_runs(tmp_path, "googlenet", 0.95) + seeded_runs(tmp_path, "resnet50", 0.6)
    assert main(["compare", *[r.run_id for r in runs_], "--runs-dir", str(tmp_path), "--json",
                 "--resamples", "200"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sentences = out["answer"]["val"]["weighted_f1"]
    assert sentences[0].startswith("GoogLeNet is best on validation weighted F1")
    matrix = out["matrix"]["val"]["weighted_f1"]
    assert set(matrix) == {"ResNet50", "GoogLeNet"} and matrix["ResNet50"]["GoogLeNet"].startswith("\u2713 \u2212")
    assert [c["run_id"] for c in out["calibration"]] == [r.run_id for r in grouping.comparable_groups(runs_)
                                                         [grouping.group_key(runs_[0])].runs]
    cal = out["calibration"][0]
    assert cal["temperature"] > 0 and {"ece", "brier"} <= set(cal["val"]["before"]) <= set(cal["val"]["after"]) | {"nll"}


def test_the_html_report_reads_as_a_document(tmp_path):
    """Human column names and 3 decimals (no config keys, no long floats), scores 0-1, ms per image filled
    from the caller's timings, settings one row each, the interval beside its score (narrow tables), and
    every table in a box that scrolls by itself rather than widening the page."""
    import re

    from leukviz.app import report

    made = seeded_runs(tmp_path, "googlenet", 0.9) + seeded_runs(tmp_path, "resnet50", 0.8)
    evals = [evaluation.evaluate_run(r) for r in made]
    timed = {r.run_id: 0.0156 for r in made}
    text = report.html_report(evals, n_resamples=200, per_image=timed)
    headers = re.findall(r"<th>([^<]*)</th>", text)
    for key in ("val_accuracy", "weighted_f1", "ms_per_image", "params_m", "checkpoint_mb", "run_id"):
        assert key not in headers, key
    for name in ("Val. accuracy", "Weighted F1", "Inference (ms / image)", "Parameters (M)", "image size"):
        assert name in headers, name
    cells = re.findall(r"<td class='num'>([^<]*)</td>", text)
    assert cells and all(re.fullmatch(r"-?\d+(\.\d{1,3})?", c) for c in cells), cells[:20]
    body = re.sub(r"<script.*?</script>", "", text, flags=re.S)  # Plotly's own code aside
    assert "15.6" in cells and "None" not in body and "nan" not in body
    f1 = [float(c) for c in re.findall(r"<td class='num'>(0\.\d{3}|1\.000)</td>", text)]
    assert f1 and all(0 <= v <= 1 for v in f1)  # scores 0-1, never a percentage
    assert "<div class='scroll'><table>" in text and "table-layout: fixed" in text
    assert "weighted F1: mean ± sd (95 % CI)" in headers and "weighted F1 95 % CI" not in headers
    untimed = report.html_report(evals[:1], n_resamples=100, per_image={})
    assert "Not timed: GoogLeNet" in untimed
