"""Studies made of ordinary cached runs: the leakage of an image-level split; the seed paper reproduced;
subject-grouped cross-validation against the plain hand-written loop."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from leukviz.core import filenames, paths
from leukviz.core.errors import LeukvizError
from leukviz.datasets import cnmc, data
from leukviz.models import backbones, config
from leukviz.models.config import RunConfig
from leukviz.runstore import runs, shards, supervisor, trainer
from leukviz.scoring import metrics

if TYPE_CHECKING:
    from leukviz.comparison.evaluation import Predictions

# The seed paper's validation accuracies (ImageNet weights, 128 px, a random image-level split of C-NMC
# fold 0). The one copy of these numbers: the CLI and the dashboard read them from here.
PAPER_VAL_ACCURACY = {"resnet50": 0.85, "googlenet": 0.74, "vgg16": 0.74}
PAPER_FOLD = 0
LEAKAGE_SPLITS = ("image", "subject")

Log = Callable[[str], None]
Progress = Callable[[dict], None]


class StudyError(LeukvizError, RuntimeError):
    """A run of a study did not finish; the message names it and says why."""


# ---------------------------------------------------------------------------------------------- shared

def ensure_trained(cfg: RunConfig, runs_dir: str | Path | None = None, *, log: Log = print,
                   progress: Progress | None = None, device: str = "auto") -> runs.Run:
    """The finished run of this config: cached if it exists, else trained here (or waited for, when another
    process is training it). Raises StudyError if it does not finish."""
    run = runs.run_for(cfg, runs_dir)
    what = f"{cfg.backbone} split={cfg.split} ({run.run_id})"
    failure: list[Exception] = []

    def here(run: runs.Run, resume: bool) -> None:
        log(f"{what}: training")
        try:
            trainer.train(run, resume=resume, device=device, log=log, emit_hook=progress)
        except runs.AlreadyRunning:  # another process took it meanwhile: wait for it as for an attach
            follow()
        except Exception as e:  # usually recorded in status.json too; StudyError below reports it once
            failure.append(e)

    def follow() -> None:
        for ev in supervisor.follow(run):
            if progress:
                progress(ev)

    action = runs.ensure(run, here)  # the one start policy
    if action == "cached":
        log(f"{what}: cached")
        return run
    if action == "attach":
        log(f"{what}: being trained by another process, waiting for it")
        follow()
    if run.state != runs.State.FINISHED:
        why = run.status.get("error") or (f"{failure[0].__class__.__name__}: {failure[0]}" if failure else None)
        why = why or "no reason given"
        raise StudyError(f"run {run.run_id} ({what}) ended {run.state}: {why}")
    return run


def run_scores(run: runs.Run) -> dict:
    """What a study reports of one run: its id, best-epoch validation scores and what the split held."""
    m = run.final_metrics()
    split = run.meta().get("split") or {}
    return {"run_id": run.run_id, "split": run.config.split, "val_acc": m.get("val_acc"),
            "val_f1": m.get("val_f1"), "best_epoch": m.get("best_epoch"), "n_train": split.get("n_train"),
            "n_val": split.get("n_val"), "split_description": split.get("description")}


def resolve_weights(backbone: str, weights: str) -> tuple[str, str | None]:
    """'auto' is ImageNet when its file is cached and from scratch otherwise; returns (weights, note)."""
    if weights != "auto":
        return weights, None
    spec = backbones.get_spec(backbone)
    if backbones.imagenet_available(spec):
        return "imagenet", None
    return "none", (f"ImageNet weights for {spec.title} are not cached "
                    f"({backbones.weights_cache_path(spec)}): trained from scratch (weights none)")


# ---------------------------------------------------------------------------------------------- leakage

def leakage_configs(cfg_base: RunConfig) -> dict[str, RunConfig]:
    """The two runs of the leakage study: the same config, split by image (leaky) and by subject."""
    out = {}
    for split in LEAKAGE_SPLITS:
        cfg = dataclasses.replace(cfg_base, split=split)
        config.validate(cfg)
        out[split] = cfg
    return out


def leakage_runs(cfg_base: RunConfig, runs_dir: str | Path | None = None) -> dict[str, runs.Run]:
    """The study's two run folders, created but not trained: a page launches them (supervisor.launch) and
    shows leakage_summary as they finish."""
    return {split: runs.run_for(cfg, runs_dir) for split, cfg in leakage_configs(cfg_base).items()}


def leakage_summary(image_run: runs.Run, subject_run: runs.Run) -> dict:
    """Side by side scores of the two runs and the inflation (image minus subject); None where a run
    has not finished."""
    cfg = subject_run.config
    image, subject = run_scores(image_run), run_scores(subject_run)
    inflation = {k: (image[f"val_{k}"] - subject[f"val_{k}"]
                     if image[f"val_{k}"] is not None and subject[f"val_{k}"] is not None else None)
                 for k in ("acc", "f1")}
    return {"study": "leakage", "backbone": cfg.backbone, "data": cfg.data, "weights": cfg.weights,
            "image_size": cfg.image_size, "epochs": cfg.epochs, "preset": cfg.preset,
            "image": image, "subject": subject,
            "inflation": {"accuracy": inflation["acc"], "weighted_f1": inflation["f1"]},
            "note": "split=image puts cells of one person on both sides (leaky); split=subject holds whole "
                    "subjects out. The runs differ only in the split; inflation = image minus subject."}


def leakage(cfg_base: RunConfig, runs_dir: str | Path | None = None, log: Log = print,
            progress: Progress | None = None, device: str = "auto") -> dict:
    """Train (or reuse) cfg_base with split=image and split=subject and compare them."""
    done = {split: ensure_trained(cfg, runs_dir, log=log, progress=progress, device=device)
            for split, cfg in leakage_configs(cfg_base).items()}
    return leakage_summary(done["image"], done["subject"])


# ---------------------------------------------------------------------------------------------- the paper

def _fold_view(ds: data.Dataset, fold: int, cache_dir: Path) -> Path:
    """A C-NMC-layout folder whose training_data holds only one official fold (a link, no copies)."""
    view = cache_dir / "subsets" / f"{ds.fingerprint}-fold{fold}" / cnmc.ROOT / cnmc.TRAINING
    link = view / cnmc.fold_name(fold)
    if not link.exists():
        view.mkdir(parents=True, exist_ok=True)
        link.symlink_to((ds.root / cnmc.TRAINING / cnmc.fold_name(fold)).resolve(), target_is_directory=True)
    return view.parent


def paper_data(data_spec: str | None) -> tuple[str, list[str]]:
    """The dataset the paper study trains on, and notes saying what was chosen and why.

    C-NMC data: only fold 0 (the paper's subset), as a linked view, unless that fold cannot be split by
    subject (then the whole training data, said so). No data given: the built-in demo, said so.
    """
    if data_spec in (None, "", "demo"):
        return "demo", ["no C-NMC data given (--data PATH): ran on the built-in synthetic demo data; "
                        "its numbers are not comparable with the paper's"]
    ds = data.open_dataset(data_spec, paths.cache_root())
    if ds.kind != "cnmc":
        return str(data_spec), [f"{data_spec} is not in the C-NMC layout: trained on all of it, "
                                f"not on fold {PAPER_FOLD}"]
    folds = sorted(set(ds.train_rows["fold"]) - {-1})
    if PAPER_FOLD not in folds:
        return str(data_spec), [f"C-NMC data without fold {PAPER_FOLD}: trained on all training "
                                f"folds {folds}"]
    try:
        view = _fold_view(ds, PAPER_FOLD, paths.cache_root())
        sub = data.open_dataset(view, paths.cache_root())
        data.make_split(sub, "subject")
    except (OSError, data.DataError) as e:
        return str(data_spec), [f"fold {PAPER_FOLD} alone cannot be used ({e}): trained on all training "
                                f"folds {folds} instead of the paper's fold {PAPER_FOLD}"]
    n = len(sub.train_rows)
    return str(view), [f"C-NMC fold {PAPER_FOLD} only, as in the paper ({n} images, "
                       f"{sub.train_rows['subject'].nunique()} subjects), through a linked view at {view}"]


PAPER_COLUMNS = ("image", "subject", "defaults")  # the paper's recipe split by image, by subject; leukviz's


@dataclass(frozen=True)
class PaperStudy:
    """What the paper study trains: the data (None: the demo), the paper's epochs and size unless given,
    the weights ('auto': ImageNet when cached), backbones (empty: the paper's three), seeds 0..seeds-1,
    and with_defaults leukviz's quick preset beside the recipe."""

    data: str | None = None
    epochs: int | None = None
    image_size: int | None = None
    weights: str = "auto"
    backbones: tuple[str, ...] = ()
    seeds: int = 1
    with_defaults: bool = False


def paper_configs(study: PaperStudy = PaperStudy()) -> tuple[dict, list[str]]:
    """{(backbone, column, seed): RunConfig} of the paper study: the 'paper' preset split by image and by
    subject and, with_defaults, leukviz's quick preset at the same size and epochs on the subject split;
    and the notes on data and weights."""
    data_path, notes = paper_data(study.data)
    cfgs = {}
    for name in study.backbones or tuple(PAPER_VAL_ACCURACY):
        w, note = resolve_weights(name, study.weights)
        if note:
            notes.append(note)
        for seed in range(study.seeds):
            for split in LEAKAGE_SPLITS:
                cfgs[(name, split, seed)] = config.resolve(name, "paper", w, data_path, epochs=study.epochs,
                                                           image_size=study.image_size, split=split, seed=seed)
            if study.with_defaults:
                recipe = cfgs[(name, "subject", seed)]
                cfgs[(name, "defaults", seed)] = config.resolve(name, "quick", w, data_path, epochs=recipe.epochs,
                                                                image_size=recipe.image_size, split="subject",
                                                                seed=seed)
    if study.epochs is not None or study.image_size is not None:
        notes.append(f"overrides of the paper recipe: epochs={study.epochs or 'preset'}, "
                     f"image_size={study.image_size or 'preset'}")
    return cfgs, notes


def _column(done: dict, name: str, column: str) -> dict | None:
    """One column of the paper table over seeds: the first seed's run_scores, every seed's, mean and sd."""
    per_seed = [run_scores(run) for (b, c, _), run in sorted(done.items(), key=lambda kv: kv[0][2])
                if (b, c) == (name, column)]
    if not per_seed:
        return None
    out = dict(per_seed[0])
    out["seeds"] = per_seed
    for k in ("val_acc", "val_f1"):
        stats = metrics.mean_sd([r[k] for r in per_seed])
        out[f"{k}_mean"], out[f"{k}_sd"] = stats["mean"], stats["sd"]
    return out


def paper_summary(done: dict, notes: list[str]) -> dict:
    """One row per backbone: published accuracy, reproduced (image split), subject split, and leukviz's
    defaults where run; each with its seeds' mean and sd (None where a run has not finished)."""
    rows = []
    for name in dict.fromkeys(b for b, _, _ in done):
        cfg = next(run.config for (b, c, _), run in done.items() if (b, c) == (name, "image"))
        rows.append({"backbone": name, "title": backbones.get_spec(name).title, "weights": cfg.weights,
                     "image_size": cfg.image_size, "epochs": cfg.epochs, "optimizer": cfg.optimizer,
                     "lr": cfg.lr, "published_val_acc": PAPER_VAL_ACCURACY.get(name),
                     "image_split": _column(done, name, "image"), "subject_split": _column(done, name, "subject"),
                     "defaults_subject_split": _column(done, name, "defaults")})
    data_used = next(iter(done.values())).config.data if done else None
    return {"study": "paper", "data": data_used, "notes": notes, "rows": rows,
            "seeds": sorted({seed for _, _, seed in done}),
            "published_source": "the seed paper: validation accuracy on a random image split of C-NMC fold 0"}


def reproduce_paper(study: PaperStudy, runs_dir: str | Path | None = None, log: Log = print,
                    progress: Progress | None = None, device: str = "auto") -> dict:
    """Train every backbone with the paper's recipe on a random image split (the paper's) and on a
    subject split (and, with_defaults, leukviz's defaults on the subject split), over seeds 0..seeds-1,
    and report them beside the published validation accuracy."""
    cfgs, notes = paper_configs(study)
    for n in notes:
        log(f"note: {n}")
    done = {key: ensure_trained(cfg, runs_dir, log=log, progress=progress, device=device) for key, cfg in cfgs.items()}
    return paper_summary(done, notes)


# ---------------------------------------------------------------------------------------------- subjects

# The study's scores, by the key its records and table use -> the score registry's name ("hem_recall" is the
# specificity of C-NMC, whose negative class is hem).
STUDY_SCORES = {"weighted_f1": "weighted_f1", "accuracy": "accuracy", "hem_recall": "specificity", "roc_auc": "roc_auc"}
STUDY_METRICS = tuple(STUDY_SCORES)
# What a variant (--vary) may not change: these define the study itself (its people, folds, seeds, budget).
STUDY_FIXED = ("backbone", "weights", "data", "preset", "image_size", "epochs", "split", "val_fold", "n_folds",
               "val_fraction", "seed", "split_seed")
LEUKVIZ, PLAIN = "leukviz", "plain"

# A variant of leukviz's recipe: settings changed from the defaults, as ((field, value), ...).
Variant = tuple[tuple[str, object], ...]


def _setting_value(name: str, text: str, kind: type) -> object:
    try:
        return config.parse_value(text, kind)
    except ValueError as e:
        raise config.ConfigError(f"{name} {e}") from None


def parse_variant(text: str) -> Variant:
    """'augment=flips' or 'average=none,select=best' as a Variant, each value of its RunConfig field's type.
    A ConfigError (one line) for an unknown setting, a malformed one, or one the study fixes."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name not in STUDY_FIXED}
    out: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = (x.strip() for x in part.partition("="))
        name = name.replace("-", "_")
        if not eq or not name or not value:
            raise config.ConfigError(f"--vary takes SETTING=VALUE[,SETTING=VALUE...], got {text!r}")
        if name in STUDY_FIXED:
            raise config.ConfigError(f"--vary {name}: the study sets {name} itself (its folds, seeds and budget "
                                     f"are the same for every row); give it to the study, not to a variant")
        if name not in defaults:
            raise config.ConfigError(f"--vary: no setting {name!r}; one of: {', '.join(sorted(defaults))}")
        if name in out:
            raise config.ConfigError(f"--vary {text!r} sets {name} twice; give each setting once per variant")
        out[name] = _setting_value(name, value, type(defaults[name]))
    if not out:
        raise config.ConfigError("--vary needs at least one SETTING=VALUE")
    return tuple(out.items())


def variant_label(variant: Variant) -> str:
    """How a variant is named in the table: 'leukviz augment=flips'."""
    text = lambda v: str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    return f"{LEUKVIZ} " + ",".join(f"{k}={text(v)}" for k, v in variant)


def late_drop(f1s: list[float]) -> float:
    """The largest fall of validation weighted F1 from one epoch to the next in the last half of training
    (epochs e > E/2, each against the one before); 0 when it only rose."""
    pairs = [(f1s[e - 2], f1s[e - 1]) for e in range(max(2, len(f1s) // 2 + 1), len(f1s) + 1)]
    return max([0.0, *(a - b for a, b in pairs)])


def score_run(y: np.ndarray, prob: np.ndarray, subjects: np.ndarray, classes: Sequence[str]) -> dict:
    """The study's scores of one model on its validation subjects."""
    pred = prob.argmax(1)
    return {**{key: metrics.score(name, y, prob, classes) for key, name in STUDY_SCORES.items()},
            "per_subject": {str(s): float(np.mean(pred[subjects == s] == y[subjects == s]))
                            for s in sorted(set(subjects))}}


def _leukviz_record(run: runs.Run, classes: Sequence[str]) -> dict:
    from leukviz.comparison.evaluation import read_predictions

    # Every cell of a subject-grouped split has its subject, so p.subjects is known.
    p = read_predictions(run.dir / filenames.PREDICTIONS, classes)
    f1s = [float(e["val_f1"]) for e in run.epochs()]
    return {"method": LEUKVIZ, "run_id": run.run_id, "epoch_f1": f1s, "late_drop": late_drop(f1s),
            "kept_epoch": run.final_metrics().get("best_epoch"),
            **score_run(p.y, p.probs, p.subjects, classes), "_cells": p}


def _cells(classes: Sequence[str], paths: Sequence[str], y: np.ndarray, prob: np.ndarray,
           subjects: np.ndarray) -> Predictions:
    """The plain loop's validation cells as compare.Predictions, in the order of their keys like a run's
    (compare.read_predictions), so two models scored on the same fold line up cell for cell. Kept for the
    paired tests; not part of the study's JSON."""
    from leukviz.comparison.evaluation import Predictions, cell_keys

    keys = cell_keys(paths)
    order = np.argsort(keys, kind="stable")
    return Predictions(list(classes), keys[order], np.asarray(y)[order], np.asarray(prob, dtype=float)[order],
                       np.asarray(subjects).astype(str)[order])


def _plain_record(ds: data.Dataset, train_rows: np.ndarray, val_rows: np.ndarray, run, log: Log) -> dict:
    """The plain loop (plain.PlainRun run) on these rows, trained or from its cache, scored as a leukviz run."""
    from leukviz.training import plain

    idx = ds.index
    part = lambda rows: ([str(p) for p in idx["path"].to_numpy()[rows]],  # noqa: E731
                         [int(v) for v in idx["label"].to_numpy()[rows]])
    res = plain.cached_fit(paths.cache_root(), run, ds.fingerprint, part(train_rows), part(val_rows), log)
    f1s = [float(e["val_f1"]) for e in res["epochs"]]
    y, prob, subjects = idx["label"].to_numpy()[val_rows], np.asarray(res["probs"]), idx["subject"].to_numpy()[val_rows]
    return {"method": PLAIN, "run_id": None, "epoch_f1": f1s, "late_drop": late_drop(f1s), "kept_epoch": run.epochs,
            **score_run(y, prob, subjects, ds.classes),
            "_cells": _cells(ds.classes, [str(p) for p in idx["path"].to_numpy()[val_rows]], y, prob, subjects)}


def summarize_subjects(records: list[dict]) -> dict:
    """Per method and backbone: each metric averaged over the folds of one seed (a cross-validated score),
    then mean and sd over seeds; late_drop averaged over runs; per-subject accuracy averaged over seeds."""
    out: dict = {}
    for key in dict.fromkeys((r["method"], r["backbone"]) for r in records):
        mine = [r for r in records if (r["method"], r["backbone"]) == key]
        seeds = sorted({r["seed"] for r in mine})
        entry = {m: metrics.mean_sd([float(np.mean([r[m] for r in mine if r["seed"] == s])) for s in seeds])
                 for m in STUDY_METRICS}
        entry["per_seed_f1"] = {str(s): float(np.mean([r["weighted_f1"] for r in mine if r["seed"] == s]))
                                for s in seeds}
        entry["late_drop"] = metrics.mean_sd([r["late_drop"] for r in mine])
        subjects = sorted({s for r in mine for s in r["per_subject"]})
        entry["per_subject"] = {s: float(np.mean([r["per_subject"][s] for r in mine if s in r["per_subject"]]))
                                for s in subjects}
        entry["n_runs"] = len(mine)
        out.setdefault(key[1], {})[key[0]] = entry
    for name, per in out.items():
        mine = [r for r in records if r["backbone"] == name]
        if LEUKVIZ in per and PLAIN in per:
            per["difference"] = _paired_difference(mine, LEUKVIZ, PLAIN)
        variants = [m for m in methods_of(per) if m not in (LEUKVIZ, PLAIN)]
        if LEUKVIZ in per and variants:
            per["variant_differences"] = {m: _paired_difference(mine, m, LEUKVIZ) for m in variants}
    return out


def methods_of(per: dict) -> list[str]:
    """The rows of one backbone's summary: leukviz, its variants, the plain loop (in that order)."""
    rows = [m for m, e in per.items() if isinstance(e, dict) and "n_runs" in e]
    return sorted(rows, key=lambda m: (m == PLAIN, m != LEUKVIZ))


def _paired_difference(records: list[dict], a_method: str = LEUKVIZ, b_method: str = PLAIN) -> dict:
    """a minus b, on the seeds both ran (each seed's mean over folds): mean over those seeds, and the
    seeds' differences."""
    def per_seed(method: str, m: str) -> dict[int, float]:
        seeds = sorted({r["seed"] for r in records if r["method"] == method})
        return {s: float(np.mean([r[m] for r in records if r["method"] == method and r["seed"] == s])) for s in seeds}

    out: dict = {}
    for m in STUDY_METRICS:
        a, b = per_seed(a_method, m), per_seed(b_method, m)
        common = [s for s in a if s in b and np.isfinite(a[s]) and np.isfinite(b[s])]
        out[m] = float(np.mean([a[s] - b[s] for s in common])) if common else None
        if m == "weighted_f1":
            out["per_seed_f1"] = {str(s): a[s] - b[s] for s in common}
    out["seeds"] = sorted({r["seed"] for r in records if r["method"] == b_method}
                          & {r["seed"] for r in records if r["method"] == a_method})
    return out


def paired_test(records: list[dict], backbone: str, a_method: str, b_method: str, classes: Sequence[str],
                n_resamples: int = 2000) -> dict | None:
    """a − b for one backbone, cell for cell on every (seed, fold) both ran, pooled: the difference of
    weighted F1 and accuracy with a paired subject-bootstrap interval and a paired permutation test over
    subjects (metrics.paired_comparison), and its verdict in words. None when they share no cells."""
    def cells(method: str) -> dict:
        return {(r["seed"], r["fold"]): r["_cells"] for r in records
                if r["backbone"] == backbone and r["method"] == method}

    ca, cb = cells(a_method), cells(b_method)
    common = sorted(set(ca) & set(cb))
    if not common or any(not np.array_equal(ca[k].paths, cb[k].paths) for k in common):
        return None
    cat = lambda side, f: np.concatenate([getattr(side[k], f) for k in common])  # noqa: E731
    res = metrics.paired_comparison(cat(ca, "y"), cat(ca, "probs"), cat(cb, "probs"), classes, cat(ca, "subjects"),
                                    scores=("weighted_f1", "accuracy"), n_resamples=n_resamples)
    return {"a": a_method, "b": b_method, "seeds": sorted({s for s, _ in common}), **res,
            "verdict": metrics.verdict(a_method, b_method, "weighted_f1", res)}


@dataclass(frozen=True)
class SubjectStudy:
    """What a subject study trains: the data, backbones (empty: all registered), seeds 0..seeds-1, the plain
    loop for its first plain_seeds seeds (None: all; 0: none; it is slow), and the budget."""

    data: str
    backbones: tuple[str, ...] = ()
    seeds: int = 3
    plain_seeds: int | None = None
    image_size: int = 96
    epochs: int = 3
    weights: str = "none"
    preset: str = "quick"
    n_folds: int = 0
    # leukviz's recipe again with settings changed (parse_variant), each compared with the defaults,
    # paired on the same folds and seeds: what one change is worth.
    variants: tuple[Variant, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.backbones) or tuple(backbones.BACKBONES)

    @property
    def n_plain(self) -> int:
        return self.seeds if self.plain_seeds is None else min(self.plain_seeds, self.seeds)


def study_config(study: SubjectStudy, name: str, seed: int = 0, k: int = 0, variant: Variant = ()) -> RunConfig:
    """The run of one backbone, seed and fold of the study (split 'groups', validating on fold k), with a
    variant's settings changed."""
    return config.resolve(name, study.preset, study.weights, study.data, image_size=study.image_size,
                          epochs=study.epochs, split="groups", val_fold=k, n_folds=study.n_folds, seed=seed,
                          **dict(variant))


def check_subject_study(study: SubjectStudy) -> tuple[set, list[str]]:
    """Refuse, before anything trains, what the study cannot do: no seeds, weights it cannot have, a bad
    setting, the same variant twice, a variant that changes nothing for every backbone. A variant that changes
    nothing for some backbones only (its default there) is skipped for those: ({(backbone, variant)}, notes)."""
    if study.seeds < 1 or (study.plain_seeds is not None and study.plain_seeds < 0):
        raise config.ConfigError(f"the study needs at least one seed (--seeds {study.seeds}) and --plain-seeds "
                                 f"0 or more (got {study.plain_seeds})")
    labels = [variant_label(v) for v in study.variants]
    if twice := sorted({x for x in labels if labels.count(x) > 1}):
        raise config.ConfigError(f"--vary {twice[0].removeprefix(LEUKVIZ + ' ')} is given twice")
    for name in study.names:
        try:
            backbones.ensure_weights(name, study.weights)
        except FileNotFoundError as e:
            raise config.ConfigError(str(e)) from None
    defaults = {name: study_config(study, name) for name in study.names}
    skipped, notes = set(), []
    for variant, label in zip(study.variants, labels):
        same = [name for name, base in defaults.items() if study_config(study, name, variant=variant) == base]
        for name in same:
            base, title = defaults[name], backbones.get_spec(name).title
            why = (f"that is {title}'s default already" if all(getattr(base, k) == v for k, v in variant)
                   else f"it changes nothing in {title}'s recipe (the setting has no effect with the others)")
            if len(same) == len(study.names):
                raise config.ConfigError(f"--vary {label.removeprefix(LEUKVIZ + ' ')}: {why}; the variant would "
                                         f"be the same runs")
            skipped.add((name, variant))
            notes.append(f"{label} is not run for {title}: {why}")
    return skipped, notes


def study_runs(study: SubjectStudy, n_folds: int) -> list[RunConfig]:
    """Every leukviz run of a subject study, in its one fixed order (seed, backbone, fold, variant): the order
    shards split (runstore.shards)."""
    skipped, _ = check_subject_study(study)
    return [study_config(study, name, seed, k, variant)
            for seed in range(study.seeds) for name in study.names for k in range(n_folds)
            for variant in ((),) + tuple(v for v in study.variants if (name, v) not in skipped)]


def pool_train(cfgs: Sequence[RunConfig], envs: Sequence[dict], runs_dir: str | Path | None = None,
               log: Log = print, device: str = "auto") -> None:
    """Train runs on the device pool's workers (runstore.pool), as many at once as it has. One that did not
    finish is not finished for ensure_trained either: the study trains it again, here, and names a second
    failure."""
    from leukviz.runstore import pool

    if len(envs) < 2:
        return
    fp = data.open_dataset(cfgs[0].data, paths.cache_root()).fingerprint if cfgs else None
    group = [runs.run_for(c, runs_dir, fingerprint=fp) for c in cfgs]
    log(f"{len(group)} runs on {len(envs)} workers")
    pool.Pool(envs, device, log=log).run(group)


def train_shard(study: SubjectStudy, shard: shards.Shard, runs_dir: str | Path | None = None, log: Log = print,
                progress: Progress | None = None, device: str = "auto", envs: Sequence[dict] = ({},)) -> dict:
    """A shard's part of a subject study: its runs trained (or found cached, or followed when another process
    has one), nothing scored; the last call without a shard gathers every run and scores the study."""
    ds = data.open_dataset(study.data, paths.cache_root())
    group = study_runs(study, len(data.group_folds(ds, study.n_folds)))
    mine = shards.pick(group, shard)
    pool_train(mine, envs, runs_dir, log, device)
    done = []
    for i, cfg in enumerate(mine, 1):
        log(f"shard {shard}: run {i} of {len(mine)} ({len(group)} in the study)")
        done.append(ensure_trained(cfg, runs_dir, log=log, progress=progress, device=device).run_id)
    return {"study": "subjects", "shard": str(shard), "runs": done, "study_runs": len(group)}


def subject_study(study: SubjectStudy, runs_dir: str | Path | None = None, log: Log = print,
                  progress: Progress | None = None, device: str = "auto", envs: Sequence[dict] = ({},)) -> dict:
    """Subject-grouped cross-validation: every backbone x seed x fold as an ordinary cached run (split
    'groups'), and the plain hand-written loop on the same folds and budget; scored on the validation
    subjects, which training never saw."""
    from leukviz.training import plain

    skipped, notes = check_subject_study(study)  # what is not valid fails before anything trains
    resolve = partial(study_config, study)
    ds = data.open_dataset(study.data, paths.cache_root())
    folds = data.group_folds(ds, study.n_folds)  # the same folds as each run's split 'groups' makes
    pool_train(study_runs(study, len(folds)), envs, runs_dir, log, device)  # several workers: all at once first
    rows = ds.train_rows.index.to_numpy()
    records: list[dict] = []
    ok = None
    for seed in range(study.seeds):
        for name in study.names:
            for k, val in enumerate(folds):
                cfg = resolve(name, seed, k)
                run = ensure_trained(cfg, runs_dir, log=log, progress=progress, device=device)
                base = {"backbone": name, "seed": seed, "fold": k}
                records.append({**base, **_leukviz_record(run, ds.classes)})
                line = f"{name} seed {seed} fold {k}: leukviz F1 {records[-1]['weighted_f1']:.3f}"
                for variant in (v for v in study.variants if (name, v) not in skipped):
                    vrun = ensure_trained(resolve(name, seed, k, variant), runs_dir, log=log, progress=progress, device=device)
                    records.append({**base, **_leukviz_record(vrun, ds.classes), "method": variant_label(variant)})
                    line += f", {records[-1]['method']} {records[-1]['weighted_f1']:.3f}"
                if seed < study.n_plain:
                    if ok is None:  # the rows the runs could decode (read from the image cache; built if absent)
                        _, ok = data.image_cache(ds, cfg.image_size, cfg.crop, paths.cache_root())
                    train = np.setdiff1d(rows, val)
                    spec = plain.PlainRun(name, study.weights, study.image_size, study.epochs, seed)
                    records.append({**base, **_plain_record(ds, train[ok[train]], val[ok[val]], spec, log)})
                    line += f", plain {records[-1]['weighted_f1']:.3f}"
                log(line)
    idx = ds.train_rows
    fold_info = [{"fold": k, "n_val": int(len(v)),
                  "val_subjects": sorted(map(str, set(idx.loc[v, "subject"]))),
                  "val_classes": {c: int((idx.loc[v, "label"] == i).sum()) for i, c in enumerate(ds.classes)}}
                 for k, v in enumerate(folds)]
    summary = summarize_subjects(records)
    for name, per in summary.items():  # every comparison with its uncertainty: paired over subjects
        pairs = [(m, LEUKVIZ) for m in methods_of(per) if m not in (LEUKVIZ, PLAIN)]
        pairs += [(LEUKVIZ, PLAIN)] if PLAIN in per else []
        tested = {(a, b): paired_test(records, name, a, b, ds.classes) for a, b in pairs}
        per["tests"] = [t for t in tested.values() if t is not None]
        notes += [f"{backbones.get_spec(name).title}: {a} − {b} has no paired test (they scored different cells)"
                  for (a, b), t in tested.items() if t is None]
    return {"study": "subjects", "data": str(study.data), "fingerprint": ds.fingerprint,
            "backbones": list(study.names), "seeds": study.seeds, "plain_seeds": study.n_plain,
            "image_size": study.image_size, "epochs": study.epochs, "weights": study.weights,
            "preset": study.preset, "variants": [variant_label(v) for v in study.variants],
            "folds": fold_info, "notes": data.subject_warnings(ds) + notes,
            "plain_recipe": plain.RECIPE if study.n_plain else None,
            "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in records], "summary": summary}


def format_subject_table(res: dict) -> str:
    """The subject study as text: per backbone, leukviz and the plain loop side by side (mean ± sd over
    seeds), their difference, then each subject's accuracy."""
    def ms(d: dict) -> str:
        if d["mean"] is None:
            return "   n/a     "
        return f"{d['mean']:.3f} ± {d['sd']:.3f}" if d["sd"] is not None else f"{d['mean']:.3f} (1 seed)"

    folds = "; ".join(f"fold {f['fold']}: {', '.join(f['val_subjects'])}" for f in res["folds"])
    plain_seeds = res.get("plain_seeds", res["seeds"])
    of_plain = f" (the plain loop: {plain_seeds})" if plain_seeds and plain_seeds != res["seeds"] else ""
    lines = [f"subject-grouped cross-validation on {res['data']}: {len(res['folds'])} folds x {res['seeds']} seeds"
             f"{of_plain}, "
             f"weights {res['weights']}, {res['image_size']} px, {res['epochs']} epochs, preset {res['preset']}",
             f"  validation subjects (never in that fold's training): {folds}",
             *(f"  note: {n}" for n in res["notes"])]

    def diff_label(per: dict) -> str:  # leukviz − plain, on the seeds both ran: named when not all
        seeds = per["difference"]["seeds"]
        return ("diff" if len(seeds) == per[LEUKVIZ]["weighted_f1"]["n"] else
                f"diff (seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))})")

    w = max([8, *(len(m) for per in res["summary"].values() for m in methods_of(per)),
             *(len(diff_label(per)) for per in res["summary"].values() if "difference" in per)])

    def diff_row(label: str, dif: dict) -> str:
        return f"  {'':<10} {label:<{w}} " + " ".join(
            f"{'n/a' if dif[m] is None else f'{dif[m]:+.3f}':<14}" for m in STUDY_METRICS)

    lines.append(f"  {'backbone':<10} {'loop':<{w}} {'weighted F1':<14} {'accuracy':<14} {'hem recall':<14} "
                 f"{'ROC AUC':<14} {'late drop':<14} runs")
    for name, per in res["summary"].items():
        for method in methods_of(per):
            e = per[method]
            lines.append(f"  {backbones.get_spec(name).title:<10} {method:<{w}} "
                         + " ".join(f"{ms(e[m]):<14}" for m in (*STUDY_METRICS, "late_drop")) + f" {e['n_runs']}")
            if method in per.get("variant_differences", {}):
                lines.append(diff_row("  − defaults", per["variant_differences"][method]))
        if "difference" in per:
            lines.append(diff_row(diff_label(per), per["difference"]))
    tests = [(name, t) for name, per in res["summary"].items() for t in per.get("tests", [])]
    if tests:
        lines.append("  paired over subjects (every seed's and fold's cells pooled, so each subject counts once per "
                     "seed; subject bootstrap and permutation test):")
        lines += [f"  {backbones.get_spec(name).title:<10} {t['verdict']}" for name, t in tests]
    subjects = sorted({s for per in res["summary"].values() for m in methods_of(per) for s in per[m]["per_subject"]},
                      key=lambda s: (s[:1].isalpha(), len(s), s))
    lines.append("  accuracy per validation subject (mean over seeds):")
    lines.append(f"  {'':<{11 + w}} " + " ".join(f"{s:>5}" for s in subjects))
    for name, per in res["summary"].items():
        for method in methods_of(per):
            row = per[method]["per_subject"]
            lines.append(f"  {backbones.get_spec(name).title:<10} {method:<{w}} "
                         + " ".join(f"{row[s]:>5.2f}" if s in row else "    -" for s in subjects))
    lines.append("  mean ± sd: over seeds, of each seed's mean over folds. late drop: the largest fall of "
                 "validation F1 between consecutive epochs in the last half of training, averaged over runs. "
                 "Scores are of the model each loop keeps (leukviz: per its select setting; plain: last epoch).")
    return "\n".join(line.rstrip() for line in lines)
