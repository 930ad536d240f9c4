"""What the pages say about runs: text helpers, run queries and the overview's cards, training progress,
the Data page's samples. The Compare page's numbers are in compare.py, the Predict page's in prediction.py;
no Streamlit in here."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leukviz import backbones, data, runs
from leukviz.config import RunConfig
from leukviz.events import BATCH, EPOCH, latest_start
from leukviz.layout import CONFIG

SPLIT_TEXT = {"subject": "by subject", "groups": "subject-grouped folds", "folds": "official folds",
              "image": "by image (leaky)", "given": "the dataset's own validation folder"}
FINETUNE_TEXT = {"full": "the whole network", "last": "last stage + head", "head": "head only",
                 "staged": "head first, then all (lower rates early)"}


# ---------------------------------------------------------------------------------------------- text

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=\"'&^%@/])")


def plain(text: Any) -> str:
    """User-supplied text made literal inside Streamlit markdown: every markdown, LaTeX ($) and
    directive (:red[...], :material/x:) character is backslash-escaped, and HTML is never rendered."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def dataset_label(spec: str) -> str:
    """Short name of a dataset spec: 'demo' or the last parts of its path."""
    if spec == "demo":
        return "built-in demo"
    p = Path(spec)
    return str(Path(*p.parts[-2:])) if len(p.parts) > 2 else str(p)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def backbone_title(name: str) -> str:
    try:
        return backbones.get_spec(name).title
    except ValueError:
        return name


def run_name(run: runs.Run) -> str:
    """Same form as inference.LoadedModel.name: 'GoogLeNet · 1a2b3c'."""
    return f"{backbone_title(run.config.backbone)} · {run.run_id[:6]}"


def describe_config(cfg: RunConfig) -> str:
    epochs = f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"
    return (f"{backbone_title(cfg.backbone)}, {cfg.preset} preset, weights {cfg.weights}, "
            f"{cfg.image_size} px, {epochs}, batch {cfg.batch_size}, "
            f"lr {cfg.lr:g}, fine-tune {FINETUNE_TEXT.get(cfg.finetune, cfg.finetune)}"
            + (f" ({cfg.head_epochs} head-only epoch{'s' if cfg.head_epochs != 1 else ''})"
               if cfg.finetune == "staged" else "") + ", "
            f"split {SPLIT_TEXT.get(cfg.split, cfg.split)}"
            + (f", early stopping after {cfg.patience} epochs without a better F1" if cfg.patience else ""))


def split_text(cfg: RunConfig) -> str:
    if cfg.split == "folds":
        return f"official folds (fold {cfg.val_fold} for validation)"
    if cfg.split == "groups":
        return f"subject-grouped folds (fold {cfg.val_fold} for validation)"
    if cfg.split == "given":
        return "the dataset's own validation folder"
    if cfg.split == "image":
        return f"by image, LEAKY ({cfg.val_fraction:.0%} validation, seed {cfg.split_rng_seed})"
    return f"by subject ({cfg.val_fraction:.0%} validation, seed {cfg.split_rng_seed})"


# ---------------------------------------------------------------------------------------------- runs

def all_runs(runs_dir: str | Path | None = None) -> list[runs.Run]:
    """Every run whose config.json reads, newest first; one with a damaged config.json is left out (it is
    among damaged_runs), never fatal."""
    out = []
    for r in runs.list_runs(runs_dir):
        try:
            r.config  # noqa: B018 - checked once, to leave out runs whose config cannot be read
        except (runs.RunFileError, OSError):
            continue
        out.append(r)
    return out


def finished_runs(runs_dir: str | Path | None = None) -> list[runs.Run]:
    """The runs Predict and Compare use: finished, and every file they read sound (runs.Run.is_usable)."""
    return [r for r in all_runs(runs_dir) if r.is_usable]


