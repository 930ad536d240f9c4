"""The Compare page's numbers: a finished run's evaluation, comparable groups, the comparison table, ROC
curves and histories, inference speed, the error gallery and exports; no Streamlit in here."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukviz.core import storage
from leukviz.core.errors import LeukvizError
from leukviz.core.filenames import CHECKPOINT, PREDICTIONS, TEST_PREDICTIONS
from leukviz.datasets import data
from leukviz.models import config
from leukviz.models.backbones import BACKBONES
from leukviz.models.preprocess import Preprocess
from leukviz.runstore import best, names, runs
from leukviz.runstore.names import (
    backbone_title,
    dataset_label,
    format_duration,
    run_name,
    setting_text,
    split_text,
)
from leukviz.scoring import health, metrics, predictions, registry


@dataclass
class Predictions:
    """One model's predictions on one set of cells, in a fixed cell order (sorted by path), so two models
    scored on the same cells line up row for row."""

    classes: list[str]
    paths: np.ndarray  # cell_keys: the identity of each cell, comparable between runs
    y: np.ndarray
    probs: np.ndarray
    subjects: np.ndarray | None  # None when any cell's subject is unknown

    @property
    def summary(self) -> dict:
        return metrics.summary(self.y, self.probs, self.classes, self.subjects)


def cell_keys(paths: Sequence[str]) -> np.ndarray:
    """Each image's identity across runs: the shortest tail of its path (file name, then class folder and
    file name, ...) that is unique among these paths. Not the whole path: one dataset given as a relative
    path to one run and as an absolute path to another is the same cells."""
    parts = [str(p).replace("\\", "/").split("/") for p in paths]
    for k in range(1, max((len(x) for x in parts), default=1) + 1):
        keys = ["/".join(x[-k:]) for x in parts]
        if len(set(keys)) == len(keys):
            return np.array(keys, dtype=str)
    return np.array([str(p) for p in paths], dtype=str)


def read_predictions(path: Path, classes: Sequence[str] | None = None) -> Predictions:
    """A val_predictions.csv / test_predictions.csv (path, subject, label, prob_<class>...), its cells in
    the order of their keys (cell_keys), which `paths` holds."""
    t = predictions.read(path, classes)
    keys = cell_keys(t.paths.tolist())
    order = np.argsort(keys, kind="stable")
    subjects = t.subjects[order].astype(str)
    known = bool(len(subjects)) and bool((subjects != "").all())
    return Predictions(t.classes, keys[order], t.y[order].astype(int), t.probs[order], subjects if known else None)


@dataclass
class Evaluation:
    """A finished run's validation predictions (the kept epoch's) and their metrics; its held-out test
    predictions when the dataset has a test set (scored once, never used to choose anything)."""

    run: runs.Run
    classes: list[str]
    y: np.ndarray
    probs: np.ndarray
    summary: dict
    val: Predictions | None = None
    test: Predictions | None = None


def evaluate_run(run: runs.Run) -> Evaluation:
    """Metrics of a finished run, from its val_predictions.csv (the kept epoch's), via metrics.summary, and
    its test_predictions.csv when there is one."""
    meta = run.meta()
    val = read_predictions(run.dir / PREDICTIONS, meta.get("classes"))
    test_file = run.dir / TEST_PREDICTIONS
    test = read_predictions(test_file, val.classes) if test_file.exists() else None
    return Evaluation(run, val.classes, val.y, val.probs, val.summary, val, test)


def group_key(run: runs.Run) -> str:
    """Runs are comparable when they saw the same dataset content and the same validation split."""
    return config.split_key(run.config, run.info.get("dataset_fingerprint", "?"))


@dataclass
class Group:
    key: str
    label: str
    runs: list[runs.Run] = field(default_factory=list)

    @property
    def datasets(self) -> set[str]:
        return {r.config.data for r in self.runs}


def is_cross_validation(group: "Group") -> bool:
    """Runs of subject-grouped folds: their validation cells differ by fold and are pooled per seed."""
    return "|groups|" in group.key


def comparable_groups(candidates: Sequence[runs.Run]) -> dict[str, Group]:
    """Finished runs grouped by dataset fingerprint and split, the biggest group first."""
    groups: dict[str, Group] = {}
    for r in candidates:
        key = group_key(r)
        if key not in groups:
            fp = key.split("|", 1)[0]
            split = ("subject-grouped cross-validation (each fold's validation subjects, pooled)"
                     if r.config.split == "groups" else
                     split_text(r.config, r.meta().get("split")))
            label = f"{dataset_label(r.config.data)} · split {split} · data {fp[:8]}"
            groups[key] = Group(key, label)
        groups[key].runs.append(r)
    for g in groups.values():
        g.label += f" · {len(g.runs)} run{'s' if len(g.runs) != 1 else ''}"
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1].runs)))


def training_seconds(run: runs.Run) -> float | None:
    """Time spent in epochs (training and validation), summed over resumes; None before the first epoch."""
    secs = [float(e.get("seconds") or 0) for e in run.epochs()]
    return sum(secs) if secs else None


# The registered scores (scoring/registry.py) Compare's per-run table shows beside accuracy and weighted F1.
RUN_SCORES = ("sensitivity", "specificity", "roc_auc")
COMPARE_COLUMNS = {
    "model": "Model", "val_accuracy": "Val. accuracy", "weighted_f1": "Weighted F1",
    "weighted_f1_ci": "Weighted F1 95 % CI",
    **{k: registry.column(k) for k in RUN_SCORES},
    "train_time": "Training time", "ms_per_image": "Inference (ms / image)", "params_m": "Parameters (M)",
    "checkpoint_mb": "Checkpoint (MB)", "weights": "Weights", "split": "Split", "image_size": "Image size",
    "epochs": "Epochs", "run_id": "Run",
}


def compare_row(ev: Evaluation, seconds_per_image: float | None = None) -> dict:
    """One row of the Compare table (keys of COMPARE_COLUMNS)."""
    run, s = ev.run, ev.summary
    cfg = run.config
    meta = run.meta()
    ckpt = run.dir / CHECKPOINT
    split = (meta.get("split") or {}).get("description") or split_text(cfg)
    return {
        "model": run_name(run), "val_accuracy": s["accuracy"], "weighted_f1": s["weighted_f1"],
        "weighted_f1_ci": format_interval(metrics.subject_bootstrap(
            ev.y, ev.probs, ev.classes, ev.val.subjects if ev.val else None, scores=("weighted_f1",),
            n_resamples=1000)["scores"]["weighted_f1"]),
        **{k: s[k] for k in RUN_SCORES},
        "train_time": format_duration(training_seconds(run)),
        "ms_per_image": None if seconds_per_image is None else seconds_per_image * 1000,
        "params_m": meta["params"] / 1e6 if meta.get("params") else None,
        "checkpoint_mb": ckpt.stat().st_size / 1e6 if ckpt.exists() else None,
        "weights": meta.get("weights_init", cfg.weights), "split": split, "image_size": cfg.image_size,
        "epochs": cfg.epochs, "run_id": run.run_id,
    }


def compare_table(rows: Sequence[dict]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(COMPARE_COLUMNS))


def roc_curves(evals: Sequence[Evaluation]) -> dict[str, tuple[np.ndarray, np.ndarray, float | None]]:
    out = {}
    for ev in evals:
        pos = metrics.positive_index(ev.classes)
        fpr, tpr = metrics.roc_curve_points(ev.y, ev.probs, pos)
        out[run_name(ev.run)] = (fpr, tpr, ev.summary["roc_auc"])
    return out


def histories(selected: Sequence[runs.Run]) -> dict[str, list[dict]]:
    return {run_name(r): r.events() for r in selected}


def time_per_image(lm: Any, repeats: int = 5, warmup: int = 2) -> float:
    """Seconds to predict one image with a loaded model (a batch of one): the median of `repeats` after
    `warmup` calls (the first calls pay for one-off kernel selection). What a user waits per dropped image,
    decoding aside."""
    from leukviz.serving import inference

    x = np.zeros((1, lm.image_size, lm.image_size, 3), np.uint8)
    for _ in range(warmup):
        inference.predict_arrays(lm, x)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        inference.predict_arrays(lm, x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))



# ---------------------------------------------------------------------------------------------- repeats, intervals, tests

# The compared scores in words, from the score registry (weighted F1 first: the C-NMC metric).
SCORE_TEXT = {k: registry.text(k) for k in sorted(metrics.SCORES, key=lambda k: k != "weighted_f1")}
SHORT_TEXT = {**SCORE_TEXT, "weighted_f1": "weighted F1 [95 % CI]"}
PAIRED_SCORES = ("weighted_f1", "accuracy")
ENSEMBLE = "Ensemble"


def config_key(run: runs.Run) -> str:
    """Runs of one configuration that differ only in seed (repeats) share this key (config.repeat_key)."""
    return run.repeat_key


def setting_labels(firsts: Sequence[runs.Run], most: int = 3) -> list[str]:
    """Short names for configurations of one backbone: the settings in which they differ, in words
    (names.setting_text: "32 px, 1 epoch", "fine-tune head only, lr 0.0003"), at most `most` of them; the run id's start where that does not tell them apart."""
    settings = [config.repeat_settings(r.config) for r in firsts]
    differ = [k for k in settings[0] if len({json.dumps(d.get(k), sort_keys=True) for d in settings}) > 1]
    labels = [", ".join(setting_text(k, d.get(k)) for k in differ[:most]) for d in settings]
    if not all(labels) or len(set(labels)) < len(labels):
        labels = [f"{label} ({r.run_id[:6]})" if label else r.run_id[:6] for label, r in zip(labels, firsts)]
    return labels


@dataclass
class Repeats:
    """The runs of one configuration, by seed, and what they give pooled: the cells of every seed stacked,
    each cell keeping its subject, so a subject resampled brings its cells from every seed. Under
    subject-grouped cross-validation a seed's runs are its folds, and its predictions are every fold's
    validation cells together (each subject scored once, by a model that never saw it)."""

    name: str
    evals: list[Evaluation]

    @property
    def seeds(self) -> list[int]:
        return sorted({ev.run.config.seed for ev in self.evals})

    def per_seed(self, which: str = "val") -> dict[int, Predictions | None]:
        """Each seed's predictions on `which`, its folds concatenated (None when one lacks that set)."""
        out: dict[int, Predictions | None] = {}
        for seed in self.seeds:
            parts = [getattr(ev, which) for ev in self.evals if ev.run.config.seed == seed]
            out[seed] = None if any(p is None for p in parts) else _concat(parts, sort=True)
        return out

    def pooled(self, which: str = "val", seeds: Sequence[int] | None = None) -> Predictions | None:
        parts = [p for seed, p in self.per_seed(which).items() if seeds is None or seed in seeds]
        if not parts or any(p is None for p in parts) or any(not _same_cells(parts[0], p) for p in parts):
            return None
        return _concat(parts)


def _concat(parts: Sequence[Predictions], sort: bool = False) -> Predictions:
    """Predictions stacked (sort: in the order of their cell keys, so folds of a seed line up with another
    seed's)."""
    if len(parts) == 1:
        return parts[0]
    subjects = None if any(p.subjects is None for p in parts) else np.concatenate([p.subjects for p in parts])
    out = Predictions(parts[0].classes, np.concatenate([p.paths for p in parts]),
                      np.concatenate([p.y for p in parts]), np.concatenate([p.probs for p in parts]), subjects)
    if sort:
        order = np.argsort(out.paths, kind="stable")
        out = Predictions(out.classes, out.paths[order], out.y[order], out.probs[order],
                          None if out.subjects is None else out.subjects[order])
    return out


def _same_cells(a: Predictions, b: Predictions) -> bool:
    return a.classes == b.classes and len(a.paths) == len(b.paths) and bool((a.paths == b.paths).all())


def repeat_groups(evals: Sequence[Evaluation]) -> list[Repeats]:
    """The evaluations grouped by configuration (config_key), in registry order, each by seed. A group is
    named by its backbone, plus what sets it apart (setting_labels) when one backbone has several
    configurations."""
    by_key: dict[str, list[Evaluation]] = {}
    for ev in evals:
        by_key.setdefault(config_key(ev.run), []).append(ev)
    groups = list(by_key.values())
    for members in groups:
        members.sort(key=lambda ev: ev.run.config.seed)
    names = {id(m): backbone_title(m[0].run.config.backbone) for m in groups}
    for backbone in {m[0].run.config.backbone for m in groups}:
        same = [m for m in groups if m[0].run.config.backbone == backbone]
        if len(same) > 1:
            for members, label in zip(same, setting_labels([m[0].run for m in same])):
                names[id(members)] += f" · {label}"
    out = [Repeats(names[id(members)], members) for members in groups]
    order = list(BACKBONES)
    return sorted(out, key=lambda g: order.index(g.evals[0].run.config.backbone)
                  if g.evals[0].run.config.backbone in order else len(order))


def default_selection(candidates: Sequence[runs.Run]) -> list[runs.Run]:
    """What Compare selects first (runstore.best.preselect, the rule every page shares): for each backbone,
    every healthy seed of its healthy configuration with the best validation score among candidates (one
    comparable group: one dataset and split), in registry order."""
    by_id = {r.run_id: r for r in candidates}
    return [by_id[i] for i in best.preselect([best.entry(r) for r in candidates], None)]


def ensemble(evals: Sequence[Evaluation]) -> Repeats | None:
    """The mean of the selected models' probabilities, cell by cell, as one more model (None when fewer than
    two models or they were not scored on the same cells); a model is a run, or under cross-validation one
    seed's folds. Its test predictions likewise, when every run has them."""
    members = [(g, seed) for g in repeat_groups(evals) for seed in g.seeds]
    if len(members) < 2:
        return None

    def mean(which: str) -> Predictions | None:
        per_seed = {id(g): g.per_seed(which) for g, _ in members}
        parts = [per_seed[id(g)][seed] for g, seed in members]
        if any(p is None for p in parts) or any(not _same_cells(parts[0], p) for p in parts):
            return None
        first = parts[0]
        return Predictions(first.classes, first.paths, first.y, np.mean([p.probs for p in parts], axis=0),
                           first.subjects)

    val = mean("val")
    if val is None:
        return None
    first = evals[0]
    ev = Evaluation(first.run, val.classes, val.y, val.probs, val.summary, val, mean("test"))
    return Repeats(f"{ENSEMBLE} of {len(members)}", [ev])


@dataclass
class Stats:
    """What Compare shows of one configuration on one set: each score's mean and spread over seeds (each
    seed's value too) and its subject-bootstrap interval, pooled over the seeds."""

    name: str
    which: str  # "val" or "test"
    seeds: list[int]
    spread: dict  # score -> metrics.seed_spread (its values in the order of seeds)
    interval: dict  # metrics.subject_bootstrap of the pooled predictions

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)


