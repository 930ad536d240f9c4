"""Studies made of ordinary cached runs: the leakage of an image-level split; the seed paper reproduced."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from leukviz import backbones, config, data, runs
from leukviz.config import RunConfig

# The seed paper's validation accuracies (ImageNet weights, 128 px, a random image-level split of C-NMC
# fold 0). The one copy of these numbers: the CLI and the dashboard read them from here.
PAPER_VAL_ACCURACY = {"resnet50": 0.85, "googlenet": 0.74, "vgg16": 0.74}
PAPER_FOLD = 0
LEAKAGE_SPLITS = ("image", "subject")

Log = Callable[[str], None]
Progress = Callable[[dict], None]


class StudyError(RuntimeError):
    """A run of a study did not finish; the message names it and says why."""


# ---------------------------------------------------------------------------------------------- shared

def ensure_trained(cfg: RunConfig, runs_dir: str | Path | None = None, log: Log = print,
                   progress: Progress | None = None, device: str = "auto") -> runs.Run:
    """The finished run of this config: cached if it exists, else trained here (or waited for, when another
    process is training it). Raises StudyError if it does not finish."""
    run = runs.run_for(cfg, runs_dir)
    what = f"{cfg.backbone} split={cfg.split} ({run.run_id})"
    if run.state == "finished":
        log(f"{what}: cached")
        return run
    failure: Exception | None = None
    if run.is_locked():
        log(f"{what}: being trained by another process, waiting for it")
        for ev in runs.follow(run):
            if progress:
                progress(ev)
    else:
        log(f"{what}: training")
        try:
            runs.train(run, resume=run.state in ("stopped", "interrupted"), device=device, log=log,
                       emit_hook=progress)
        except runs.AlreadyRunning:
            for ev in runs.follow(run):
                if progress:
                    progress(ev)
        except Exception as e:  # usually recorded in status.json too; StudyError below reports it once
            failure = e
    if run.state != "finished":
        why = run.status.get("error") or (f"{failure.__class__.__name__}: {failure}" if failure else None)
        why = why or "no reason given"
        raise StudyError(f"run {run.run_id} ({what}) ended {run.state}: {why}")
    return run


def run_scores(run: runs.Run) -> dict:
    """What a study reports of one run: its id, best-epoch validation scores and what the split held."""
    from leukviz.storage import read_json

    m = run.final_metrics()
    split = read_json(run.dir / "model.json", {}).get("split", {})
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
    """The study's two run folders, created but not trained: a page launches them (runs.launch) and
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
    done = {split: ensure_trained(cfg, runs_dir, log, progress, device)
            for split, cfg in leakage_configs(cfg_base).items()}
    return leakage_summary(done["image"], done["subject"])


# ---------------------------------------------------------------------------------------------- the paper

def _fold_view(ds: data.Dataset, fold: int, cache_dir: Path) -> Path:
    """A C-NMC-layout folder whose training_data holds only one official fold (a link, no copies)."""
    view = cache_dir / "subsets" / f"{ds.fingerprint}-fold{fold}" / "C-NMC_Leukemia" / "training_data"
    link = view / f"fold_{fold}"
    if not link.exists():
        view.mkdir(parents=True, exist_ok=True)
        link.symlink_to((ds.root / "training_data" / f"fold_{fold}").resolve(), target_is_directory=True)
    return view.parent


