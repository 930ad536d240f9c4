"""The seed paper reproduced: every backbone with the paper's recipe on a random image split of C-NMC fold 0 (as
published) and on a subject split, optionally beside leukviz's defaults, over seeds, next to the published
validation accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from leukviz.comparison.leakage import LEAKAGE_SPLITS
from leukviz.comparison.studyruns import Log, Progress, resolve_weights, run_scores, train_group
from leukviz.core import paths
from leukviz.datasets import cnmc, data
from leukviz.models import backbones, config
from leukviz.scoring import metrics

# The seed paper's validation accuracies (ImageNet weights, 128 px, a random image-level split of C-NMC
# fold 0). The one copy of these numbers: the CLI and the dashboard read them from here.
PAPER_VAL_ACCURACY = {"resnet50": 0.85, "googlenet": 0.74, "vgg16": 0.74}
PAPER_FOLD = 0


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
                    progress: Progress | None = None, device: str = "auto", envs: Sequence[dict] = ({},)) -> dict:
    """Train every backbone with the paper's recipe on a random image split (the paper's) and on a
    subject split (and, with_defaults, leukviz's defaults on the subject split), over seeds 0..seeds-1,
    and report them beside the published validation accuracy. With several pool workers (envs) as many runs
    train at once."""
    cfgs, notes = paper_configs(study)
    for n in notes:
        log(f"note: {n}")
    done = train_group(list(cfgs.values()), runs_dir, log=log, progress=progress, device=device, envs=envs)
    return paper_summary(dict(zip(cfgs, done)), notes)