def damaged_runs(runs_dir: str | Path | None = None) -> list[runs.Run]:
    """The runs left out because a file they need is damaged (each Run.problems says which, and the repair)."""
    return runs.damaged_runs(runs_dir)


def damage_text(run: runs.Run) -> str:
    """One line for a damaged run: its id and, per damaged file, what is wrong and the repair."""
    return f"run {run.run_id}: " + " · ".join(str(p) for p in run.damage)


def find_run(cfg: RunConfig, fingerprint: str, runs_dir: str | Path | None = None) -> runs.Run | None:
    """The run folder of this exact configuration, if one exists (unlike runs.run_for, creates nothing)."""
    path = runs.runs_root(runs_dir, create=False) / cfg.identity(fingerprint)
    return runs.Run(path) if (path / CONFIG).exists() else None


def latest_per_backbone(candidates: Iterable[runs.Run]) -> list[runs.Run]:
    """The newest run of each backbone, in registry order (candidates come newest first)."""
    best: dict[str, runs.Run] = {}
    for r in candidates:
        best.setdefault(r.config.backbone, r)
    order = {name: i for i, name in enumerate(backbones.BACKBONES)}
    return sorted(best.values(), key=lambda r: order.get(r.config.backbone, len(order)))


def default_models(finished: Sequence[runs.Run], dataset: str) -> list[runs.Run]:
    """Models offered first for prediction: the newest finished run per backbone on the active dataset,
    or on any dataset when none was trained on it."""
    on_active = [r for r in finished if r.config.data == dataset]
    return latest_per_backbone(on_active or finished)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class Card:
    """What the overview shows for one backbone."""

    backbone: str
    title: str
    state: str  # "none" when no run of this backbone exists on the dataset
    run_id: str | None = None
    epoch: int = 0
    epochs: int = 0
    val_acc: float | None = None
    val_f1: float | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        if self.state == "none":
            return "No run yet"
        if self.state == "starting":
            return "Starting…"
        if self.state == "queued":
            return "Queued: waits for the device"
        if self.state == "running":
            return f"Running: epoch {min(self.epoch + 1, self.epochs)} of {self.epochs}"
        if self.state == "finished":
            return "Finished"
        return self.state.capitalize()


def backbone_cards(dataset: str, runs_dir: str | Path | None = None) -> list[Card]:
    """One card per registered backbone: its active run on this dataset if any, else its newest run."""
    mine = [r for r in all_runs(runs_dir) if r.config.data == dataset and not r.is_damaged]
    cards = []
    for name, spec in backbones.BACKBONES.items():
        of_backbone = [r for r in mine if r.config.backbone == name]
        statuses = [(r, r.status) for r in of_backbone]
        chosen = next(((r, s) for r, s in statuses if s["state"] in runs.ACTIVE), None)
        chosen = chosen or next(((r, s) for r, s in statuses if s["state"] == "finished"), None)
        chosen = chosen or next(((r, s) for r, s in statuses if s["state"] != "new"), None)
        if chosen is None:
            cards.append(Card(name, spec.title, "none"))
            continue
        r, s = chosen
        m = r.final_metrics() if s["state"] == "finished" else {}
        epochs_done = len(r.epochs()) if s["state"] in runs.ACTIVE else int(s.get("epoch") or 0)
        epochs = int(s.get("epochs") or r.config.epochs)
        cards.append(Card(name, spec.title, s["state"], r.run_id, epochs_done, epochs,
                          m.get("val_acc"), m.get("val_f1"), s.get("error")))
    return cards


# ---------------------------------------------------------------------------------------------- progress

@dataclass
class Progress:
    fraction: float
    epoch: int  # the epoch in progress (or the last one done)
    epochs: int
    step: int
    steps: int
    eta: float | None  # seconds left, None until the first batch
    text: str