def stats(group: Repeats, which: str = "val", n_resamples: int = 2000, seed: int = 0) -> Stats | None:
    """The group's scores on 'val' or 'test' (None when a run lacks that set's predictions)."""
    parts = list(group.per_seed(which).values())
    pooled = group.pooled(which)
    if pooled is None or any(p is None for p in parts):
        return None
    spread = {k: metrics.seed_spread([metrics.score(k, p.y, p.probs, p.classes) for p in parts])
              for k in metrics.SCORES}
    interval = metrics.subject_bootstrap(pooled.y, pooled.probs, pooled.classes, pooled.subjects,
                                         n_resamples=n_resamples, seed=seed)
    return Stats(group.name, which, group.seeds, spread, interval)


@dataclass
class Paired:
    a: str
    b: str
    which: str
    seeds: list[int]
    result: dict  # metrics.paired_comparison
    verdicts: list[str]


def _tile(p: Predictions, times: int) -> Predictions:
    subjects = None if p.subjects is None else np.tile(p.subjects, times)
    return Predictions(p.classes, np.tile(p.paths, times), np.tile(p.y, times), np.tile(p.probs, (times, 1)), subjects)


def _paired_predictions(a: Repeats, b: Repeats, which: str) -> tuple[Predictions, Predictions, list[int]] | None:
    """The two sides lined up cell for cell: seed against the same seed where both have it, else the i-th
    seed of one against the i-th of the other; a single model (one run, the ensemble) against every seed of
    the other side."""
    if len(a.seeds) == 1 or len(b.seeds) == 1:
        pa, pb, seeds = a.pooled(which), b.pooled(which), (a.seeds if len(b.seeds) == 1 else b.seeds)
        if pa is None or pb is None:
            return None
        pa, pb = (_tile(pa, len(b.seeds)), pb) if len(a.seeds) == 1 else (pa, _tile(pb, len(a.seeds)))
    else:
        common = sorted(set(a.seeds) & set(b.seeds))
        m = min(len(a.seeds), len(b.seeds))
        sa, sb = (common, common) if common else (a.seeds[:m], b.seeds[:m])
        pa, pb, seeds = a.pooled(which, sa), b.pooled(which, sb), sa
    if pa is None or pb is None or not _same_cells(pa, pb):
        return None
    return pa, pb, list(seeds)