def paper_data(data_spec: str | None) -> tuple[str, list[str]]:
    """The dataset the paper study trains on, and notes saying what was chosen and why.

    C-NMC data: only fold 0 (the paper's subset), as a linked view, unless that fold cannot be split by
    subject (then the whole training data, said so). No data given: the built-in demo, said so.
    """
    if data_spec in (None, "", "demo"):
        return "demo", ["no C-NMC data given (--data PATH): ran on the built-in synthetic demo data; "
                        "its numbers are not comparable with the paper's"]
    ds = data.open_dataset(data_spec, runs.cache_root())
    if ds.kind != "cnmc":
        return str(data_spec), [f"{data_spec} is not in the C-NMC layout: trained on all of it, "
                                f"not on fold {PAPER_FOLD}"]
    folds = sorted(set(ds.train_rows["fold"]) - {-1})
    if PAPER_FOLD not in folds:
        return str(data_spec), [f"C-NMC data without fold {PAPER_FOLD}: trained on all training "
                                f"folds {folds}"]
    try:
        view = _fold_view(ds, PAPER_FOLD, runs.cache_root())
        sub = data.open_dataset(view, runs.cache_root())
        data.make_split(sub, "subject")
    except (OSError, data.DataError) as e:
        return str(data_spec), [f"fold {PAPER_FOLD} alone cannot be used ({e}): trained on all training "
                                f"folds {folds} instead of the paper's fold {PAPER_FOLD}"]
    n = len(sub.train_rows)
    return str(view), [f"C-NMC fold {PAPER_FOLD} only, as in the paper ({n} images, "
                       f"{sub.train_rows['subject'].nunique()} subjects), through a linked view at {view}"]


def paper_configs(data_spec: str | None = None, epochs: int | None = None, image_size: int | None = None,
                  weights: str = "auto", names: tuple[str, ...] | None = None) -> tuple[dict, list[str]]:
    """{(backbone, split): RunConfig} of the paper study (the 'paper' preset, split image and subject),
    and the notes on data and weights."""
    data_path, notes = paper_data(data_spec)
    cfgs = {}
    for name in names or tuple(PAPER_VAL_ACCURACY):
        w, note = resolve_weights(name, weights)
        if note:
            notes.append(note)
        for split in LEAKAGE_SPLITS:
            cfgs[(name, split)] = config.resolve(name, "paper", w, data_path, epochs=epochs,
                                                 image_size=image_size, split=split)
    if epochs is not None or image_size is not None:
        notes.append(f"overrides of the paper recipe: epochs={epochs or 'preset'}, "
                     f"image_size={image_size or 'preset'}")
    return cfgs, notes


def paper_runs(data_spec: str | None = None, epochs: int | None = None, image_size: int | None = None,
               weights: str = "auto", names: tuple[str, ...] | None = None,
               runs_dir: str | Path | None = None) -> tuple[dict, list[str]]:
    """The study's run folders {(backbone, split): Run}, created but not trained (for a page to launch),
    and the notes."""
    cfgs, notes = paper_configs(data_spec, epochs, image_size, weights, names)
    return {key: runs.run_for(cfg, runs_dir) for key, cfg in cfgs.items()}, notes


def paper_summary(done: dict, notes: list[str]) -> dict:
    """One row per backbone: published accuracy, reproduced (image split), subject split (None where a
    run has not finished)."""
    rows = []
    for name in dict.fromkeys(b for b, _ in done):
        image, subject = done[(name, "image")], done[(name, "subject")]
        cfg = image.config
        rows.append({"backbone": name, "title": backbones.get_spec(name).title, "weights": cfg.weights,
                     "image_size": cfg.image_size, "epochs": cfg.epochs, "optimizer": cfg.optimizer,
                     "lr": cfg.lr,
                     "published_val_acc": PAPER_VAL_ACCURACY.get(name),
                     "image_split": run_scores(image), "subject_split": run_scores(subject)})
    data_used = next(iter(done.values())).config.data if done else None
    return {"study": "paper", "data": data_used, "notes": notes, "rows": rows,
            "published_source": "the seed paper: validation accuracy on a random image split of C-NMC fold 0"}


def reproduce_paper(data_spec: str | None = None, runs_dir: str | Path | None = None,
                    epochs: int | None = None, image_size: int | None = None, weights: str = "auto",
                    names: tuple[str, ...] | None = None,
                    log: Log = print, progress: Progress | None = None, device: str = "auto") -> dict:
    """Train every backbone with the paper's recipe on a random image split (the paper's) and on a
    subject split, and report both beside the published validation accuracy."""
    cfgs, notes = paper_configs(data_spec, epochs, image_size, weights, names)
    for n in notes:
        log(f"note: {n}")
    done = {key: ensure_trained(cfg, runs_dir, log, progress, device) for key, cfg in cfgs.items()}
    return paper_summary(done, notes)