def progress(events: Sequence[dict], now: float | None = None) -> Progress:
    """Fraction done and time left of a run, from its metrics.jsonl events (rate measured since the
    latest start or resume, so time spent before a stop does not skew it)."""
    s0 = latest_start(events)
    if s0 is None:
        return Progress(0.0, 0, 0, 0, 0, None, "Preparing data and model…")
    epochs, steps = int(s0.get("epochs") or 1), max(1, int(s0.get("steps_per_epoch") or 1))
    total = epochs * steps
    done0 = int(s0.get("epoch") or 0) * steps + int(s0.get("step") or 0)
    done, t_last, epoch, step = done0, float(s0.get("time") or 0), max(1, int(s0.get("epoch") or 0) + 1), 0
    for e in events:
        if e.get("type") == BATCH:
            d = (int(e["epoch"]) - 1) * steps + int(e["step"])
        elif e.get("type") == EPOCH:
            d = int(e["epoch"]) * steps
        else:
            continue
        if d >= done:
            done, t_last = d, float(e.get("time") or t_last)
            epoch, step = int(e["epoch"]), int(e["step"]) if e["type"] == BATCH else steps
    eta = None
    elapsed = (t_last if now is None else now) - float(s0.get("time") or 0)
    if done > done0 and elapsed > 0:
        eta = max(0.0, (total - done) * elapsed / (done - done0))
    frac = min(1.0, done / total)
    text = f"Epoch {epoch} of {epochs} · step {step} of {steps}"
    if eta is not None:
        text += f" · about {format_duration(eta)} left"
    return Progress(frac, epoch, epochs, step, steps, eta, text)


# ---------------------------------------------------------------------------------------------- data page

def sample_cells(ds: data.Dataset, per_class: int = 6, seed: int = 0) -> dict[str, list[str]]:
    """A few training images of each class, drawn reproducibly."""
    rng = np.random.default_rng(seed)
    train = ds.train_rows
    out = {}
    for i, c in enumerate(ds.classes):
        paths = train.loc[train["label"] == i, "path"].to_numpy()
        if len(paths):
            out[c] = [str(p) for p in rng.choice(paths, size=min(per_class, len(paths)), replace=False)]
    return out


def demo_cells(ds: data.Dataset, n: int = 3, seed: int = 0) -> list[tuple[str, str]]:
    """(path, true class) of a few labelled cells, preferring the held-out preliminary test set, taking
    the classes in turn."""
    idx = ds.index[ds.index["label"] >= 0]
    pool = idx[idx["set"] == "prelim"] if (idx["set"] == "prelim").any() else idx
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(pool.index[pool["label"] == i].to_numpy()) for i in range(len(ds.classes))]
    picks: list[tuple[str, str]] = []
    k = 0
    while len(picks) < n and any(k < len(b) for b in by_class):
        for i, rows in enumerate(by_class):
            if k < len(rows) and len(picks) < n:
                picks.append((str(ds.index.at[rows[k], "path"]), ds.classes[i]))
        k += 1
    return picks


AUGMENT_CODES_TEXT = {0: "original", 1: "flipped", 2: "turned 90°", 3: "flipped, 90°", 4: "turned 180°",
                      5: "flipped, 180°", 6: "turned 270°", 7: "flipped, 270°"}


def augment_preview(image: np.ndarray, mode: str, n: int = 4, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """The training augmentation (engine.augment) applied to one uint8 HWC image n times: (caption, image)."""
    import torch

    from leukviz.engine import augment, draw_jitter

    if mode == "none":
        return [("no augmentation", image)]
    g = torch.Generator().manual_seed(seed)
    codes = torch.randperm(7, generator=g)[:n] + 1  # distinct non-identity transforms
    jitter = draw_jitter(len(codes), g) if mode == "full" else None
    batch = torch.from_numpy(np.ascontiguousarray(np.stack([image] * len(codes))))
    out = augment(batch, codes, jitter).numpy()
    return [(AUGMENT_CODES_TEXT[int(c)] + (", stain jitter" if jitter is not None else ""), out[i])
            for i, c in enumerate(codes.tolist())]