def paired(a: Repeats, b: Repeats, which: str = "val", n_resamples: int = 2000, seed: int = 0) -> Paired | None:
    """a − b on the same cells (_paired_predictions), the predictions pooled over the paired seeds,
    resampled and permuted by subject (metrics.paired_comparison). None when they share no cells."""
    lined = _paired_predictions(a, b, which)
    if lined is None:
        return None
    pa, pb, common = lined
    res = metrics.paired_comparison(pa.y, pa.probs, pb.probs, pa.classes, pa.subjects, scores=PAIRED_SCORES,
                                    n_resamples=n_resamples, seed=seed)
    texts = [metrics.verdict(a.name, b.name, k, res) for k in PAIRED_SCORES]
    return Paired(a.name, b.name, which, common, res, texts)


def all_pairs(groups: Sequence[Repeats], which: str = "val", n_resamples: int = 2000) -> list[Paired]:
    """Every pair of groups, in the order given (the ensemble, when it is one of them, last)."""
    out = []
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            p = paired(a, b, which, n_resamples)
            if p is not None:
                out.append(p)
    return out


def format_interval(score: dict | None, digits: int = 3) -> str:
    if not score or score.get("low") is None or score.get("high") is None:
        return "–"
    return f"{score['low']:.{digits}f} to {score['high']:.{digits}f}"


def format_spread(spread: dict | None, digits: int = 3) -> str:
    if not spread or spread.get("mean") is None:
        return "–"
    if spread.get("sd") is None:
        return f"{spread['mean']:.{digits}f}"
    return f"{spread['mean']:.{digits}f} ± {spread['sd']:.{digits}f}"


SET_TEXT = {"val": "validation", "test": "test (held out)"}


def _pair_entry(paired: Sequence[dict], a: str, b: str, which: str, score: str) -> tuple[dict, int] | None:
    """The paired result of a against b (sign 1) or of b against a (sign -1) on one set and score."""
    for p in paired:
        if p["set"] == which and {p["a"], p["b"]} == {a, b} and score in p["scores"]:
            return p["scores"][score], (1 if p["a"] == a else -1)
    return None


def _oriented(entry: dict, sign: int) -> tuple[float, float, float, float | None]:
    """(difference, low, high, p) of a paired entry as a − b (sign -1 turns the stored b − a around)."""
    diff, low, high = (entry.get(k) for k in ("difference", "low", "high"))
    if sign < 0:
        diff, low, high = -diff, -high, -low
    return diff, low, high, entry.get("p_value")


def _difference_text(entry: dict, sign: int) -> str:
    """'+0.030, 95 % CI −0.160 to +0.190, p = 0.62' for a − b (sign -1 turns b − a around)."""
    diff, low, high, p = _oriented(entry, sign)
    ptext = "" if p is None else f", {metrics.p_text(p)}"
    return f"{metrics.signed(diff)}, 95 % CI {metrics.signed(low)} to {metrics.signed(high)}{ptext}"


def _pairs_with(rep: dict, name: str, which: str) -> list[dict]:
    return [p for p in rep["paired"] if p["set"] == which and name in (p["a"], p["b"])]


def answer_sentences(rep: dict, score: str = "weighted_f1", which: str = "val") -> list[str]:
    """Compare's answer for one score and set (Report.to_dict's content), sentence by sentence: the best
    model, and for each other what the paired interval and test support together (metrics.verdict_kind, in
    names.VERDICT_WORDS, the words of the matrix and of the words list); then what the data cannot say: the
    smallest p a permutation over so few subjects can give, and why an interval has no width. E.g.
    "ResNet50 is best on validation weighted F1 (0.739); no clear difference from VGG16 (+0.030, 95 % CI
    −0.160 to +0.190, p = 0.62); it is better than GoogLeNet (...)."."""
    rows = [s for s in rep["scores"] if s["set"] == which and s["spread"].get(score, {}).get("mean") is not None]
    if not rows:
        return []
    best = max(rows, key=lambda s: s["spread"][score]["mean"])
    label = f"{SET_TEXT[which].split(' ')[0]} {SCORE_TEXT[score]}"
    if len(rows) == 1:  # nothing to rank it against
        return [f"{best['model']} scores {best['spread'][score]['mean']:.3f} on {label}: the only model chosen, "
                "so there is nothing to compare it with."]
    text = f"{best['model']} is best on {label} ({best['spread'][score]['mean']:.3f})"
    parts, entries, unpaired = [], [], []
    for other in rows:
        if other is best:
            continue
        found = _pair_entry(rep["paired"], best["model"], other["model"], which, score)
        if found is None:
            paired_at_all = any(other["model"] in (p["a"], p["b"]) for p in _pairs_with(rep, best["model"], which))
            if paired_at_all:  # paired, on other scores: the same cells, this score untested
                unpaired.append(other["model"])
            else:
                parts.append(f"it was not compared with {other['model']} on the same cells")
            continue
        entry, sign = found
        entries.append(entry)
        parts.append(f"{names.lead_text(metrics.verdict_kind(entry), other['model'])} "
                     f"({_difference_text(entry, sign)})")
    if unpaired:
        parts.append(f"{SCORE_TEXT[score]} is not tested in pairs (the paired tests are on "
                     f"{' and '.join(SCORE_TEXT[k] for k in PAIRED_SCORES)}): read the intervals")
    out = [text + "; " + "; ".join(parts) + "."]
    n = min((int(p["n_units"]) for p in _pairs_with(rep, best["model"], which) if p.get("unit") == "subjects"),
            default=0)
    few = names.few_subjects_text(n, SET_TEXT[which].split(' ')[0]) if n else ""
    if few:
        out.append(few[0].upper() + few[1:] + ".")
    if any(e.get("low") is not None and e.get("low") == e.get("high") for e in entries):
        one = [c for c, k in (rep.get("subjects", {}).get(which) or {}).items() if k == 1]
        zero = names.zero_width_text(one)
        out.append(zero[0].upper() + zero[1:] + ".")
    return out


def answer(rep: dict, score: str = "weighted_f1", which: str = "val") -> str:
    """answer_sentences as one text."""
    return " ".join(answer_sentences(rep, score, which))


def pair_matrix(rep: dict, score: str = "weighted_f1", which: str = "val") -> pd.DataFrame:
    """Every pair once: the upper triangle of a models x models table (rows all but the last model, columns
    all but the first, in the report's order), each cell the row's model minus the column's: a mark of what
    the interval and the paired test support together (names.VERDICT_MARK: ✓ better, ~ weak evidence, = no
    clear difference), the difference, its 95 % interval in brackets and p ("✓ +0.050 [+0.010, +0.090]
    p = 0.01"). Half the width of the full square, whose other half only repeats it with the sign turned."""
    models = [s["model"] for s in rep["scores"] if s["set"] == which]
    if not any(p["set"] == which and score in p["scores"] for p in rep["paired"]):
        return pd.DataFrame()  # this score is not tested in pairs (PAIRED_SCORES)
    cells = {}
    for i, a in enumerate(models[:-1]):
        row = {}
        for j, b in enumerate(models[1:], start=1):
            found = _pair_entry(rep["paired"], a, b, which, score) if j > i else None
            if found is None:
                row[b] = "" if j <= i else "–"
                continue
            entry, sign = found
            diff, low, high, p = _oriented(entry, sign)
            row[b] = (f"{names.VERDICT_MARK[metrics.verdict_kind(entry)]} {metrics.signed(diff)} "
                      f"[{metrics.signed(low)}, {metrics.signed(high)}]" + ("" if p is None else f" {metrics.p_text(p)}"))
        cells[a] = row
    return pd.DataFrame.from_dict(cells, orient="index", columns=models[1:])


def stats_table(scores: Sequence[dict], only: str | None = None) -> pd.DataFrame:
    """The Compare table from Report.to_dict()["scores"]: a row per model and set (a model's validation and
    test rows together), each score as mean ± sd over seeds beside its 95 % subject-bootstrap interval (only:
    that score alone, as the page shows it, to fit a laptop screen)."""
    order = list(dict.fromkeys(s["model"] for s in scores))
    rows = []
    for s in sorted(scores, key=lambda s: (order.index(s["model"]), s["set"] != "val")):
        row = {"Model": s["model"], "Set": SET_TEXT.get(s["set"], s["set"]), "Seeds": len(s["seeds"])}
        for k in ([only] if only else metrics.SCORES):
            row[SCORE_TEXT[k]] = format_spread(s["spread"][k])
            row[f"{SCORE_TEXT[k]} 95 % CI"] = format_interval(s["interval"]["scores"].get(k))
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Report:
    """Everything Compare and `python -m leukviz compare` say about a selection of runs scored on the same
    cells: the groups of repeats and the ensemble, their scores with intervals on validation (and on the
    held-out test set when every run has it), and every paired comparison."""

    groups: list[Repeats]
    stats: list[Stats]
    pairs: list[Paired]
    sets: list[str]
    notes: list[str]
    subjects: dict[str, dict[str, int]] = field(default_factory=dict)  # set -> class -> how many subjects

    def to_dict(self) -> dict:
        return metrics.nan_to_none({
            "sets": self.sets, "notes": self.notes, "subjects": self.subjects,
            "groups": [{"name": g.name, "seeds": g.seeds, "runs": [ev.run.run_id for ev in g.evals],
                        "health": {ev.run.run_id: health.of_run_dir(ev.run.dir).to_dict() for ev in g.evals}}
                       for g in self.groups],
            "scores": [{"model": s.name, "set": s.which, "seeds": s.seeds, "spread": s.spread,
                        "interval": s.interval} for s in self.stats],
            "paired": [{"a": p.a, "b": p.b, "set": p.which, "seeds": p.seeds, **p.result, "verdicts": p.verdicts}
                       for p in self.pairs],
        })


class LabelConflict(LeukvizError, ValueError):
    """Runs that give one cell different true labels: a table and a paired test over them would contradict
    each other."""


def check_labels(evals: Sequence[Evaluation]) -> None:
    """Every cell the runs share has one true label in all of them (validation and test files alike), else
    LabelConflict naming the cells and the runs."""
    for which in ("val", "test"):
        seen: dict[str, tuple[int, str]] = {}
        bad: list[str] = []
        for ev in evals:
            p = getattr(ev, which)
            if p is None:
                continue
            for key, label in zip(p.paths, p.y):
                first = seen.setdefault(str(key), (int(label), ev.run.run_id))
                if first[0] != int(label):
                    bad.append(f"{key} ({first[1]}: {p.classes[first[0]]}, {ev.run.run_id}: {p.classes[int(label)]})")
        if bad:
            raise LabelConflict(f"the runs disagree on the true class of {len(bad)} {SET_TEXT[which]} cell(s), so "
                                f"they cannot be compared: {'; '.join(bad[:3])}{' …' if len(bad) > 3 else ''}")


def build_report(evals: Sequence[Evaluation], n_resamples: int = 2000) -> Report:
    """The report of runs that share their validation cells (one comparable group); runs that disagree on a
    shared cell's label are refused (check_labels)."""
    check_labels(evals)
    groups = repeat_groups(evals)
    ens = ensemble(evals)
    everyone = groups + ([ens] if ens is not None else [])
    sets = ["val"] + (["test"] if evals and all(ev.test is not None for ev in evals) else [])
    notes = []
    for ev in evals:
        h = health.of_run_dir(ev.run.dir)
        if h.degenerate:
            notes.append(f"{run_name(ev.run)} (run {ev.run.run_id}) is degenerate: {'; '.join(h.reasons)}; it is "
                         "compared only because it was chosen")
    if evals and not all(ev.test is not None for ev in evals) and any(ev.test is not None for ev in evals):
        notes.append("some runs have no test predictions: the test columns are left out")
    table = []
    for which in sets:
        for g in everyone:
            st_ = stats(g, which, n_resamples)
            if st_ is None:
                notes.append(f"{g.name} left out of the {SET_TEXT[which]} rows: its runs were not scored on the same "
                             "cells")
            else:
                table.append(st_)
    pairs = [p for which in sets for p in all_pairs(everyone, which, n_resamples)]
    # how few subjects the paired p-values rest on is said by the answer, where the verdict is (answer_sentences)
    for st_ in table[:1]:
        notes.extend(st_.interval.get("notes", []))
    return Report(groups, table, pairs, sets, notes, {which: subjects_per_class(everyone, which) for which in sets})


def subjects_per_class(groups: Sequence[Repeats], which: str) -> dict[str, int]:
    """How many subjects of each class the set holds (the first group's cells; every group has the same), {}
    when the cells carry no subjects."""
    for g in groups:
        p = g.pooled(which)
        if p is not None and p.subjects is not None:
            return {c: len(set(p.subjects[p.y == i])) for i, c in enumerate(p.classes)}
    return {}


def headline(scores: Sequence[dict], score: str = "weighted_f1") -> str:
    """One line: each model's score on validation with its 95 % interval, e.g. "Weighted F1 on validation
    (95 % CI): ResNet50 0.739 (0.61 to 0.84) · GoogLeNet 0.721 (0.60 to 0.82)"."""
    parts = []
    for s in scores:
        if s["set"] != "val":
            continue
        mean = s["spread"][score].get("mean")
        if mean is not None:
            parts.append(f"{s['model']} {mean:.3f} ({format_interval(s['interval']['scores'].get(score), 2)})")
    name = SCORE_TEXT[score]
    return f"{name[0].upper()}{name[1:]} on validation (95 % CI): " + " · ".join(parts) if parts else ""


def report_text(rep: Report) -> str:
    """The report as the command line prints it."""
    lines, whole = [], rep.to_dict()
    for which in rep.sets:
        title = "validation" if which == "val" else "test (held out: scored once, used to choose nothing)"
        part = [s for s in rep.stats if s.which == which]
        if not part:
            continue
        unit = part[0].interval.get("unit", "subjects")
        lines.append(f"{title}: mean ± sd over seeds, and the 95 % interval from a bootstrap over {unit}")
        w = max(18, *(len(s.name) for s in part))
        lines.append(f"  {'model':<{w}} {'seeds':>5}" + "".join(f"  {SHORT_TEXT[k]:<24}" for k in metrics.SCORES))
        for s in part:
            cells = "".join(f"  {format_spread(s.spread[k]):<13} {format_interval(s.interval['scores'].get(k), 2).replace(' to ', '-'):<10}"
                            for k in metrics.SCORES)
            lines.append(f"  {s.name:<{w}} {s.n_seeds:>5}{cells}")
        lines.extend(f"  {line}" for line in answer_sentences(whole, "weighted_f1", which))
        pairs = [p for p in rep.pairs if p.which == which]
        if pairs:
            lines.append(f"  paired ({pairs[0].result.get('test', '')}):")
            lines.extend(f"    {v}" for p in pairs for v in p.verdicts)
        lines.append("")
    lines.extend(f"note: {n}" for n in rep.notes)
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------------------------------------- calibration, test backfill

def calibration_of(ev: Evaluation) -> dict:
    """A run's temperature (fitted on its validation predictions) and what it does: ECE and Brier score
    before and after on validation (optimistic: the cells it was fitted on) and, when the run has test
    predictions, on the held-out test set (the honest check), with both reliability tables."""
    from leukviz.scoring import calibration

    cal = calibration.run_calibration(ev.run.dir)
    out = {"model": run_name(ev.run), "run_id": ev.run.run_id, "temperature": cal["temperature"],
           "calibrated": cal["calibrated"], "note": cal.get("note"), "val": cal.get("report"), "test": None}
    if ev.test is not None:
        out["test"] = calibration.report(ev.test.y, ev.test.probs, cal["temperature"])
    return out


def calibration_table(cals: Sequence[dict]) -> pd.DataFrame:
    """One row per run: T, then ECE and Brier score raw → calibrated, on validation and (when there) test."""
    rows = []
    for c in cals:
        row = {"Model": c["model"], "Temperature": c["temperature"] if c["calibrated"] else None}
        for which, label in (("val", "validation"), ("test", "test")):
            rep = c.get(which)
            for k, name in (("ece", "ECE"), ("brier", "Brier")):
                row[f"{name} {label}"] = (f"{rep['before'][k]:.3f} → {rep['after'][k]:.3f}"
                                          if rep and rep["before"][k] is not None and rep["after"][k] is not None
                                          else "–")
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.drop(columns=[c for c in table.columns if c.endswith(" test") and (table[c] == "–").all()])


def calibration_summary(cal: dict) -> dict:
    """calibration_of without its reliability tables: T, whether it is applied and why not, and ECE, Brier
    and NLL before and after on validation (and test, where there is one): what `compare --json` carries."""
    out = {k: cal.get(k) for k in ("model", "run_id", "temperature", "calibrated", "note")}
    for which in ("val", "test"):
        rep = cal.get(which)
        out[which] = None if not rep else {"n": rep.get("n"), "before": rep["before"], "after": rep["after"]}
    return out


def report_json(rep: Report, evals: Sequence[Evaluation]) -> dict:
    """What `compare --json` prints: the report (Report.to_dict), what the page leads with (the answer's
    sentences per set and paired score, and the pairwise matrix, row minus column) and each run's
    calibration (calibration_summary)."""
    out = rep.to_dict()
    out["answer"] = {which: {k: answer_sentences(out, k, which) for k in PAIRED_SCORES} for which in rep.sets}
    out["matrix"] = {which: {k: pair_matrix(out, k, which).to_dict(orient="index") for k in PAIRED_SCORES}
                     for which in rep.sets}
    out["calibration"] = [calibration_summary(calibration_of(ev)) for ev in evals]
    return metrics.nan_to_none(out)


def backfill_test(candidates: Sequence[runs.Run], cache_dir: Path | None = None) -> list[str]:
    """Score on its dataset's held-out test set (testset.score_run) every run that finished before runs
    were scored on it; each dataset opened once to see whether it has one. Returns what went wrong."""
    from leukviz.comparison import testset
    from leukviz.datasets import data

    has_test: dict[str, bool] = {}
    problems = []
    for run in candidates:
        if (run.dir / TEST_PREDICTIONS).exists():
            continue
        where = run.config.data
        if where not in has_test:
            try:
                has_test[where] = len(data.open_dataset(where, cache_dir).test_rows) > 0
            except (data.DataError, OSError):
                has_test[where] = False
        if has_test[where]:
            try:
                testset.score_run(run.dir, cache_dir)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                problems.append(f"{run_name(run)} not scored on the test set: {e}")
    return problems


# ---------------------------------------------------------------------------------------------- error gallery, export

@dataclass
class GalleryCell:
    image: np.ndarray | None
    caption: str  # plain text: true, predicted, confidence, subject
    error: str = ""


def error_gallery(run: runs.Run, k: int = 8) -> list[GalleryCell]:
    """The run's most confidently wrong validation images (then the highest-loss right ones), each loaded
    at the model's input size, as explain.top_losses orders them."""
    from leukviz.serving import explain

    meta = run.meta()
    pre = Preprocess.of_checkpoint({"backbone": run.config.backbone, "image_size": run.config.image_size,
                                    "crop": True, **meta})
    cells = []
    for row in explain.top_losses(run.dir, k=k).itertuples(index=False):
        verdict = "wrong" if not row.correct else "right"
        caption = (f"true {row.true} · predicted {row.predicted} ({row.confidence:.0%}, {verdict}) · "
                   f"subject {row.subject}")
        try:
            cells.append(GalleryCell(pre.decode(row.path), caption))
        except (data.ImageError, OSError) as e:
            cells.append(GalleryCell(None, caption, str(e)))
    return cells


def export_onnx(run: runs.Run, folder: Path) -> tuple[bytes, dict]:
    """Export the run to ONNX in folder (export.export_run, checked against PyTorch): (file bytes, result)."""
    from leukviz.serving import export

    folder.mkdir(parents=True, exist_ok=True)
    res = export.export_run(run.dir, "onnx", folder / f"{run.config.backbone}-{run.run_id}.onnx")
    return Path(res["path"]).read_bytes(), res


def export_text(res: dict) -> str:
    verdict = "agrees" if res.get("agrees") else "DISAGREES"
    return (f"ONNX opset {res.get('opset')}, {res.get('bytes', 0) / 1e6:.1f} MB; {verdict} with PyTorch on "
            f"{res.get('check_images')} images: max probability difference {res.get('max_abs_diff', float('nan')):.2e} "
            f"(tolerance {res.get('tolerance', float('nan')):g}).")


def checkpoint_bytes(run: runs.Run) -> bytes:
    return storage.read_bytes(run.dir / CHECKPOINT)
